"""The README and docs/ as a user pastes them: every run folder a command reads was written by
a command before it on the same page, and every number the README reports of the committed
results is the one in results/."""

import os
import re
import shlex

import pytest

from conftest import ROOT

PAGES = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))]


def default(script, key):
    """The default of a setting, as the script's source assigns it."""
    return re.search(rf'^{key} = "([^"]*)"', open(os.path.join(ROOT, script)).read(), flags=re.M).group(1)


def commands(page):
    """The shell commands of a page's bash blocks, in order, continuation lines joined and
    `&&` chains split."""
    text = open(os.path.join(ROOT, page)).read()
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for cmd in line.split("&&"):
                if cmd.strip():
                    yield shlex.split(cmd, comments=True)


def settings(args):
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def is_run(name):
    return any(part.startswith("out") for part in name.rstrip("/").split("/"))  # out-needle-lora, out-lab/lora-s1


def reads_and_writes(cmd):
    """(run folders the command reads, the one it writes) for the project's scripts."""
    scripts = [a for a in cmd if a.endswith(".py")]
    if not scripts:
        return [], None
    script, args = scripts[0], cmd[cmd.index(scripts[0]) + 1:]
    s = settings(args)
    if script == "train.py":
        out = default("train.py", "out_dir")
        for config in (a for a in args if a.endswith(".py")):
            found = re.findall(r'^out_dir = "([^"]*)"', open(os.path.join(ROOT, config)).read(), flags=re.M)
            out = found[-1] if found else out
        base = s.get("init_from", "")
        return [base] if is_run(base) and base != "resume" else [], s.get("out_dir", out)
    if script in ("sample.py", "attention.py"):
        if "init_from" in s and s["init_from"] != "out_dir":
            return [s["init_from"]] if is_run(s["init_from"]) else [], None
        return [s.get("out_dir", default(script, "out_dir"))], None
    if script == "eval_needle.py":
        return [m for entry in s.get("models", "").split(",") for m in entry.split("+") if is_run(m)], None
    if script == "report.py":
        return [m for entry in s.get("runs", "").split(",") for m in entry.split("+") if is_run(m)], None
    if script == "induction.py":
        return [s["model"]] if is_run(s.get("model", "")) else [], None
    return [], None


@pytest.mark.parametrize("page", PAGES)
def test_every_run_a_command_reads_was_written_before(page):
    written, checked = set(), 0
    for cmd in commands(page):
        reads, writes = reads_and_writes(cmd)
        for folder in reads:
            assert folder in written, f"{page}: `{' '.join(cmd)}` reads {folder}, which no command before it writes"
            checked += 1
        if writes:
            written.add(writes)
    if page == "README.md":
        assert checked >= 2  # the quickstart's sample and evaluation at least
