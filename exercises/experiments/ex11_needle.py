"""Experiment 11: LoRA against DiffLoRA at the same parameter budget on needle retrieval, from
the baby GPT-2, two seeds each; then the needle evaluation, the attention maps and the lambda
curves. It runs the project's own scripts (each command is printed, so you can rerun any of
them) into exercises/experiments/out/. Handout: exercises/handouts/ex11_needle.md. About 3
minutes on 2 CPU cores.

    python exercises/experiments/ex11_needle.py
"""

import json
import os
import subprocess
import sys
import time

from common import BASE, ROOT, base_model
from configurator import check, configure

iters = 300  # fine-tuning iterations per run
seeds = "1,2"  # comma-separated
globals().update(configure(dict(iters=iters, seeds=seeds), sys.argv[1:]))
check(iters >= 2, "iters", iters, "an integer >= 2")
check(all(s.isdigit() for s in seeds.split(",")), "seeds", seeds, "comma-separated integers such as 1,2")
base_model()  # stops with what to do when the baby model is missing
OUT = os.path.join("exercises", "experiments", "out")


def run(*args):
    print("$ python " + " ".join(args), flush=True)
    t0 = time.time()
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"error: that command failed:\n{res.stdout[-1500:]}{res.stderr[-1500:]}")
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
    return res.stdout


runs = {"lora": [], "difflora": []}
for method in runs:
    for seed in seeds.split(","):
        out_dir = os.path.join(OUT, f"ex11-{method}-seed{seed}")
        extra = ["config/train_lora.py"] if method == "lora" else []
        run("train.py", *extra, f"--init_from={BASE}", f"--out_dir={out_dir}", f"--max_iters={iters}",
            "--learning_rate=3e-4", "--min_lr=3e-5", "--eval_iters=5",
            f"--eval_interval={iters // 2}", "--batch_size=8", "--gradient_accumulation_steps=1",
            "--warmup_iters=5", f"--seed={seed}", "--device=cpu", "--overwrite=True")
        runs[method].append(out_dir)
print(f"\n{'run':<28}{'answer loss at 0':>18}{f'at {iters}':>10}   lambda per layer at the end")
for dirs in runs.values():
    for d in dirs:
        ev = json.load(open(os.path.join(ROOT, d, "metrics.json")))["eval"]
        lam = " ".join(f"{v:.2f}" for v in ev[-1]["lambda"]) if "lambda" in ev[-1] else "-"
        print(f"{os.path.basename(d):<28}{ev[0]['val']:>18.3f}{ev[-1]['val']:>10.3f}   {lam}")
print()
table = os.path.join(OUT, "ex11-needle.png")
print(run("eval_needle.py", f"--models={BASE}," + ",".join("+".join(r) for r in runs.values()), "--lengths=128,256",
          "--examples=2", "--device=cpu", f"--out={table}"))

for method, dirs in runs.items():
    print(run("attention.py", f"--out_dir={dirs[0]}", "--layers=0,3", "--device=cpu").split("\n\n")[-1])
print(f"Look at {table}, at attention.png and at the lambda curves (curves.png) in each of {OUT}/ex11-*/")
