"""Exercise 3 against difflora.py's fused and explicit differential attention."""

import pytest
import torch

from difflora import causal_softmax, explicit_differential_attention, fused_differential_attention
from ex3_diff_attention import causal_attention_map, diff_attention_explicit


def inputs(Tq=9, Tk=9, dtype=torch.float32):
    q1, q2 = (torch.randn(2, 3, Tq, 8, dtype=dtype, requires_grad=True) for _ in range(2))
    k1, k2, v = (torch.randn(2, 3, Tk, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    return q1, k1, q2, k2, v, torch.tensor(0.4, requires_grad=True)


@pytest.mark.parametrize("Tq,Tk", [(9, 9), (1, 1), (1, 9), (3, 9)])
def test_map_rows_sum_to_one_and_match(Tq, Tk):
    q1, k1, *_ = inputs(Tq, Tk)
    a = causal_attention_map(q1, k1)
    assert a.shape == (2, 3, Tq, Tk) and a.dtype == torch.float32
    torch.testing.assert_close(a, causal_softmax(q1, k1), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, Tq), atol=1e-6, rtol=0)


@pytest.mark.parametrize("Tq,Tk", [(9, 9), (1, 1), (1, 9), (3, 9)])
def test_values_and_gradients_including_lambda(Tq, Tk):
    args = inputs(Tq, Tk)
    ours = diff_attention_explicit(*args)
    ref = fused_differential_attention(*args)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
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
