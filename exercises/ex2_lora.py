"""Exercise 2: a LoRA layer. Handout: exercises/handouts/ex2_lora.md.
Grader: python -m pytest exercises/tests/test_ex2_lora.py"""

import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) x A B around a frozen nn.Linear `base` (in -> out), A (in, r), B (r, out).
    A and B are stored as nn.Linear stores its weights, transposed (handout: the equations).

    A: nn.Parameter (r, in), kaiming-uniform like an nn.Linear(in, r) weight, i.e. U(+-1/sqrt(in)).
    B: nn.Parameter (out, r), zeros. Only A and B are trainable; base stays frozen.
    """

    def __init__(self, base, r, alpha):
        super().__init__()
        raise NotImplementedError("exercise 2: LoRALinear.__init__")

    def forward(self, x):
        """x (..., in) -> (..., out). After merge(), the adapter is inside base: do not add it twice."""
        raise NotImplementedError("exercise 2: LoRALinear.forward")

    def merge(self):
        """Fold the adapter into base.weight (nn.Linear layout: (out, in)), so forward costs one matmul."""
        raise NotImplementedError("exercise 2: LoRALinear.merge")

    def unmerge(self):
        """Take the adapter back out of base.weight."""
        raise NotImplementedError("exercise 2: LoRALinear.unmerge")


def lora_param_count(in_features, out_features, r):
    """The number of trainable parameters of one LoRA adapter of rank r on an (in -> out) map."""
    raise NotImplementedError("exercise 2: lora_param_count")
