"""Exercise 3 against difflora.py's fused and explicit differential attention."""

import pytest
import torch

from difflora import causal_softmax, explicit_differential_attention, fused_differential_attention
from ex3_diff_attention import causal_attention_map, diff_attention_explicit
from explain import assert_close_or_explain


def inputs(Tq=9, Tk=9, dtype=torch.float32):
    q1, q2 = (torch.randn(2, 3, Tq, 8, dtype=dtype, requires_grad=True) for _ in range(2))
    k1, k2, v = (torch.randn(2, 3, Tk, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    return q1, k1, q2, k2, v, torch.tensor(0.4, requires_grad=True)


@pytest.mark.parametrize("Tq,Tk", [(9, 9), (1, 1), (1, 9), (3, 9)])
def test_map_rows_sum_to_one_and_match(Tq, Tk):
    q1, k1, *_ = inputs(Tq, Tk)
    a = causal_attention_map(q1, k1)
    assert a.shape == (2, 3, Tq, Tk) and a.dtype == torch.float32, "the map is (B, H, Tq, Tk), softmax in float32"
    with torch.no_grad():
        assert_close_or_explain(a, causal_softmax(q1, k1), [
            ("the map is not causal: query row i of Tq, the last Tq of Tk positions, may see keys 0 .. Tk - Tq + i only.",
             (q1 @ k1.transpose(-2, -1) / 8 ** 0.5).softmax(-1))], atol=1e-6,
            rule="A = softmax(q k^T / sqrt(d) + causal mask), one row per query")
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, Tq), atol=1e-6, rtol=0)


@pytest.mark.parametrize("Tq,Tk", [(9, 9), (1, 1), (1, 9), (3, 9)])
def test_values_and_gradients_including_lambda(Tq, Tk):
    args = inputs(Tq, Tk)
    ours = diff_attention_explicit(*args)
    ref = fused_differential_attention(*args)
    q1, k1, q2, k2, v, lam = args
    with torch.no_grad():
        a1, a2 = causal_softmax(q1, k1), causal_softmax(q2, k2)
        assert_close_or_explain(ours, ref, [
            ("lambda scales the wrong map: it is (A1 - lambda A2) V, the negative map A2 scaled.", (lam * a1 - a2) @ v),
            ("the maps are added: it is (A1 - lambda A2) V, the negative map subtracted.", (a1 + lam * a2) @ v)],
            atol=1e-5, rule="DiffAttn = (A1 - lambda A2) V")
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, args, g), torch.autograd.grad(ref, args, g)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_lambda_zero_is_plain_attention_and_equal_maps_cancel():
    q1, k1, q2, k2, v, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(diff_attention_explicit(q1, k1, q2, k2, v, torch.tensor(0.0)),
                                   explicit_differential_attention(q1, k1, q1, k1, v, torch.tensor(0.0))[0], atol=1e-6, rtol=0)
        out = diff_attention_explicit(q1, k1, q1, k1, v, torch.tensor(1.0))  # A1 - A2 = 0
        torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)


def test_bf16_keeps_dtype():
    args = inputs(dtype=torch.bfloat16)
    out = diff_attention_explicit(*args[:5], torch.tensor(0.4))
    assert out.dtype == torch.bfloat16
    ref = fused_differential_attention(*(a.float() for a in args[:5]), torch.tensor(0.4))
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=0)
