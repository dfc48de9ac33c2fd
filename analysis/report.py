"""
Compare train.py runs: their learning curves (the val loss and val exact match train.py measured
at each evaluation), lambda per layer at the end (DiffLoRA runs), and what each fine-tune costs
elsewhere: the loss on held-out general text (tiny-shakespeare's val split, tokenised for the
base) before and after it.

    python analysis/report.py --runs=out-lab/difflora-s1+out-lab/difflora-s2,out-lab/lora-s1+out-lab/lora-s2
    python analysis/report.py --runs=out-needle-difflora,out-needle-lora --steps=0,10,20,40 --out=out-report

'+' joins runs (seeds) of one method into one entry: each number is their mean, with the
lowest and highest run beside it. Writes curves.txt, lambda.txt and general.txt (each headed by
this command), report.json with every number, and curves.png into `out`. The general-text
tokens come from data/shakespeare (python data/shakespeare/prepare.py --tokenizer=BASE).
"""

import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from runs import load_trained, read_adapter  # noqa: E402
from checkpoints import save_json  # noqa: E402
from configurator import check, configure, resolve_device, user_errors  # noqa: E402
from tokenizer import dataset_dir, read_meta  # noqa: E402

# -----------------------------------------------------------------------------
runs = ""  # comma-separated train.py out_dirs; '+' joins the seeds of one method
steps = "0,5,10,20,40"  # the evaluations to tabulate (iterations at which train.py evaluated)
text = "shakespeare"  # general text: a dataset this project prepares per tokenizer ('' = skip the general-text loss)
text_windows = 16  # windows of the val split, spread evenly over it
text_tokens = 256  # tokens per window
device = "auto"
out = "out-report"
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])  # the settings as run (written into the .json)
globals().update(config)
check(runs != "", "runs", runs, "comma-separated train.py out_dirs, '+' joining seeds")
try:
    step_list = [int(s) for s in steps.split(",")]
except ValueError:
    check(False, "steps", steps, "comma-separated iterations such as 0,10,20")
check(text_windows >= 1 and text_tokens >= 2, "text_windows", text_windows, "an int >= 1 (and text_tokens >= 2)")
device = resolve_device(device)[0]
entries = runs.split(",")
command = f"# python analysis/report.py {' '.join(sys.argv[1:])}"
started = time.time()


def mean(xs):
    return sum(xs) / len(xs)


def spread(xs, fmt):
    """'mean (lowest..highest)' of the runs' values, or the value alone for one run."""
    return f"{mean(xs):{fmt}}" + (f" ({min(xs):{fmt}}..{max(xs):{fmt}})" if len(xs) > 1 else "")


