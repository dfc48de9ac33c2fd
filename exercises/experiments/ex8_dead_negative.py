"""Experiment 8: the dead negative term. The negative term Q2 = s B_q2 A_q2 x, K2 = s B_k2 A_k2 x
has no pretrained part. Start its B at 0, as LoRA does, and watch its gradients over a few
training steps; then the paper's init (A and B both random). A tiny random GPT-2: nothing
pretrained is needed. Handout: exercises/handouts/ex8_dead_negative.md. A few seconds.

    python exercises/experiments/ex8_dead_negative.py
"""

import sys

import torch

from common import ROOT  # noqa: F401  (puts the repository on the path)
from configurator import check, configure
from difflora import DiffLoRAConfig, apply_difflora
from model import GPT, GPTConfig

steps = 20  # training steps per init
seed = 0
globals().update(configure(dict(steps=steps, seed=seed), sys.argv[1:]))
check(steps >= 1, "steps", steps, "an integer >= 1")

for init in ("B = 0 in the negative term", "paper init (A, B random)"):
    torch.manual_seed(seed)
    model = apply_difflora(GPT(GPTConfig(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=64)),
                           DiffLoRAConfig(r=4, alpha=8, dropout=0.0))
    negative = {n: p for n, p in model.named_parameters() if ".lora_q2." in n or ".lora_k2." in n}
    if init.startswith("B = 0"):
        with torch.no_grad():
            for n, p in negative.items():
                if n.endswith("B.weight"):
                    p.zero_()
    start = {n: p.detach().clone() for n, p in negative.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    print(f"\n{init}: largest |gradient| of the negative term's A and B, per step")
    for step in range(steps):
        x = torch.randint(0, 256, (4, 32))
        _, loss = model(x, torch.roll(x, -1, dims=1))
        loss.backward()
        grad_a = max(p.grad.abs().max().item() for n, p in negative.items() if n.endswith("A.weight"))
        grad_b = max(p.grad.abs().max().item() for n, p in negative.items() if n.endswith("B.weight"))
        if step % 5 == 0 or step == steps - 1:
            print(f"  step {step:3d}  loss {loss.item():.3f}  A {grad_a:.3e}  B {grad_b:.3e}")
        opt.step()
        opt.zero_grad(set_to_none=True)
    moved = max((p - start[n]).abs().max().item() for n, p in negative.items())
    lam = [round(b.attn.lam().item(), 4) for b in model.transformer.h]
    print(f"  after {steps} steps: the negative term's weights moved by at most {moved:.3e}; lambda per layer {lam}")
