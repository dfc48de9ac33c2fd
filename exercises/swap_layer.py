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
