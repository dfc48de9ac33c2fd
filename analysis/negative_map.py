"""
What DiffLoRA's negative term learns, per layer: lambda's path over training (from each run's
metrics.json), and what lambda A2 takes away at the end, measured over the needle evaluation's
examples (analysis/eval_needle.py's, the same seeds): where the last prompt token's negative map
A2 puts its mass, on the asked needle's code, on the distractor needles' codes, on the first
token, beside where its positive map A1 puts it. A flat background spreads A2 evenly; a map that
cancels the distractors puts more on their codes than on the asked one.

    python analysis/negative_map.py --runs=out-lab/difflora-s1+out-lab/difflora-s2,out-lab/preserve-s1+out-lab/preserve-s2
    python analysis/negative_map.py --runs=out-needle-difflora --examples=1 --lengths=256 --steps=0,40

Concentration: the mass per token of a region over a flat map's, 1/T (T the prompt's tokens): 1
is flat, 10 is ten times the even share. '+' joins runs (seeds): each number is their mean. Writes
the table (printed, and as .txt headed by this command) and every number as .json.
"""

import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "data", "needle")]  # the repository, the needle generator
from analysis.attention_maps import attention_maps  # noqa: E402
from checkpoints import save_json  # noqa: E402
from configurator import check, configure, resolve_device, user_errors  # noqa: E402
from needle import KINDS, eval_seed, make_example  # noqa: E402
from runs import load_trained, read_adapter  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402

# -----------------------------------------------------------------------------
runs = ""  # comma-separated DiffLoRA train.py out_dirs; '+' joins the seeds of one method
steps = "0,5,10,20,40"  # the evaluations of lambda's path to tabulate (iterations at which train.py evaluated)
kinds = "multikey,multivalue"  # the needle evaluation's cells (config/lab/eval.py's by default)
needles = "8"
values = 3  # codes of the asked key in a multivalue example
lengths = "1024"
depths = "0.1,0.5,0.9"
examples = 1  # per (kind, needles, length, depth) cell: each is one forward pass with both maps materialised
seed = 1  # eval_needle.py's: the same examples
device = "auto"
out = "out-negative/negative.txt"  # the table; its numbers go beside it as .json
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])  # the settings as run (written into the .json)
globals().update(config)
check(runs != "", "runs", runs, "comma-separated DiffLoRA train.py out_dirs, '+' joining seeds")
try:
    step_list, needle_list, length_list = ([int(x) for x in s.split(",")] for s in (steps, needles, lengths))
    depth_list = [float(x) for x in depths.split(",")]
except ValueError:
    check(False, "steps/needles/lengths/depths", (steps, needles, lengths, depths), "comma-separated numbers")
kind_list = kinds.split(",")
check(all(k in KINDS for k in kind_list), "kinds", kinds, ", ".join(KINDS) + " (comma-separated)")
check(examples >= 1, "examples", examples, "an int >= 1")
check(all(n >= 2 and (n > values or "multivalue" not in kind_list) for n in needle_list), "needles", needles,
      f"counts with a distractor needle besides the asked key's: >= 2, and > values={values} with multivalue")
device = resolve_device(device)[0]
entries = runs.split(",")
command = f"# python analysis/negative_map.py {' '.join(sys.argv[1:])}"

# every run is read before anything is loaded: a typo costs no time
metrics = {}
for name in (n for entry in entries for n in entry.split("+")):
    adapter = os.path.join(name, "adapter.safetensors")
    if not os.path.exists(adapter) or not os.path.exists(os.path.join(name, "metrics.json")):
        raise SystemExit(f"error: runs: {name!r} holds no finished train.py run (metrics.json, adapter.safetensors)")
    with user_errors():
        if read_adapter(adapter)[0] != "difflora":
            raise ValueError(f"runs: {name} is not a DiffLoRA run: it has no negative map")
    with open(os.path.join(name, "metrics.json")) as f:
        metrics[name] = {r["iter"]: r["lambda"] for r in json.load(f)["eval"]}
    missing = [s for s in step_list if s not in metrics[name]]
    if missing:
        raise SystemExit(f"error: steps: {name} has no evaluation at iteration {missing[0]} (it has {sorted(metrics[name])})")


def mean(xs):
    return sum(xs) / len(xs)


