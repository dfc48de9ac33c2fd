"""Exercise 2 against difflora.py's LoRA (the same A, B and scale) and the LoRA paper's init."""

import math

import pytest
import torch
import torch.nn as nn

from difflora import LoRA
from ex2_lora import LoRALinear, lora_param_count
from explain import assert_close_or_explain


def layer(i=48, o=24, r=4, alpha=8.0):
    torch.manual_seed(0)
    return LoRALinear(nn.Linear(i, o), r, alpha)


def trainable(m):
    return {n: p for n, p in m.named_parameters() if p.requires_grad}


def test_init_and_what_trains():
    m = layer()
    t = trainable(m)
    shapes = sorted(tuple(p.shape) for p in t.values())
    assert shapes == [(4, 48), (24, 4)], "trainable: A (r, in) and B (out, r), nothing else"
    A = next(p for p in t.values() if p.shape == (4, 48))
    B = next(p for p in t.values() if p.shape == (24, 4))
    assert torch.all(B == 0)
    assert 0.8 / math.sqrt(48) < A.abs().max() <= 1 / math.sqrt(48)  # U(+-1/sqrt(in))
    x = torch.randn(3, 5, 48)
    torch.testing.assert_close(m(x), m.base(x), atol=0, rtol=0)  # B = 0: starts as the base layer
    assert not m.base.weight.requires_grad and not m.base.bias.requires_grad


def test_equals_the_project_lora_and_learns_through_A_and_B():
    m = layer()
    t = trainable(m)
    A = next(p for p in t.values() if p.shape == (4, 48))
    B = next(p for p in t.values() if p.shape == (24, 4))
    with torch.no_grad():
        B.normal_()  # as after some training
    ref = LoRA(48, 24, 4, 8.0)
    with torch.no_grad():
        ref.A.weight.copy_(A), ref.B.weight.copy_(B)
    x = torch.randn(3, 5, 48, requires_grad=True)
    out = m(x)
    with torch.no_grad():
        assert_close_or_explain(out, m.base(x) + ref(x), [
            ("the scale is alpha / r, not alpha: the update is (alpha / r) x A^T B^T.", m.base(x) + 4 * ref(x)),
            ("the scale is missing: the update is (alpha / r) x A^T B^T.", m.base(x) + ref(x) / ref.scale)],
            atol=1e-5, rule="y = x W^T + b + (alpha / r) (x A^T) B^T")
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, A, B), g)
    theirs = torch.autograd.grad(m.base(x) + ref(x), (x, ref.A.weight, ref.B.weight), g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("r,alpha", [(4, 8.0), (2, 16.0)])
def test_merge_and_unmerge(r, alpha):
    m = layer(r=r, alpha=alpha)
    with torch.no_grad():
        for p in trainable(m).values():
            p.normal_()
    w0 = m.base.weight.detach().clone()
    x = torch.randn(7, 48)
    before = m(x)
    m.merge()
    torch.testing.assert_close(m.base(x), before, atol=1e-4, rtol=0)  # the adapter is in the weight now
    torch.testing.assert_close(m(x), before, atol=1e-4, rtol=0)  # and is not added twice
    m.unmerge()
    torch.testing.assert_close(m.base.weight, w0, atol=1e-5, rtol=0)
    torch.testing.assert_close(m(x), before, atol=1e-4, rtol=0)


def test_param_count():
    assert lora_param_count(768, 768, 16) == 24576
    assert lora_param_count(768, 2304, 8) == 8 * (768 + 2304)
    m = layer()
    assert sum(p.numel() for p in trainable(m).values()) == lora_param_count(48, 24, 4)
