"""
Needle retrieval (data/needle/needle.py): for each model given, exact match, the answer's loss
and the margin over distractors, by kind of task x needles x context length (rows) and needle
depth (columns), and where the attention of the last prompt token goes (the Differential
Transformer's "answer vs noise" allocation: mass on the asked key's needles vs on the rest).

    python analysis/eval_needle.py --models=gpt2,out-needle-lora,out-needle-difflora
    python analysis/eval_needle.py --models=gpt2 --lengths=256,512 --examples=20 --out=needle_base.png
    python analysis/eval_needle.py --models=out-pretrain,out-lora-s1+out-lora-s2    # '+' joins the seeds of one method
    python analysis/eval_needle.py --models=smollm2 --lengths=256,1024 --needles=4  # SmolLM2, offline
    python analysis/eval_needle.py --models=smollm2 --kinds=single,multikey,multivalue --needles=4,8 --lengths=1024

A model is a train.py out_dir (adapter or full fine-tune) or a base model (gpt2, smollm2, a
folder, a .gguf file, a hub id); each is evaluated with its own tokenizer, on the same examples.
The measures are teacher-forced from one pass over the prompt (a KV cache) and one over each
candidate answer:
  exact   every answer token is the argmax after the right prefix, i.e. greedy decoding
          writes the answer (tested against generate)
  loss    the answer's cross-entropy in nats per token (what train.py's val loss is on needle data)
  margin  log p(answer) - max log p(wrong answer), in nats, where a wrong answer swaps one of
          the answer's codes for a distractor needle's code (rows with no distractor: -)
Runs joined with '+' are one entry: each cell is their mean, and the spread (lowest and highest
run) of exact, loss and margin is shown beside each row. The map of a DiffLoRA layer is the
differential one, A1 - lambda A2; masses are averaged over layers, heads and the first
attn_examples examples of each cell. Output: the table (printed, and written beside the PNG as
.txt headed by the command, and as .json) and a heat map of exact match.
"""

import time
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "data", "needle")]  # the repository, the needle generator
from runs import load_trained, trained_config  # noqa: E402
from analysis.attention_maps import attention_maps, attention_regions, region_mass  # noqa: E402
from checkpoints import save_json  # noqa: E402
from configurator import check, configure, resolve_device, user_errors  # noqa: E402
from model import KVCache  # noqa: E402
from needle import KINDS, eval_seed, make_example  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402

# -----------------------------------------------------------------------------
models = "gpt2"  # comma-separated; '+' joins runs (seeds) of one method into one entry
kinds = "single"  # comma-separated: single, multikey, multivalue (see data/needle/needle.py)
needles = "3"  # comma-separated needle counts (all the needle sentences, the asked key's included)
values = 3  # codes of the asked key in a multivalue example
lengths = "256,512,1024"  # context lengths in tokens (question and answer included)
depths = "0,0.25,0.5,0.75,1"
examples = 10  # per (row, depth) cell
attn_examples = 2  # of those, how many also measure the attention allocation (an extra pass each; 0 = none)
seed = 1  # evaluation examples never coincide with prepare.py's (seed 0 by default)
device = "auto"
out = ""  # the heat map ('' = out-needle-eval/needle.png); the tables go beside it as .txt and .json
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])  # the settings as run (written into the .json)
globals().update(config)


def numbers(key, value, kind, example):
    """The comma-separated list of a setting, each item as kind (int or float)."""
    try:
        return [kind(x) for x in str(value).split(",")]
    except ValueError:
        check(False, key, value, f"comma-separated numbers such as {example}")


length_list = numbers("lengths", lengths, int, "256,512")
depth_list = numbers("depths", depths, float, "0,0.5,1")
needle_list = numbers("needles", needles, int, "4,8")
kind_list = kinds.split(",")
check(all(n >= 16 for n in length_list), "lengths", lengths, "token counts >= 16")
check(all(0 <= d <= 1 for d in depth_list), "depths", depths, "numbers in [0, 1]")
check(all(k in KINDS for k in kind_list), "kinds", kinds, ", ".join(KINDS) + " (comma-separated)")
check(values >= 2, "values", values, "an int >= 2")
check(all(1 <= n <= 30 and (n >= values or "multivalue" not in kind_list) for n in needle_list), "needles", needles,
      "1..30" + (f", at least values={values} with multivalue" if "multivalue" in kind_list else ""))
check(examples >= 1, "examples", examples, "an int >= 1")
check(attn_examples >= 0, "attn_examples", attn_examples, "an int >= 0 (more than examples: all of them)")
device = resolve_device(device)[0]
out = out or os.path.join("out-needle-eval", "needle.png")
table = os.path.splitext(out)[0] + ".txt"
REGIONS = ("needle", "first", "query", "rest")
entries = models.split(",")
rows = [(k, n, L) for k in kind_list for n in needle_list for L in length_list]


