"""Exercise 6 against difflora.py's head_norm and the spec's RMS fact."""

import pytest
import torch

from difflora import head_norm, lambda_init_schedule
from ex6_groupnorm import head_groupnorm
from explain import assert_close_or_explain


@pytest.mark.parametrize("depth", [0, 11])
def test_values_and_gradients(depth):
    y = 3 * torch.randn(2, 3, 5, 8, requires_grad=True)
    gain = torch.randn(8, requires_grad=True)
    li = lambda_init_schedule(depth)
    ours, ref = head_groupnorm(y, gain, li), head_norm(y, gain, li)
    with torch.no_grad():
        rms = lambda t, dims: t / (t.pow(2).mean(dims, keepdim=True) + 1e-5).sqrt()
        assert_close_or_explain(ours, ref, [
            ("the factor (1 - lambda_init) is missing: GN(y) = (1 - lambda_init) * gain * RMSNorm(y).", gain * rms(y, -1)),
            ("the heads are normalised together: each head's output, at each position, has its own RMS over d.",
             (1 - li) * gain * rms(y, (1, 3))),
            ("the gain is missing: GN(y) = (1 - lambda_init) * gain * RMSNorm(y).", (1 - li) * rms(y, -1))],
            atol=1e-5, rule="GN(y) = (1 - lambda_init) * gain * y / sqrt(mean(y^2 over d) + 1e-5), per head and position")
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, (y, gain), g), torch.autograd.grad(ref, (y, gain), g)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_each_head_has_rms_one_minus_lambda_init_whatever_its_scale():
    y = torch.randn(1, 4, 6, 16) * torch.tensor([0.1, 1.0, 10.0, 1000.0]).view(1, 4, 1, 1)
    out = head_groupnorm(y, torch.ones(16), 0.7)
    rms = out.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, 0.3), atol=1e-3, rtol=0)


def test_heads_and_positions_are_normalised_separately():
    y = torch.randn(1, 2, 3, 8)
    out = head_groupnorm(y, torch.ones(8), 0.0)
    y2 = y.clone()
    y2[0, 1, 2] *= 50  # one head at one position
    out2 = head_groupnorm(y2, torch.ones(8), 0.0)
    torch.testing.assert_close(out2, out, atol=1e-4, rtol=0)  # scale-free, and nothing else moved


def test_bf16_in_bf16_out_computed_in_fp32():
    y = (1e3 * torch.randn(2, 2, 4, 64)).bfloat16()
    out = head_groupnorm(y, torch.ones(64), 0.2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), head_norm(y.float(), torch.ones(64), 0.2), atol=1e-2, rtol=1e-2)  # bf16 rounding
