"""Exercise 13: your differential layer (exercise 7) on a Llama-family model: rotary position
embeddings (RoPE) and grouped-query keys. Handout: exercises/handouts/ex13_rope_gqa.md.
Grader: python -m pytest exercises/tests/test_ex13_rope_gqa.py (it checks rotate and
repeat_heads against their equations, then swaps this class into difflora.py and runs the
project's Llama-family and GPT-2 layer tests on it)."""

import torch

from difflora import DiffLoRAAttention
from ex3_diff_attention import causal_attention_map, diff_attention_explicit
from ex4_lambda import lam
from ex5_fused import diff_attention_fused
from ex6_groupnorm import head_groupnorm
from model import cache_extend


def rotate(x, cos, sin):
    """RoPE in the half-split layout of Hugging Face's Llama weights. x (B, H, T, d); cos, sin
    (T, d), the angle of pair i repeated at i and i + d/2. Dimension i pairs with i + d/2 and
    the pair turns by its angle:
        (x_i, x_{i+d/2}) -> (x_i cos - x_{i+d/2} sin,  x_{i+d/2} cos + x_i sin)
    Returns a tensor like x (same dtype)."""
    raise NotImplementedError("exercise 13: rotate")


def repeat_heads(t, n_head):
    """Grouped-query attention: (B, Hkv, T, d) -> (B, n_head, T, d), key/value head j serving
    the query heads j*g .. j*g + g - 1, g = n_head / Hkv. Unchanged when Hkv == n_head."""
    raise NotImplementedError("exercise 13: repeat_heads")


class DiffAttention(DiffLoRAAttention):
    """Your exercise 7 layer, for both families. Besides what exercise 7 used: self.n_kv_head
    (key/value heads, fewer than self.n_head on SmolLM2 and Llama 3) and self.head_dim;
    self.sizes, the widths of q, k, v in c_attn's output (k and v are n_kv_head * head_dim
    wide). The adapters of K1 and K2 have that width too."""

    def forward(self, x, cache=None, rope=None):
        """x (B, T, C) -> (B, T, C). rope: None on GPT-2, else (cos, sin) of this call's
        positions, (T, head_dim) each. Exercise 7's steps, with two changes:
        - split q into n_head heads but k, v into n_kv_head heads; when rope is given, rotate
          Q1, K1, Q2 and K2 (all four) before the cache: the cache holds rotated keys;
        - after cache_extend, repeat the key and value heads for your exercise 3 and 5
          functions, which expect as many as the queries (the cache stays small)."""
        raise NotImplementedError("exercise 13: DiffAttention.forward")