# every model is checked against the lengths, from its config alone, before any is evaluated: a
# typo in the last one costs no time
for name in (n for entry in entries for n in entry.split("+")):
    with user_errors():
        ctx = trained_config(name)[0].block_size
    if max(length_list) > ctx:
        raise SystemExit(f"error: lengths: {max(length_list)} is longer than {name}'s context of {ctx}")


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


@torch.no_grad()
def score(model, ex):
    """(exact, loss, margin) of one example: see the docstring. The prompt runs once into a KV
    cache; each candidate answer continues from a copy of it."""
    prompt, answer = ex["tokens"][:ex["answer_start"]], ex["tokens"][ex["answer_start"]:]
    cache = KVCache(model.config.n_layer)
    first, _ = model(torch.tensor([prompt], device=device), cache=cache, last=True)  # (1, 1, vocab)

    def logprobs(cand):  # (A, vocab) log-probabilities at the positions that predict cand
        if len(cand) == 1:
            return first[0].float().log_softmax(-1)
        fork = KVCache(model.config.n_layer)
        fork.layers, fork.pos = [dict(layer) for layer in cache.layers], cache.pos  # cache_extend never edits a tensor
        rest, _ = model(torch.tensor([cand[:-1]], device=device), cache=fork)  # (1, A-1, vocab)
        return torch.cat([first, rest], dim=1)[0].float().log_softmax(-1)

    def total(cand, lp):
        return lp[torch.arange(len(cand)), torch.tensor(cand)].sum().item()

    lp = logprobs(answer)
    exact = lp.argmax(-1).tolist() == answer
    right = total(answer, lp)
    wrong = [total(w, logprobs(w)) for w in ex["wrong"]]
    return exact, -right / len(answer), right - max(wrong) if wrong else None


def summary(runs, key, row):
    """Mean over runs and (low, high) of the runs' own means of measure key in a row."""
    per_run = [mean([x for d in depth_list for x in r[row, d][key]]) for r, _ in runs]
    if any(v is None for v in per_run):
        return None, None
    return mean(per_run), (min(per_run), max(per_run))


def report():
    """The finished rows of every entry as a dict (written as .json) and as table lines (written
    as .txt, and printed at the end), so that an interrupted or failing evaluation keeps what
    it measured."""
    chance = (f"chance: 1/needles for single and multikey, a model that copies the code of a random needle "
              f"(1/{needle_list[0]} = {1 / needle_list[0]:.2f} at {needle_list[0]} needles); less for multivalue "
              "(all of the key's codes, in order); 1/9000 for a guessed 4-digit code")
    lines = [f"# python analysis/eval_needle.py {' '.join(sys.argv[1:])}",
             f"# {examples} examples per cell, depths {depths}; {chance}",
             "# exact: greedy answer correct; loss: nats per answer token; margin: log p(answer) - max log p(wrong), nats"]
    data = {"command": lines[0][2:], "settings": config, "entries": {}}
    for entry, runs in results.items():
        done = [row for row in rows if runs and all((row, depth_list[-1]) in r for r, _ in runs)]
        if not done:
            continue
        spread = len(runs) > 1
        lines += ["", f"{entry}: exact match by row and needle depth (columns), loss and margin"
                  + (f", mean of {len(runs)} runs (runs: the lowest..highest of the runs' own row means)" if spread else ""),
                  f"{'kind':<11}{'needles':>8}{'length':>7}" + "".join(f"{d:>6.2f}" for d in depth_list)
                  + f"{'exact':>7}" + (f"{'runs':>14}" if spread else "") + f"{'loss':>7}"
                  + (f"{'runs':>14}" if spread else "") + f"{'margin':>8}" + (f"{'runs':>16}" if spread else "")]
        rows_out = []
        for row in done:
            kind, n, L = row
            cells = [mean([mean(r[row, d]["exact"]) for r, _ in runs]) for d in depth_list]
            stats = {key: summary(runs, key, row) for key in ("exact", "loss", "margin")}
            text = f"{kind:<11}{n:>8}{L:>7}" + "".join(f"{c:>6.2f}" for c in cells)
            for key, width, fmt in (("exact", 7, ".2f"), ("loss", 7, ".3f"), ("margin", 8, ".2f")):
                m, (lo, hi) = stats[key] if stats[key][0] is not None else (None, (None, None))
                text += f"{m:>{width}{fmt}}" if m is not None else f"{'-':>{width}}"
                if spread:
                    span = f"{lo:{fmt}}..{hi:{fmt}}" if m is not None else "-"
                    text += f" {span:>{2 * width - 1}}"
            lines.append(text)
            rows_out.append(dict(kind=kind, needles=n, length=L, depths=dict(zip(map(str, depth_list), cells)),
                                 **{k: v[0] for k, v in stats.items()}, **{f"{k}_runs": v[1] for k, v in stats.items()}))
        masses = [m for _, m in runs if m["needle"]]
        attention = {r: mean([mean(m[r]) for m in masses]) for r in REGIONS} if masses else None
        if attention:
            lines.append("attention mass of the last prompt token: " + ", ".join(f"{r} {v:.3f}" for r, v in attention.items()))
        cells = [[dict(kind=k, needles=n, length=L, depth=d, **r[(k, n, L), d]) for (k, n, L) in done for d in depth_list]
                 for r, _ in runs]  # every example's measures, run by run
        data["entries"][entry] = dict(runs=entry.split("+"), rows=rows_out, attention=attention, cells=cells)
    os.makedirs(os.path.dirname(os.path.abspath(table)), exist_ok=True)
    with open(table, "w") as f:
        f.write("\n".join(lines) + "\n")
    save_json(os.path.splitext(table)[0] + ".json", data)
    return lines


