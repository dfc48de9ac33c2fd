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
    ex13 = grader("ex13_rope_gqa", "test_ex13_rope_gqa.py", rotate=neighbours, repeat_heads=lambda t, n: t.repeat(1, n // t.size(1), 1, 1),
                  DiffAttention=None)
    assert "half-split" in failure(ex13.test_rotate_turns_each_pair_by_its_angle)
    assert "h // g (repeat_interleave, not repeat)" in failure(ex13.test_repeat_heads_serves_each_group_from_its_head)


def planted(module, edits):
    """The solution of an exercise with a student's mistake planted: each (right, wrong) edit made
    in its source, the result loaded as a module (the solutions' folder on the path for its imports)."""
    import types
    path = os.path.join(ROOT, "exercises", "solutions", f"{module}.py")
    source = open(path).read()
    for right, wrong in edits:
        assert right in source, f"the plant needs {right!r} in {path}"
        source = source.replace(right, wrong)
    sys.path[:0] = [os.path.join(ROOT, "exercises", "solutions")]
    try:
        mod = types.ModuleType(module)
        exec(compile(source, path, "exec"), mod.__dict__)
    finally:
        sys.path.remove(os.path.join(ROOT, "exercises", "solutions"))
    return {k: v for k, v in vars(mod).items() if not k.startswith("__")}


FUSED = "y = diff_attention_fused(q1, k1, q2, k2, v, lmb)"
Q1 = "q1 = q + self.lora_q1(x) if adapted(self.lora_q1) else q"
K1 = "k1 = k + self.lora_k1(x) if adapted(self.lora_k1) else k"
LAYER_PLANTS = [  # (lesson the grader must give, edits of the solution)
    ("the negative map reads K1", [(FUSED, FUSED.replace("q2, k2", "q2, k1"))]),
    ("the negative map reads Q1", [(FUSED, FUSED.replace("q2, k2", "q1, k2"))]),
    ("lambda is not applied", [(FUSED, FUSED.replace("lmb)", "1.0)"))]),
    ("lambda multiplies the wrong map", [(FUSED, "y = lmb * diff_attention_fused(q1, k1, q2, k2, v, 1 / lmb)")]),
    ("the positive map lost its LoRA", [(Q1, "q1 = q"), (K1, "k1 = k")]),
]


@pytest.mark.parametrize("lesson,edits", LAYER_PLANTS, ids=[p[0] for p in LAYER_PLANTS])
@pytest.mark.parametrize("exercise", ["ex7_layer", "ex13_rope_gqa"])
def test_layer_graders_name_each_planted_mistake(exercise, lesson, edits):
    test_file = "test_ex7_layer.py" if exercise == "ex7_layer" else "test_ex13_rope_gqa.py"
    right = grader(exercise, test_file, **planted(exercise, []))
    right.test_your_layer_computes_the_equations()  # the solution itself passes
    wrong = grader(exercise, test_file, **planted(exercise, edits))
    assert failure(wrong.test_your_layer_computes_the_equations).startswith(lesson)


def test_the_llama_layer_grader_names_rope_and_cache_mistakes():
    rotated = "q1, k1, q2, k2 = (rotate(t, *rope) for t in (q1, k1, q2, k2))"
    ex13 = grader("ex13_rope_gqa", "test_ex13_rope_gqa.py",
                  **planted("ex13_rope_gqa", [(rotated, "q1, k1 = (rotate(t, *rope) for t in (q1, k1))")]))
    assert failure(ex13.test_your_layer_computes_the_equations).startswith("Q2 and K2 are not rotated by RoPE")
    ex13 = grader("ex13_rope_gqa", "test_ex13_rope_gqa.py", **planted("ex13_rope_gqa", [
        ("repeat_interleave(n_head // t.size(1), dim=1)", "repeat(1, n_head // t.size(1), 1, 1)")]))
    assert failure(ex13.test_your_layer_computes_the_equations).startswith("the key/value heads are tiled")
    cached, repeated = "k1, k2, v = cache_extend(cache, k1=k1, k2=k2, v=v)", "k1, k2, v = (repeat_heads(t, H) for t in (k1, k2, v))"
    ex13 = grader("ex13_rope_gqa", "test_ex13_rope_gqa.py", **planted("ex13_rope_gqa", [
        (cached, "PLACEHOLDER"), (repeated, cached), ("PLACEHOLDER", repeated)]))  # repeat first, then cache: the cache holds H heads
    ex13.test_your_layer_computes_the_equations()  # its outputs are right: only the cache is wrong
    assert "the repeated query-width heads" in failure(ex13.test_your_cache_holds_the_key_value_heads)


@pytest.mark.slow
def test_the_project_tests_part_of_a_layer_grader_says_what_failed(tmp_path, monkeypatch):
    """A layer right on the grader's own checks but wrong where only the project's tests look
    (the maps it keeps for analysis): the failure names what that test checks, not a raw log."""
    import shutil
    maps = "self.maps = (causal_attention_map(q1, k1).detach(), (lmb * causal_attention_map(q2, k2)).detach())"
    edit = [(maps, maps.replace("(lmb *", "(0 *"))]
    shutil.copytree(os.path.join(ROOT, "exercises", "solutions"), tmp_path, dirs_exist_ok=True)
    source = open(tmp_path / "ex7_layer.py").read()
    (tmp_path / "ex7_layer.py").write_text(source.replace(*edit[0]))
    monkeypatch.setenv("EXERCISES_FOLDER", str(tmp_path))  # where the grader's subprocess finds the exercise
    ex7 = grader("ex7_layer", "test_ex7_layer.py", **planted("ex7_layer", edit))
    ex7.test_your_layer_computes_the_equations()
    message = failure(ex7.test_project_layer_tests_pass_with_your_layer)
    assert message.startswith("your layer fails 1 of the project's layer tests:")
    assert "- with keep_maps, self.maps holds A1 and lambda A2 (rows of A1 sum to 1) (test_attention_maps_rows)" in message
    assert "the whole log" in message and "Traceback" not in message
