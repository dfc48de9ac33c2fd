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
    if script == "train.py":  # out_dir, dataset and method as the config files and then the arguments set them
        given = {key: default("train.py", key) for key in ("out_dir", "dataset", "method")}
        for config in (a for a in args if a.endswith(".py")):
            for key in given:
                found = re.findall(rf'^{key} = "([^"]*)"', open(os.path.join(ROOT, config)).read(), flags=re.M)
                given[key] = found[-1] if found else given[key]
        given.update({k: v for k, v in s.items() if k in given})
        base = s.get("init_from", "")
        out = given["out_dir"] or f"out-{os.path.basename(given['dataset'].rstrip('/'))}-{given['method']}"  # train.py's rule
        return [base] if is_run(base) and base != "resume" else [], out
    if script in ("sample.py", "analysis/draw_attention.py"):
        if "init_from" in s and s["init_from"] != "out_dir":
            return [s["init_from"]] if is_run(s["init_from"]) else [], None
        return [s.get("out_dir", default(script, "out_dir"))], None
    if script in ("analysis/eval_needle.py", "analysis/humaneval.py", "analysis/harness.py"):
        return [m for entry in s.get("models", "").split(",") for m in entry.split("+") if is_run(m)], None
    if script == "analysis/report.py":
        return [m for entry in s.get("runs", "").split(",") for m in entry.split("+") if is_run(m)], None
    if script == "analysis/induction.py":
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


# ----------------------------------------------------------------------------- links

LINKED = ["README.md"] + [os.path.join(folder, f) for folder in ("docs", "exercises", os.path.join("exercises", "handouts"))
                          for f in sorted(os.listdir(os.path.join(ROOT, folder))) if f.endswith(".md")]


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page):
    text = re.sub(r"```.*?```", "", open(os.path.join(ROOT, page)).read(), flags=re.S)  # no headings in code blocks
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", LINKED)
def test_every_link_and_section_reference_resolves(page):
    """Every relative link of the page reaches a file (and its #section, when it names one), and
    every README section the page names in words ("the README's "X"") exists."""
    text = open(os.path.join(ROOT, page)).read()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
        assert os.path.exists(resolved), f"{page}: the link {target} leads nowhere"
        if anchor:
            assert anchor in anchors(os.path.relpath(resolved, ROOT)), f"{page}: {target}: no such section"
    for name in re.findall(r"README's \"([^\"]+)\"", text):
        assert slug(name) in anchors("README.md"), f"{page} names the README's section {name!r}, which does not exist"
