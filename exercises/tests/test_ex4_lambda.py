"""Exercise 4 against difflora.py's schedule and a DiffLoRA layer's lam()."""

import math

import pytest
import torch

from difflora import DiffLoRAAttention, DiffLoRAConfig, lambda_init_schedule
from ex4_lambda import lam, lambda_init, negative_threshold
from explain import assert_close_or_explain
from model import GPTConfig, CausalSelfAttention


@pytest.mark.parametrize("depth", [0, 1, 5, 11, 23, 47])  # first and last layers of GPT-2 small, medium, xl
def test_schedule(depth):
    assert lambda_init(depth) != pytest.approx(lambda_init_schedule(depth + 1), abs=1e-12), \
        "depth counts from 0: the first layer's lambda_init is 0.8 - 0.6 exp(0) = 0.2"
    assert lambda_init(depth) == pytest.approx(lambda_init_schedule(depth), abs=1e-12), "0.8 - 0.6 exp(-0.3 depth)"


def test_lambda_equals_the_layer_and_has_gradients():
    layer = DiffLoRAAttention(CausalSelfAttention(GPTConfig(n_embd=32, n_head=2)), 3, DiffLoRAConfig(r=2))
    vecs = [layer.lambda_q1, layer.lambda_k1, layer.lambda_q2, layer.lambda_k2]
    ours, ref = lam(*vecs, layer.lambda_init), layer.lam()
    assert ours.dim() == 0, "lambda is one number per layer: a 0-dim tensor (lq1 @ lk1 is one)"
    lq1, lk1, lq2, lk2 = vecs
    with torch.no_grad():
        assert_close_or_explain(ours, ref, [
            ("the two exponentials are added: lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init.",
             torch.exp(lq1 @ lk1) + torch.exp(lq2 @ lk2) + layer.lambda_init),
            ("the vectors are multiplied element by element, not dotted: lq1 . lk1 is one number, sum(lq1 * lk1).",
             (torch.exp(lq1 * lk1) - torch.exp(lq2 * lk2) + layer.lambda_init).sum())],
            atol=1e-6, rule="lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init")
    for a, b in zip(torch.autograd.grad(ours, vecs), torch.autograd.grad(ref, vecs)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_equal_pairs_give_lambda_init():
    lq, lk = torch.randn(16), torch.randn(16)
    assert lam(lq, lk, lq, lk, 0.3).item() == pytest.approx(0.3, abs=1e-6)


@pytest.mark.parametrize("init", [0.2, 0.78, 0.0])
def test_negative_threshold_is_where_lambda_changes_sign(init):
    lq1, lk1 = 0.1 * torch.randn(16), 0.1 * torch.randn(16)
    t = negative_threshold(lq1, lk1, init)
    lq2 = torch.zeros(16)
    for s, negative in ((t - 1e-3, False), (t + 1e-3, True)):
        lq2[0], lk2 = s, torch.eye(16)[0]  # lq2 . lk2 = s
        assert (lam(lq1, lk1, lq2, lk2, init).item() < 0) == negative


def test_negative_threshold_when_lambda_cannot_be_negative():
    lq1, lk1 = torch.zeros(4), torch.zeros(4)  # exp(0) + init = 1 + init
    assert negative_threshold(lq1, lk1, 0.5) == pytest.approx(math.log(1.5))
    assert negative_threshold(lq1, lk1, -1.0) == -math.inf  # 1 + init = 0: any lq2 . lk2 makes lambda < 0
