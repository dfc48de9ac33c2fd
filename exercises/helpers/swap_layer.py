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


def run_project_tests_with(module, exercise, test_files, checks):
    """A grader's check: run the project's tests named by checks ({part of a test name: what it
    checks}) of test_files in a fresh pytest with this plugin swapping in module.DiffAttention;
    an unwritten exercise is NotImplementedError. A failure lists what each failed test checks
    and its first error line, and the command that shows the whole log."""
    import re
    import shlex
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))  # exercises/helpers/
    root = os.path.dirname(os.path.dirname(here))
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "swap_layer", "-p", "no:cacheprovider", "-rf",
           *[os.path.join("tests", f) for f in test_files], "-k", " or ".join(checks)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]), "EXERCISE_LAYER": module,
           "COLUMNS": "400"}  # pytest cuts each failure's summary line to the terminal's width
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout + out.stderr
    if "NotImplementedError" in log:  # report it as what it is: something still to write
        raise NotImplementedError(f"exercise {exercise} (or one of the exercises 3-6 it uses) is not written yet:\n"
                                  + log[-2000:])
    assert f"DiffLoRA layers are {module}.DiffAttention" in log and os.environ["EXERCISES_FOLDER"] in log, log[-2000:]
    failed = re.findall(r"^FAILED \S+::(test_\w+)(?:\[[^\]]*\])?(?: - (.*))?$", log, flags=re.M)
    if out.returncode != 0 or failed:
        lines = []
        for name, error in dict.fromkeys(failed):
            what = next((w for part, w in checks.items() if part in name), name)
            lines.append(f"- {what} ({name}): {(error or '').strip()[:200]}")
        rerun = shlex.join([f"EXERCISES_FOLDER={os.environ['EXERCISES_FOLDER']}", f"EXERCISE_LAYER={module}",
                            f"PYTHONPATH={here}", "python", *cmd[1:]])
        raise AssertionError(f"your layer fails {len(lines) or 'some'} of the project's layer tests:\n"
                             + ("\n".join(lines) or log[-3000:]) + f"\nthe whole log, from {root}: {rerun}")
    assert " passed" in log, log[-2000:]
