"""The grader's switch. `python -m pytest exercises` grades the files you edit (exercises/exN_*.py);
`python -m pytest exercises --solutions` runs the same tests on exercises/solutions/. Either
way the chosen folder goes first on sys.path, so `import ex3_diff_attention` (in a test or in
another exercise) finds the right one."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # model.py, difflora.py


def pytest_addoption(parser):
    parser.addoption("--solutions", action="store_true", help="grade exercises/solutions/ instead of your files")


def pytest_configure(config):
    folder = os.path.join(HERE, "solutions") if config.getoption("--solutions") else HERE
    if not os.path.isdir(folder):
        raise pytest.UsageError("--solutions: this copy of the course has no exercises/solutions/ (the students' copy)")
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]  # pytest put it there for this file
    sys.path.insert(0, folder)
    sys.path.append(os.path.join(HERE, "helpers"))  # measure.py, swap_layer.py; last: the chosen folder's exercises come first
    os.environ["EXERCISES_FOLDER"] = folder  # for graders that start a subprocess (exercise 7)


@pytest.fixture(autouse=True)
def _seed():
    import torch
    torch.manual_seed(0)
