"""Exercise 3: differential attention on the explicit path. Handout: exercises/handouts/ex3_diff_attention.md.
Grader: python -m pytest exercises/tests/test_ex3_diff_attention.py"""

import torch



def causal_attention_map(q, k):
    """The attention map softmax(q k^T / sqrt(d) + causal mask), float32, (B, H, Tq, Tk); the
    query rows are the last Tq of the Tk positions, as in exercise 1."""
    raise NotImplementedError("exercise 3: causal_attention_map")


def diff_attention_explicit(q1, k1, q2, k2, v, lam):
    """(A1 - lam A2) V with A1 = map(q1, k1), A2 = map(q2, k2) written out: (B, H, Tq, d) in q1's
    dtype. lam is a 0-dim tensor (it is learned: keep it in the graph)."""
    raise NotImplementedError("exercise 3: diff_attention_explicit")