def mask(T, ranges):
    m = torch.zeros(T, dtype=torch.bool)
    for a, b in ranges:
        m[a:b] = True
    return m


@torch.no_grad()
def measure(name):
    """Per layer: lambda, and the concentration of A1 and of A2 (the last prompt token's row, mean
    over heads and examples) on the asked code, the distractor codes and the first token."""
    with user_errors():
        model = load_trained(name).eval().to(device)
        enc = get_tokenizer(model.name_or_path)
    sums, n = None, 0
    cells = [(k, nd, L, d) for k in kind_list for nd in needle_list for L in length_list for d in depth_list]
    for kind, nd, L, d in cells:
        for e in range(examples):
            ex = make_example(enc, eval_seed(seed, kind, nd, L, d, e), L, nd, d, kind=kind, values=values)
            T = ex["answer_start"]
            regions = {"asked": mask(T, ex["codes"]), "distractors": mask(T, ex["distractor_codes"]), "first": mask(T, [(0, 1)])}
            maps = attention_maps(model, torch.tensor([ex["tokens"][:T]], device=device), rows=slice(-1, None))
            rows = []
            for a1, neg, lam in maps:
                a2 = neg / lam if lam != 0 else torch.full_like(neg, float("nan"))  # A2 itself: lambda A2 / lambda
                rows.append([lam] + [(a[0, :, -1][:, m.to(a.device)].sum(-1).mean().item() / m.sum().item()) * T
                                     for a in (a1, a2) for m in regions.values()])
            sums = rows if sums is None else [[s + r for s, r in zip(sl, rl)] for sl, rl in zip(sums, rows)]
            n += 1
        print(f"  {name}: {kind}, {nd} needles, length {L}, depth {d}", flush=True)
    return [[v / n for v in row] for row in sums]  # per layer: lambda, A1 x3, A2 x3


started = time.time()
COLUMNS = ("lambda", "A1 asked", "A1 distr", "A1 first", "A2 asked", "A2 distr", "A2 first")
lines = [command, f"# concentration of the last prompt token's attention: mass per token over a flat map's 1/T; "
         f"{examples} examples per cell of kinds {kinds}, needles {needles}, lengths {lengths}, depths {depths} "
         f"(analysis/eval_needle.py's, seed {seed}); 'asked': the asked needle's code digits, 'distr': the other "
         f"needles' codes; mean over heads, examples and the runs joined"]
data = {"command": command[2:], "settings": config, "entries": {}}
for entry in entries:
    names = entry.split("+")
    per_run = [measure(name) for name in names]
    table = [[mean([r[layer][c] for r in per_run]) for c in range(len(COLUMNS))] for layer in range(len(per_run[0]))]
    path = [[mean([metrics[name][s][layer] for name in names]) for s in step_list] for layer in range(len(table))]
    selective = sum(row[5] > row[4] for row in table)
    lines += ["", f"{entry}" + (f" (mean of {len(names)} runs)" if len(names) > 1 else ""),
              f"{'layer':>5}" + "".join(f"{'lambda@' + str(s):>11}" for s in step_list) + "".join(f"{c:>10}" for c in COLUMNS[1:])]
    for layer, (row, lams) in enumerate(zip(table, path)):
        lines.append(f"{layer:>5}" + "".join(f"{v:>11.3f}" for v in lams) + "".join(f"{v:>10.2f}" for v in row[1:]))
    means = [mean([row[c] for row in table]) for c in range(len(COLUMNS))]
    lines.append(f"{'mean':>5}" + "".join(f"{mean([p[i] for p in path]):>11.3f}" for i in range(len(step_list)))
                 + "".join(f"{v:>10.2f}" for v in means[1:]))
    lines.append(f"A2 puts more per token on the distractors' codes than on the asked code in {selective} of {len(table)} "
                 f"layers; lambda ends in {min(r[0] for r in table):.3f}..{max(r[0] for r in table):.3f}, "
                 f"negative in {sum(r[0] < 0 for r in table)} layers")
    data["entries"][entry] = dict(runs=names, columns=COLUMNS, layers=table, lambda_steps=step_list, lambda_path=path)
print("\n".join(lines))
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
save_json(os.path.splitext(out)[0] + ".json", data)
print(f"\nwrote {out} and its .json ({(time.time() - started) / 60:.1f} min)")
