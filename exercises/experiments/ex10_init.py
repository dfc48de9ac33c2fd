"""Experiment 10: init="paper" against init="preserve". Fine-tune DiffLoRA on shakespeare from
the baby GPT-2, two seeds each, and follow the validation loss over the first 50 steps: where
does each start, and how fast does it get back to (or below) the base model? Handout:
exercises/handouts/ex10_init.md. About 1 minute on 2 CPU cores.

    python exercises/experiments/ex10_init.py
"""

import sys

from common import compare
from configurator import configure

steps = 50  # fine-tuning steps per run
seeds = "0,1"  # comma-separated
lr = 1e-3
globals().update(configure(dict(steps=steps, seeds=seeds, lr=lr), sys.argv[1:]))

curves = compare({"paper": dict(init="paper"), "preserve": dict(init="preserve")}, steps, seeds, lr, every=10)
logged = [s for s, _ in next(iter(curves.values()))]
print("\nvalidation loss by step\n" + f"{'init':<10}{'seed':>5}" + "".join(f"{s:>8}" for s in logged))
for (label, seed), curve in curves.items():
    print(f"{label:<10}{seed:>5}" + "".join(f"{loss:>8.4f}" for _, loss in curve))
