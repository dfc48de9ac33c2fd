"""Exercise 3, a solution: the project's map, then the equation as written."""

from difflora import causal_softmax as causal_attention_map


def diff_attention_explicit(q1, k1, q2, k2, v, lam):
    a1, a2 = causal_attention_map(q1, k1), causal_attention_map(q2, k2)  # (B, H, Tq, Tk)
    return ((a1 - lam * a2) @ v.float()).to(q1.dtype)
