"""Exercise 5, a solution (the project computes the same with two calls, one per map)."""

import torch
from torch.nn import functional as F

from model import causal_attention


def diff_attention_fused(q1, k1, q2, k2, v, lam):
    H = q1.size(1)
    y = causal_attention(torch.cat([q1, q2], 1), torch.cat([k1, k2], 1), torch.cat([v, v], 1))  # (B, 2H, Tq, d): [A1 V ; A2 V]
    return y[:, :H] - lam * y[:, H:]

