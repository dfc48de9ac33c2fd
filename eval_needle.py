"""
Needle retrieval (data/needle): exact-match accuracy by context length and needle depth, and
where the attention of the last prompt token goes (the Differential Transformer's "answer vs
noise" allocation: mass on the needle vs on the rest of the context), for each model given.

    python eval_needle.py --models=gpt2,out-needle-lora,out-needle-difflora
    python eval_needle.py --models=gpt2 --lengths=256,512 --examples=20 --out=needle_base.png
    python eval_needle.py --models=out-pretrain,out-lora-s1+out-lora-s2    # '+' joins the seeds of one method
    python eval_needle.py --models=smollm2 --lengths=256,1024 --needles=4  # SmolLM2, offline

A model is a train.py out_dir (adapter or full fine-tune) or a base model (gpt2, smollm2, a
folder, a .gguf file, a hub id); each is evaluated with its own tokenizer. Runs
joined with '+' are one entry: each cell is their mean, and the spread (lowest and highest
run) is shown beside each row. The map of a DiffLoRA layer is the differential one,
A1 - lambda A2; masses are averaged over layers and heads. Output: a table per entry (printed
and written beside the PNG as .txt, headed by the command) and a heat-map PNG of accuracy
(depth x length).
"""

import json
import os
import sys

import torch

from configurator import check, configure, resolve_device, user_errors
from difflora import attention_maps, attention_regions, load_trained, read_adapter, region_mass
from model import ALIASES, checkpoint_path, is_hub_id, open_gguf
from tokenizer import get_tokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "needle"))
from needle import make_example  # noqa: E402

# -----------------------------------------------------------------------------
models = "gpt2"  # comma-separated; '+' joins runs (seeds) of one method into one entry
lengths = "256,512,1024"  # context lengths in tokens (question and answer included)
depths = "0,0.25,0.5,0.75,1"
needles = 3
examples = 10  # per (length, depth) cell
seed = 1  # evaluation examples never coincide with prepare.py's (seed 0 by default)
device = "auto"
out = ""  # the heat map ('' = out-needle-eval/needle.png); the table goes beside it as .txt
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
globals().update(configure(config, sys.argv[1:]))
try:
    length_list = [int(n) for n in lengths.split(",")]
except ValueError:
    check(False, "lengths", lengths, "comma-separated token counts such as 256,512")
try:
    depth_list = [float(d) for d in depths.split(",")]
except ValueError:
    check(False, "depths", depths, "comma-separated numbers in [0, 1] such as 0,0.5,1")
check(all(n >= 16 for n in length_list), "lengths", lengths, "token counts >= 16")
check(all(0 <= d <= 1 for d in depth_list), "depths", depths, "numbers in [0, 1]")
check(1 <= needles <= 30, "needles", needles, "1..30")
check(examples >= 1, "examples", examples, "an integer >= 1")
device = resolve_device(device)[0]
out = out or os.path.join("out-needle-eval", "needle.png")
table = os.path.splitext(out)[0] + ".txt"
REGIONS = ("needle", "first", "query", "rest")
entries = models.split(",")


def context_of(name):
    """The context length of a model, read from its files without loading it (None for a hub id);
    stops with one line if the model cannot be there."""
    if name in ALIASES or (name.endswith(".gguf") and os.path.isfile(name)):
        with user_errors():
            reader = open_gguf(checkpoint_path(name))  # the same reader loads the model later
        return int(reader.fields["llama.context_length"].contents())
    if not os.path.isdir(name):
        if is_hub_id(name):
            return None  # a hub id: from_pretrained fetches it (or says why it cannot)
        raise SystemExit(f"error: models: no folder {name!r} here (from {os.getcwd()})")
    if os.path.exists(os.path.join(name, "adapter.safetensors")):
        base = read_adapter(os.path.join(name, "adapter.safetensors"))[2]["name_or_path"]
        return context_of(base)
    if not os.path.exists(os.path.join(name, "config.json")):
        raise SystemExit(f"error: models: {name!r} holds no checkpoint (adapter.safetensors or config.json)")
    with open(os.path.join(name, "config.json")) as f:
        hf = json.load(f)
    return hf.get("n_positions", hf.get("max_position_embeddings"))


# every model is checked before any is evaluated: a typo in the last one costs no time
for name in (n for entry in entries for n in entry.split("+")):
    ctx = context_of(name)
    if ctx is not None and max(length_list) > ctx:
        raise SystemExit(f"error: lengths: {max(length_list)} is longer than {name}'s context of {ctx}")


