"""A pytest plugin for the graders of exercises 7 and 13: before the project's tests run,
difflora.py builds its layers from DiffAttention of the module EXERCISE_LAYER names (ex7_layer
unless set; yours, or the solution's) instead of its own."""

import importlib
import os
import sys


def pytest_configure(config):
    import difflora
    sys.path.insert(0, os.environ["EXERCISES_FOLDER"])
    layer = importlib.import_module(os.environ.get("EXERCISE_LAYER", "ex7_layer")).DiffAttention
    assert issubclass(layer, difflora.DiffLoRAAttention)
    difflora.DiffLoRAAttention = layer  # apply_difflora and the isinstance checks read this name when they run
    print(f"DiffLoRA layers are {layer.__module__}.{layer.__name__} from {sys.modules[layer.__module__].__file__}")


def run_project_tests_with(module, exercise, test_files, names):
    """A grader's check: run the project's tests `names` of `test_files` in a fresh pytest with
    this plugin swapping in module.DiffAttention; an unwritten exercise is NotImplementedError."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))  # exercises/helpers/
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "swap_layer", "-p", "no:cacheprovider",
           *[os.path.join("tests", f) for f in test_files], "-k", " or ".join(names)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]), "EXERCISE_LAYER": module}
    out = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(here)), env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    if "NotImplementedError" in log:  # report it as what it is: something still to write
        raise NotImplementedError(f"exercise {exercise} (or one of the exercises 3-6 it uses) is not written yet:\n"
                                  + log[-2000:])
    assert f"DiffLoRA layers are {module}.DiffAttention" in log and os.environ["EXERCISES_FOLDER"] in log, log[-2000:]
    assert out.returncode == 0, log[-4000:]
    assert " failed" not in log and " passed" in log
