"""
Needle retrieval (data/needle): exact-match accuracy by context length and needle depth, and
where the attention of the last prompt token goes (the Differential Transformer's "answer vs
noise" allocation: mass on the needle vs on the rest of the context), for each model given.

    python eval_needle.py --models=gpt2,out-needle-lora,out-needle-difflora
    python eval_needle.py --models=gpt2 --lengths=256,512 --examples=20 --out=needle_base.png

A model is a train.py out_dir (adapter or full fine-tune) or a GPT-2 name/directory. The map
of a DiffLoRA layer is the differential one, A1 - lambda A2; masses are averaged over layers
and heads. Output: a table per model and a heat-map PNG of accuracy (depth x length).
"""

import os
import sys

import tiktoken
import torch

from configurator import configure
from difflora import attention_maps, attention_regions, load_trained, region_mass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "needle"))
from needle import make_example  # noqa: E402

# -----------------------------------------------------------------------------
models = "gpt2"  # comma-separated
lengths = "256,512,1024"  # context lengths in tokens (question and answer included)
depths = "0,0.25,0.5,0.75,1"
needles = 3
examples = 10  # per (length, depth) cell
seed = 1  # evaluation examples never coincide with prepare.py's (seed 0 by default)
device = "auto"
out = "needle.png"
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
globals().update(configure(config, sys.argv[1:]))
if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
enc = tiktoken.get_encoding("gpt2")
length_list = [int(n) for n in lengths.split(",")]
depth_list = [float(d) for d in depths.split(",")]
REGIONS = ("needle", "first", "query", "rest")

results = {}  # model -> (accuracy[len][depth], mean mass per region)
for name in models.split(","):
    try:
        model = load_trained(name).eval().to(device)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    acc = {}
    mass = {r: [] for r in REGIONS}
    for L in length_list:
        if L > model.config.block_size:
            raise SystemExit(f"error: length {L} is longer than {name}'s context of {model.config.block_size}")
        for d in depth_list:
            hits = 0
            for e in range(examples):
                ex = make_example(enc, seed * 1_000_000_007 + 10_000 * L + 100 * round(100 * d) + e, L, needles, d)
                prompt = torch.tensor([ex["tokens"][:ex["answer_start"]]], device=device)
                answer = ex["tokens"][ex["answer_start"]:]
                got = model.generate(prompt, len(answer), temperature=0)[0, ex["answer_start"]:].tolist()
                hits += got == answer
                regions = attention_regions(prompt.size(1), ex["needle"], ex["question"])
                for a1, neg, _ in attention_maps(model, prompt):
                    m = region_mass((a1 if neg is None else a1 - neg)[0, :, -1], regions)  # last row, per head
                    for r in REGIONS:
                        mass[r].append(m[r].mean().item())
            acc[L, d] = hits / examples
    results[name] = (acc, {r: sum(v) / len(v) for r, v in mass.items()})
    del model

for name, (acc, mass) in results.items():
    print(f"\n{name}: exact match by context length (rows) and needle depth (columns), {needles} needles, "
          f"{examples} examples per cell")
    print(f"{'length':>8}" + "".join(f"{d:>8.2f}" for d in depth_list) + f"{'mean':>8}")
    for L in length_list:
        row = [acc[L, d] for d in depth_list]
        print(f"{L:>8}" + "".join(f"{a:>8.2f}" for a in row) + f"{sum(row) / len(row):>8.2f}")
    print("attention mass of the last prompt token: " + ", ".join(f"{r} {mass[r]:.3f}" for r in REGIONS))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results) + 1, 4), squeeze=False, layout="constrained")
for ax, (name, (acc, mass)) in zip(axes[0], results.items()):
    grid = [[acc[L, d] for d in depth_list] for L in length_list]
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, a in enumerate(row):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", color="w" if a < 0.6 else "k", fontsize=8)
    ax.set(xticks=range(len(depth_list)), xticklabels=[f"{d:g}" for d in depth_list], xlabel="needle depth",
           yticks=range(len(length_list)), yticklabels=length_list,
           title=f"{os.path.basename(name.rstrip('/')) or name}\nattention: needle {mass['needle']:.3f}, rest {mass['rest']:.3f}")
fig.colorbar(im, ax=axes[0].tolist(), label="exact match")
fig.supylabel("context length (tokens)")
fig.savefig(out, dpi=100)
print(f"\nwrote {out}")
