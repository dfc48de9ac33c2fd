"""The course in exercises/ stays gradable: its solutions pass its graders, and untouched
exercises fail only with NotImplementedError (so no test passes on code that does nothing).
The experiments that need no pretrained model run in seconds and print what their handouts
promise."""

import sys
import xml.etree.ElementTree as ET

from conftest import run

GRADE = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "exercises"]


def test_solutions_pass_every_grader():
    out = run(*GRADE, "--solutions")
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout and "skipped" not in out.stdout


def test_untouched_exercises_fail_only_with_not_implemented(tmp_path):
    report = tmp_path / "report.xml"
    out = run(*GRADE, f"--junitxml={report}")
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


def test_experiment_8_shows_the_dead_negative_term():
    out = run(sys.executable, "exercises/experiments/ex8_dead_negative.py", "--steps=6")
    assert out.returncode == 0, out.stderr
    dead, alive = out.stdout.split("paper init")
    assert "A 0.000e+00  B 0.000e+00" in dead and "moved by at most 0.000e+00" in dead
    assert "A 0.000e+00" not in alive and "moved by at most 0.000e+00" not in alive