# every run is read before anything is loaded or computed: a typo costs no time
metrics, bases = {}, set()
for name in (n for entry in entries for n in entry.split("+")):
    path = os.path.join(name, "metrics.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(name, "adapter.safetensors")):
        raise SystemExit(f"error: runs: {name!r} holds no finished train.py adapter run (metrics.json, adapter.safetensors)")
    with open(path) as f:
        metrics[name] = json.load(f)
    ev = {r["iter"]: r for r in metrics[name]["eval"]}
    missing = [s for s in step_list if s not in ev]
    if missing:
        raise SystemExit(f"error: steps: {name} has no evaluation at iteration {missing[0]} (it has {sorted(ev)}); "
                         f"choose --steps among those")
    metrics[name]["at"] = ev
    bases.add(read_adapter(os.path.join(name, "adapter.safetensors"))[2]["name_or_path"])
os.makedirs(out, exist_ok=True)
report = {"command": command[2:], "settings": config, "entries": {}}

# learning curves: what train.py measured on the fixed val examples at each evaluation
lines = [command, "# val loss (nats per answer token) and val exact match on train.py's fixed val examples, by step"]
for entry in entries:
    names = entry.split("+")
    exact = all("val_exact" in metrics[n]["at"][step_list[0]] for n in names)
    lines += ["", f"{entry}" + (f" (mean of {len(names)} runs, lowest..highest)" if len(names) > 1 else ""),
              f"{'step':>6}  {'val loss':<24}  " + ("val exact" if exact else "")]
    rows = []
    for s in step_list:
        loss = [metrics[n]["at"][s]["val"] for n in names]
        acc = [metrics[n]["at"][s]["val_exact"] for n in names] if exact else None
        lines.append(f"{s:>6}  {spread(loss, '.4f'):<24}  " + (spread(acc, ".3f") if exact else ""))
        rows.append(dict(step=s, val=loss, val_exact=acc))
    report["entries"][entry] = dict(runs=names, curve=rows)
with open(os.path.join(out, "curves.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))

# lambda per layer at the last evaluation (DiffLoRA runs only)
diff = [e for e in entries if all(metrics[n]["at"][max(metrics[n]["at"])]["lambda"] for n in e.split("+"))]
if diff:
    lams = {e: [metrics[n]["at"][max(metrics[n]["at"])]["lambda"] for n in e.split("+")] for e in diff}
    lines = [command, "# lambda per layer after training (mean of the runs, lowest..highest); lambda_init is "
                      "0.8 - 0.6 exp(-0.3 layer) unless the run set it", ""]
    lines += [f"column {j + 1}: {e}" for j, e in enumerate(diff)]
    lines.append(f"{'layer':>5}  " + "  ".join(f"{f'column {j + 1}':<20}" for j in range(len(diff))))
    for i in range(len(lams[diff[0]][0])):
        lines.append(f"{i:>5}  " + "  ".join(f"{spread([run[i] for run in lams[e]], '.3f'):<20}" for e in diff))
    for e in diff:
        report["entries"][e]["lambda"] = lams[e]
    with open(os.path.join(out, "lambda.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


@torch.no_grad()
def general_loss(model, tokens):
    """Mean next-token loss over text_windows windows of text_tokens tokens, spread evenly."""
    starts = np.linspace(0, len(tokens) - text_tokens - 1, text_windows).astype(np.int64)
    total = 0.0
    for s in starts:
        x = torch.from_numpy(tokens[s:s + text_tokens].astype(np.int64))[None].to(device)
        y = torch.from_numpy(tokens[s + 1:s + 1 + text_tokens].astype(np.int64))[None].to(device)
        total += model(x, y)[1].item()
    return total / len(starts)


# the cost elsewhere: general-text loss of each base and of each fine-tune
if text:
    data = {}
    for base in sorted(bases):
        with user_errors():
            folder = dataset_dir(text, base)[0]
        path = os.path.join(folder, "val.bin")
        if not os.path.exists(path):
            raise SystemExit(f"error: text: no {path}; prepare it with python data/{text}/prepare.py --tokenizer={base}")
        data[base] = np.memmap(path, dtype=np.dtype(read_meta(folder).get("dtype", "uint16")), mode="r")
        if len(data[base]) <= text_tokens + 1:
            raise SystemExit(f"error: text_tokens: {path} holds only {len(data[base])} tokens")
    losses = {}
    for name in sorted(bases) + [n for entry in entries for n in entry.split("+")]:
        t0 = time.time()
        with user_errors():
            model = load_trained(name).eval().to(device)  # an adapter on its base: the base's name_or_path
        losses[name] = general_loss(model, data[str(model.name_or_path)])
        print(f"general-text loss of {name}: {losses[name]:.4f} ({time.time() - t0:.0f} s)", flush=True)
    lines = [command, f"# loss (nats per token) on {text_windows} windows of {text_tokens} tokens of {text}'s val split, "
                      "tokenised for the base; change: after minus before", ""]
    lines.append(f"{'model':<40}  {'loss':<26}  change")
    for base in sorted(bases):
        lines.append(f"{base:<40}  {losses[base]:<26.4f}")
    for entry in entries:
        names = entry.split("+")
        before = losses[read_adapter(os.path.join(names[0], "adapter.safetensors"))[2]["name_or_path"]]
        vals = [losses[n] for n in names]
        label = names[0] + (f" (+{len(names) - 1} runs)" if len(names) > 1 else "")
        lines.append(f"{label:<40}  {spread(vals, '.4f'):<26}  {spread([v - before for v in vals], '+.4f')}")
        report["entries"][entry]["general_loss"] = vals
    report["base_general_loss"] = {b: losses[b] for b in bases}
    with open(os.path.join(out, "general.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
save_json(os.path.join(out, "report.json"), report)

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

panels = 2 + bool(diff)
fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), layout="constrained")
for entry in entries:
    rows = report["entries"][entry]["curve"]
    label = entry.split("+")[0].rstrip("/").split("/")[-1] + (f" (+{entry.count('+')})" if "+" in entry else "")
    colour = f"C{entries.index(entry)}"  # one colour per entry in every panel
    for ax, key in zip(axes, ("val", "val_exact")):
        if rows[0][key] is None:
            continue
        ys = np.array([r[key] for r in rows])  # (steps, runs)
        ax.plot(step_list, ys.mean(1), "o-", color=colour, label=label)
        ax.fill_between(step_list, ys.min(1), ys.max(1), color=colour, alpha=0.2)
    if entry in diff:
        lam = np.array(report["entries"][entry]["lambda"])  # (runs, layers)
        axes[2].plot(lam.mean(0), "o-", color=colour, label=label)
axes[0].set(xlabel="step", ylabel="val loss (nats per answer token)", yscale="log", title="answer loss")
axes[1].set(xlabel="step", ylabel="val exact match", ylim=(-0.02, 1.02), title="exact match (greedy)")
if diff:
    axes[2].set(xlabel="layer", ylabel="lambda", title="lambda per layer after training")
for ax in axes:
    ax.legend(fontsize=7)
fig.savefig(os.path.join(out, "curves.png"), dpi=100)
print(f"wrote curves.txt, {'lambda.txt, ' if diff else ''}{'general.txt, ' if text else ''}report.json and curves.png "
      f"in {out} ({(time.time() - started) / 60:.1f} min)")
