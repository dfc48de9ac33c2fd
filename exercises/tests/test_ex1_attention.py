"""Exercise 1 against model.py's causal_attention (PyTorch's fused kernel)."""

import pytest
import torch

from ex1_attention import attend_with_cache, causal_self_attention
from explain import assert_close_or_explain, mask_mistakes
from model import causal_attention

RULE = "query row i of Tq (the last Tq of Tk positions) may see keys 0 .. Tk - Tq + i; softmax(q k^T / sqrt(d)) v"


def qkv(B=2, H=3, Tq=9, Tk=9, d=8, dtype=torch.float32):
    q = torch.randn(B, H, Tq, d, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, H, Tk, d, dtype=dtype, requires_grad=True) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("Tq,Tk", [(9, 9), (1, 1), (1, 9), (4, 9)])  # full, a single token, decode steps with a cache
def test_values_and_gradients(Tq, Tk):
    q, k, v = qkv(Tq=Tq, Tk=Tk)
    ours, ref = causal_self_attention(q, k, v), causal_attention(q, k, v)
    assert ours.shape == ref.shape, f"the output is (B, H, Tq, d) = {tuple(ref.shape)}, yours is {tuple(ours.shape)}"
    with torch.no_grad():
        assert_close_or_explain(ours, ref, mask_mistakes(q, k, v), atol=1e-5, rule=RULE)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_future_tokens_do_not_leak():
    q, k, v = qkv()
    out = causal_self_attention(q, k, v)
    v2 = v.detach().clone()
    v2[:, :, 5:] += 100.0  # change only positions 5..8
    torch.testing.assert_close(causal_self_attention(q, k, v2)[:, :, :5], out[:, :, :5], atol=1e-5, rtol=0)


def test_bf16_inputs_keep_their_dtype_and_stay_close():
    q, k, v = qkv(dtype=torch.bfloat16)
    out = causal_self_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    ref = causal_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=0)


def test_cache_in_chunks_equals_one_pass():
    """Prompt of 5, then 1, 1 and 3 tokens: the same outputs as attending over all 10 at once."""
    q, k, v = (t.detach() for t in qkv(Tq=10, Tk=10))
    full = causal_attention(q, k, v)
    cache, outs, start = {}, [], 0
    for n in (5, 1, 1, 3):
        s = slice(start, start + n)
        outs.append(attend_with_cache(cache, q[:, :, s], k[:, :, s], v[:, :, s]))
        start += n
    assert cache["k"].shape == (2, 3, 10, 8) and cache["v"].shape == (2, 3, 10, 8), "the cache holds every key and value so far"
    torch.testing.assert_close(torch.cat(outs, dim=2), full, atol=1e-5, rtol=0,
                               msg=lambda m: f"the new queries attend to every cached position and to the new ones before them\n{m}")
