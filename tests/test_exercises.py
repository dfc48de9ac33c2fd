"""The course in exercises/ stays gradable: its solutions pass its graders, and untouched
exercises fail only with NotImplementedError (so no test passes on code that does nothing).
The experiments that need no pretrained model run in seconds and print what their handouts
promise."""

import os
import sys
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT, run

GRADE = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "exercises"]


@pytest.mark.slow
def test_solutions_pass_every_grader():
    out = run(*GRADE, "--solutions")
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout and "skipped" not in out.stdout


@pytest.mark.slow
def test_untouched_exercises_fail_only_with_not_implemented(tmp_path):
    """Graded where students grade them: in the copy exercises/helpers/student_copy.py writes, which
    has no solutions (tests/test_ux.py checks the copy itself)."""
    report, dest = tmp_path / "report.xml", tmp_path / "course"
    assert run(sys.executable, "exercises/helpers/student_copy.py", str(dest)).returncode == 0
    out = run(*GRADE, f"--junitxml={report}", cwd=dest)
    assert out.returncode == 1, out.stdout[-3000:]
    cases = list(ET.parse(report).getroot().iter("testcase"))
    assert len(cases) >= 40
    for case in cases:
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        name = f"{case.get('classname')}.{case.get('name')}"
        assert failure is not None, f"{name} passes on an untouched exercise"
        assert failure.get("message", "").startswith("NotImplementedError"), f"{name}: {failure.get('message')}"


@pytest.mark.slow
def test_experiment_8_shows_the_dead_negative_term():
    out = run(sys.executable, "exercises/experiments/ex8_dead_negative.py", "--steps=6")
    assert out.returncode == 0, out.stderr
    dead, alive = out.stdout.split("paper init")
    assert "A 0.000e+00  B 0.000e+00" in dead and "moved by at most 0.000e+00" in dead
    assert "A 0.000e+00" not in alive and "moved by at most 0.000e+00" not in alive


def grader(module, test_file, **answers):
    """The grader test_file (exercises/tests/) imported afresh against a stand-in for the exercise
    module whose functions are `answers`: what a student's file with these answers gets."""
    import importlib.util
    import types
    sys.path[:0] = [os.path.join(ROOT, "exercises", "helpers")]
    stand_in = types.ModuleType(module)
    stand_in.__dict__.update(answers)
    saved = sys.modules.get(module)
    sys.modules[module] = stand_in
    try:
        spec = importlib.util.spec_from_file_location(f"grader_{module}", os.path.join(ROOT, "exercises", "tests", test_file))
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded
    finally:
        sys.path.remove(os.path.join(ROOT, "exercises", "helpers"))
        sys.modules.pop(module) if saved is None else sys.modules.update({module: saved})


def failure(test, *args):
    with pytest.raises(AssertionError) as e:
        test(*args)
    return str(e.value)


def test_graders_name_the_classic_mistakes():
    import torch

    def attention(shift):  # causal attention with the mask's diagonal moved by shift
        def f(q, k, v):
            Tq, Tk = q.size(-2), k.size(-2)
            keep = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq + shift)
            scores = (q.float() @ k.float().transpose(-2, -1)) / q.size(-1) ** 0.5
            return (scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v.float()).to(q.dtype)
        return f

    ex1 = grader("ex1_attention", "test_ex1_attention.py", causal_self_attention=attention(+1), attend_with_cache=None)
    assert "diagonal is off by one: each query row also sees the key right after" in failure(ex1.test_values_and_gradients, 9, 9)
    ex1 = grader("ex1_attention", "test_ex1_attention.py", causal_self_attention=attention(-1), attend_with_cache=None)
    assert "misses its own key" in failure(ex1.test_values_and_gradients, 9, 9)

    def first_rows(q, k, v):  # the mask of a full pass, used with a cache's last rows
        keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool).tril(0)
        return (((q @ k.transpose(-2, -1)) / q.size(-1) ** 0.5).masked_fill(~keep, float("-inf")).softmax(-1) @ v)
    ex1 = grader("ex1_attention", "test_ex1_attention.py", causal_self_attention=first_rows, attend_with_cache=None)
    assert "the LAST Tq of the Tk" in failure(ex1.test_values_and_gradients, 4, 9)

    def neighbours(x, cos, sin):  # Meta's layout: (2i, 2i+1) turned by pair i's angle
        half = x.size(-1) // 2
        even, odd = x[..., 0::2], x[..., 1::2]
        c, s = cos[..., :half], sin[..., :half]
        return torch.stack((even * c - odd * s, odd * c + even * s), dim=-1).flatten(-2)
    ex13 = grader("ex13_rope_gqa", "test_ex13_rope_gqa.py", rotate=neighbours, repeat_heads=lambda t, n: t.repeat(1, n // t.size(1), 1, 1))
    assert "half-split" in failure(ex13.test_rotate_turns_each_pair_by_its_angle)
    assert "h // g (repeat_interleave, not repeat)" in failure(ex13.test_repeat_heads_serves_each_group_from_its_head)