def mean(xs):
    return sum(xs) / len(xs)


def write_table():
    """Write the table of everything finished so far to `table`, so that an interrupted or
    failing evaluation keeps what it measured; return its lines."""
    lines = [f"# python eval_needle.py {' '.join(sys.argv[1:])}",
             f"# {needles} needles, {examples} examples per cell; chance: 1/{needles} = {1 / needles:.2f} for a model "
             f"that copies the value of a random needle, 1/9000 for a guessed 4-digit code"]
    for entry, runs in results.items():
        done = [L for L in length_list if runs and all((L, depth_list[-1]) in acc for acc, _ in runs)]
        if not done:
            continue
        spread = len(runs) > 1
        lines += ["", f"{entry}: exact match by context length (rows) and needle depth (columns)"
                  + (f", mean of {len(runs)} runs" if spread else ""),
                  f"{'length':>8}" + "".join(f"{d:>8.2f}" for d in depth_list) + f"{'mean':>8}"
                  + ("  runs (low-high)" if spread else "")]
        for L in done:
            row = [mean([acc[L, d] for acc, _ in runs]) for d in depth_list]
            run_means = [mean([acc[L, d] for d in depth_list]) for acc, _ in runs]
            lines.append(f"{L:>8}" + "".join(f"{a:>8.2f}" for a in row) + f"{mean(row):>8.2f}"
                         + (f"  {min(run_means):.2f}-{max(run_means):.2f}" if spread else ""))
        masses = [m for _, m in runs if m["needle"]]
        lines.append("attention mass of the last prompt token: "
                     + ", ".join(f"{r} {mean([mean(m[r]) for m in masses]):.3f}" for r in REGIONS))
    os.makedirs(os.path.dirname(os.path.abspath(table)), exist_ok=True)
    with open(table, "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


results = {entry: [] for entry in entries}  # entry -> per run: ({(length, depth): accuracy}, {region: [mass, ...]})
for entry in entries:
    for name in entry.split("+"):
        print(f"evaluating {name}", flush=True)
        with user_errors(f" (finished results are in {table})"):
            model = load_trained(name).eval().to(device)
            enc = get_tokenizer(model.name_or_path)
        acc, mass = {}, {r: [] for r in REGIONS}
        results[entry].append((acc, mass))
        for L in length_list:
            for d in depth_list:
                hits = 0
                for e in range(examples):
                    ex = make_example(enc, seed * 1_000_000_007 + 10_000 * L + 100 * round(100 * d) + e, L, needles, d)
                    prompt = torch.tensor([ex["tokens"][:ex["answer_start"]]], device=device)
                    answer = ex["tokens"][ex["answer_start"]:]
                    got = model.generate(prompt, len(answer), temperature=0)[0, ex["answer_start"]:].tolist()
                    hits += got == answer
                    regions = attention_regions(prompt.size(1), ex["needle"], ex["question"])
                    for a1, neg, _ in attention_maps(model, prompt, rows=slice(-1, None)):  # the last token's row
                        m = region_mass((a1 if neg is None else a1 - neg)[0, :, -1], regions)  # per head
                        for r in REGIONS:
                            mass[r].append(m[r].mean().item())
                acc[L, d] = hits / examples
            write_table()
            print(f"  {name}, length {L}: mean exact match {mean([acc[L, d] for d in depth_list]):.2f}", flush=True)
        del model
print("\n".join(write_table()))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results) + 1, 4), squeeze=False, layout="constrained")
for ax, (name, runs) in zip(axes[0], results.items()):
    grid = [[mean([acc[L, d] for acc, _ in runs]) for d in depth_list] for L in length_list]
    needle_mass, rest_mass = (mean([mean(m[r]) for _, m in runs]) for r in ("needle", "rest"))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, a in enumerate(row):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", color="w" if a < 0.6 else "k", fontsize=8)
    ax.set(xticks=range(len(depth_list)), xticklabels=[f"{d:g}" for d in depth_list], xlabel="needle depth",
           yticks=range(len(length_list)), yticklabels=length_list,
           title=f"{' + '.join(os.path.basename(n.rstrip('/')) or n for n in name.split('+'))}\n"
                 f"attention: needle {needle_mass:.3f}, rest {rest_mass:.3f}")
fig.colorbar(im, ax=axes[0].tolist(), label="exact match")
fig.supylabel("context length (tokens)")
fig.savefig(out, dpi=100)
print(f"\nwrote {table} and {out}")