started = time.time()
results = {entry: [] for entry in entries}  # entry -> per run: ({(row, depth): {measure: [...]}}, {region: [...]})
for entry in entries:
    for name in entry.split("+"):
        print(f"evaluating {name}", flush=True)
        with user_errors(f" (finished results are in {table})"):
            model = load_trained(name).eval().to(device)
            enc = get_tokenizer(model.name_or_path)
        cells, mass = {}, {r: [] for r in REGIONS}
        results[entry].append((cells, mass))
        for row in rows:
            kind, n, L = row
            t0 = time.time()
            for d in depth_list:
                cell = {"exact": [], "loss": [], "margin": []}
                for e in range(examples):
                    ex = make_example(enc, eval_seed(seed, kind, n, L, d, e), L, n, d, kind=kind, values=values)
                    for key, v in zip(cell, score(model, ex)):
                        cell[key].append(v)
                    if e < attn_examples:
                        prompt = torch.tensor([ex["tokens"][:ex["answer_start"]]], device=device)
                        regions = attention_regions(prompt.size(1), ex["spans"], ex["question"])
                        for a1, neg, _ in attention_maps(model, prompt, rows=slice(-1, None)):  # the last token's row
                            m = region_mass((a1 if neg is None else a1 - neg)[0, :, -1], regions)  # per head
                            for r in REGIONS:
                                mass[r].append(m[r].mean().item())
                cell["exact"] = [float(x) for x in cell["exact"]]
                cells[row, d] = cell
            report()
            done = [cells[row, d] for d in depth_list]
            print(f"  {name}, {kind}, {n} needles, length {L}: exact {mean([x for c in done for x in c['exact']]):.2f}, "
                  f"loss {mean([x for c in done for x in c['loss']]):.3f} ({time.time() - t0:.0f} s)", flush=True)
        del model
print("\n".join(report()))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results) + 2, 1.5 + 0.35 * len(rows)), squeeze=False,
                         layout="constrained")
for ax, (name, runs) in zip(axes[0], results.items()):
    grid = [[mean([mean(r[row, d]["exact"]) for r, _ in runs]) for d in depth_list] for row in rows]
    needle_mass, rest_mass = (mean([mean(m[r]) for _, m in runs]) for r in ("needle", "rest"))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, line in enumerate(grid):
        for j, a in enumerate(line):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", color="w" if a < 0.6 else "k", fontsize=8)
    title = " + ".join(os.path.basename(n.rstrip("/")) or n for n in name.split("+"))
    if needle_mass is not None:
        title += f"\nattention: needle {needle_mass:.3f}, rest {rest_mass:.3f}"
    ax.set(xticks=range(len(depth_list)), xticklabels=[f"{d:g}" for d in depth_list], xlabel="needle depth",
           yticks=range(len(rows)), yticklabels=[f"{k} {n}n {L}" if len(kind_list) + len(needle_list) > 2 else str(L)
                                                 for k, n, L in rows], title=title)
fig.colorbar(im, ax=axes[0].tolist(), label="exact match")
fig.supylabel("kind, needles, context length (tokens)" if len(kind_list) + len(needle_list) > 2 else "context length (tokens)")
fig.savefig(out, dpi=100)
print(f"\nwrote {table}, its .json and {out} ({(time.time() - started) / 60:.1f} min)")
