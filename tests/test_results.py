"""The committed results of the SmolLM2 lab (results/lab/): every table names the command that
made it, every .json records the settings it ran with, and every number of a table in the README or
docs/lab.md citing one of them is in that file."""

import ast
import json
import os
import re
import shlex

import pytest

from conftest import ROOT

LAB = os.path.join(ROOT, "results", "lab")
TABLES = sorted(os.path.relpath(os.path.join(d, f), LAB) for d, _, files in os.walk(LAB) for f in files if f.endswith(".txt"))
DECIMAL = r"[-+]?\d+\.\d+"


@pytest.mark.parametrize("name", TABLES)
def test_every_lab_table_names_its_command(name):
    first = open(os.path.join(LAB, name)).readline()
    m = re.match(r"# python (\S+\.py) ", first)
    assert m, f"results/lab/{name} does not start with '# python SCRIPT.py ...'"
    assert os.path.exists(os.path.join(ROOT, m.group(1))), f"results/lab/{name}: no script {m.group(1)}"
    for config in re.findall(r"(config/\S+\.py)", first):
        assert os.path.exists(os.path.join(ROOT, config)), f"results/lab/{name}: no config {config}"


def lab_tables(page):
    """(cited files, numbers) of each markdown table of a page whose paragraph right above cites
    results/lab/FILE.txt, one or more; a table right below another shares its citation. A column
    headed "the paper's ..." quotes the paper: its numbers are left out."""
    text = open(os.path.join(ROOT, page)).read()
    found, since, cited = [], 0, []
    for m in re.finditer(r"((?:^\|.*\|\n)+)", text, flags=re.M):
        between = text[since:m.start()]
        if between.strip():  # else: the table right below another
            cited = sorted(set(re.findall(r"results/lab/([\w/]+\.txt)", between.strip().split("\n\n")[-1])))
        header, _, *body = m.group(1).splitlines()
        quoted = [i for i, h in enumerate(header.split("|")) if h.strip().startswith("the paper's")]
        cells = [c for row in body for i, c in enumerate(row.split("|")) if i not in quoted]
        if cited and body:
            found.append((cited, re.findall(DECIMAL, "\n".join(cells))))
        since = m.end()
    return found


@pytest.mark.parametrize("page", ["README.md", os.path.join("docs", "lab.md")])
def test_lab_numbers_are_the_committed_ones(page):
    tables = lab_tables(page)
    if page.endswith("lab.md"):
        assert len(tables) >= 5, "docs/lab.md shows the lab's tables"
    for names, numbers in tables:
        for name in names:
            assert name in TABLES, f"{page} cites results/lab/{name}, which is not committed"
        committed = set(re.findall(DECIMAL, "\n".join(open(os.path.join(LAB, n)).read() for n in names)))
        assert numbers, f"a table of {page} citing {names} holds no numbers"
        missing = [n for n in numbers if n not in committed and n.lstrip("+") not in committed]
        assert not missing, f"{page}: numbers not in results/lab/{', '.join(names)}: {missing}"


JSONS = sorted(os.path.relpath(os.path.join(d, f), LAB) for d, _, files in os.walk(LAB) for f in files if f.endswith(".json"))


@pytest.mark.parametrize("name", JSONS)
def test_every_lab_json_records_the_settings_it_ran_with(name):
    data = json.load(open(os.path.join(LAB, name)))
    if "settings" not in data:
        pytest.skip("no settings recorded")
    for arg in shlex.split(data["command"])[2:]:
        if arg.startswith("--"):
            key, _, text = arg[2:].partition("=")
            value = data["settings"][key]
            same = str(value) == text or (not isinstance(value, str) and value == ast.literal_eval(text))
            assert same, f"results/lab/{name}: {key} is {value!r}, ran with {text!r}"
