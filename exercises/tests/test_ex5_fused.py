"""Exercise 5 against difflora.py's fused path (two calls) and its explicit path."""

import pytest
import torch
from torch.nn import functional as F

from difflora import explicit_differential_attention, fused_differential_attention
from ex5_fused import diff_attention_fused
from measure import saved_for_backward_mb


def inputs(T=9, B=2, H=3, d=8, Tq=None):
    q1, q2 = (torch.randn(B, H, Tq or T, d, requires_grad=True) for _ in range(2))
    k1, k2, v = (torch.randn(B, H, T, d, requires_grad=True) for _ in range(3))
    return [q1, k1, q2, k2, v, torch.tensor(0.6, requires_grad=True)]


@pytest.mark.parametrize("Tq,T", [(1, 1), (2, 2), (9, 9), (33, 33), (1, 9), (4, 9)])  # the last two: with a KV cache
def test_values_and_gradients(Tq, T):
    args = inputs(T, Tq=Tq)
    ours = diff_attention_fused(*args)
    for ref in (fused_differential_attention(*args), explicit_differential_attention(*args)[0]):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ours)
    ref = fused_differential_attention(*args)
    for a, b in zip(torch.autograd.grad(ours, args, g), torch.autograd.grad(ref, args, g)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_one_kernel_call_over_stacked_heads(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, *a, **kw):
        calls.append(q.shape)
        return sdpa(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    diff_attention_fused(*inputs(T=7, H=3))
    assert calls == [(2, 6, 7, 8)], "one call, with the 2H = 6 heads of both maps stacked"


def test_fused_memory_grows_linearly_explicit_quadratically():
    mb = {T: (saved_for_backward_mb(explicit_differential_attention, T, H=2, d=16),
              saved_for_backward_mb(diff_attention_fused, T, H=2, d=16)) for T in (256, 512)}
    assert mb[512][1] < 2.3 * mb[256][1]  # fused: linear in T
    assert mb[512][0] > 3.0 * mb[256][0]  # explicit: the T x T maps dominate
