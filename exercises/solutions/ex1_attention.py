"""Exercise 1, a solution: the project's explicit map (difflora.causal_softmax) and its cache."""

from difflora import causal_softmax
from model import cache_extend


def causal_self_attention(q, k, v):
    return (causal_softmax(q, k) @ v.float()).to(q.dtype)  # (B, H, Tq, d)


def attend_with_cache(cache, q, k, v):
    k, v = cache_extend(cache, k=k, v=v)  # (B, H, cached + T_new, d)
    return causal_self_attention(q, k, v)
