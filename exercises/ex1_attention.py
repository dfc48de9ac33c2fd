"""Exercise 1: causal self-attention written out, then with a KV cache.
Handout: exercises/handouts/ex1_attention.md. Grader: python -m pytest exercises/tests/test_ex1_attention.py"""

import math

import torch


def causal_self_attention(q, k, v):
    """softmax(q k^T / sqrt(d) + mask) v with the map written out (no scaled_dot_product_attention).

    q: (B, H, Tq, d), k and v: (B, H, Tk, d), Tq <= Tk. The Tq query rows are the LAST Tq of the Tk
    positions (the earlier keys come from a KV cache), so query row i may see keys 0 .. Tk - Tq + i.
    Compute the scores and the softmax in float32 and return (B, H, Tq, d) in q's dtype.
    """
    raise NotImplementedError("exercise 1: causal_self_attention")


def attend_with_cache(cache, q, k, v):
    """One step of generation for one layer: append the new keys and values (B, H, T_new, d) to
    cache (a dict, empty at the first step: store them under "k" and "v", concatenated along
    time), then let the new queries attend to every cached position. Returns (B, H, T_new, d)."""
    raise NotImplementedError("exercise 1: attend_with_cache")
