"""Exercise 6: GroupNorm per head. Handout: exercises/handouts/ex6_groupnorm.md.
Grader: python -m pytest exercises/tests/test_ex6_groupnorm.py"""

import torch


def head_groupnorm(y, gain, lambda_init, eps=1e-5):
    """(1 - lambda_init) * RMSNorm(y) per head: y (B, H, T, d) is normalised over d for each head
    and position on its own, y / sqrt(mean(y^2) + eps), times gain (d,) (shared by the heads),
    times the constant (1 - lambda_init). Computed in float32 whatever y's dtype; returns y's dtype."""
    raise NotImplementedError("exercise 6: head_groupnorm")
