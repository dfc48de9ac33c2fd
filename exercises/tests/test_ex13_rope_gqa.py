"""Exercise 13: rotate and repeat_heads against their equations; then the project's own layer
tests, of the Llama family (RoPE, grouped-query keys: tests/test_llama_difflora.py) and of
GPT-2 (tests/test_difflora.py), run with your layer in place of the project's."""

import torch

from ex13_rope_gqa import repeat_heads, rotate
from explain import BACKWARDS, NEIGHBOURS, TILED, assert_close_or_explain, rope_neighbours, tiled_heads
from model import apply_rope, rope_cos_sin
from swap_layer import run_project_tests_with


LLAMA_TESTS = ["layer_matches_naive_equations_with_rope_and_gqa", "fused_and_explicit_paths_agree",
               "preserve_init_equals_base", "kv_cache_generation_equals_uncached", "merge_keeps_the_logits",
               "frozen_stay_identical_and_every_trainable_moves"]
GPT2_TESTS = ["layer_matches_naive_equations", "fused_and_explicit_paths_agree", "kv_cache_generation",
              "difflora_merge_keeps", "attention_maps_rows"]


def angles(T, d, theta=10000.0, offset=0):
    inv_freq = theta ** (-torch.arange(0, d, 2).float() / d)  # (d/2,)
    return rope_cos_sin(inv_freq, torch.arange(offset, offset + T))  # (T, d) each


def test_rotate_turns_each_pair_by_its_angle():
    B, H, T, d = 2, 3, 5, 8
    x = torch.randn(B, H, T, d)
    cos, sin = angles(T, d)
    got = rotate(x, cos, sin)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert_close_or_explain(got, apply_rope(x, cos, sin), [(NEIGHBOURS, rope_neighbours(x, cos, sin)),
                                                           (BACKWARDS, apply_rope(x, cos, -sin))], atol=1e-5,
                            rule="dimension i pairs with i + d/2 and the pair turns by its angle")
    for i in range(d // 2):  # the 2x2 rotation of the pair (i, i + d/2), position by position
        a = torch.arange(T) * 10000.0 ** (-2 * i / d)  # (T,)
        c, s = a.cos(), a.sin()
        xi, xj = x[..., i], x[..., i + d // 2]
        torch.testing.assert_close(got[..., i], xi * c - xj * s, atol=1e-5, rtol=0)
        torch.testing.assert_close(got[..., i + d // 2], xj * c + xi * s, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=0)  # a rotation keeps lengths
    torch.testing.assert_close(got, apply_rope(x, cos, sin), atol=1e-6, rtol=0)
    bf = rotate(x.bfloat16(), cos, sin)
    assert bf.dtype == torch.bfloat16


def test_rotated_scores_depend_only_on_the_distance():
    d = 16
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)
    scores = []
    for m in (0, 7, 100):  # query at m + 3, key at m: the same distance
        cq, sq = angles(1, d, offset=m + 3)
        ck, sk = angles(1, d, offset=m)
        scores.append((rotate(q, cq, sq) * rotate(k, ck, sk)).sum().item())
    assert max(scores) - min(scores) < 1e-3 * max(1.0, abs(scores[0]))


def test_repeat_heads_serves_each_group_from_its_head():
    t = torch.randn(2, 3, 4, 5)
    got = repeat_heads(t, 9)
    assert got.shape == (2, 9, 4, 5)
    assert_close_or_explain(got, t.repeat_interleave(3, dim=1), [(TILED, tiled_heads(t, 9))], atol=0,
                            rule="query head h is served by key/value head h // g, g = 9 / 3")
    for h in range(9):
        torch.testing.assert_close(got[:, h], t[:, h // 3], atol=0, rtol=0)
    torch.testing.assert_close(repeat_heads(t, 3), t, atol=0, rtol=0)


def test_project_layer_tests_pass_with_your_layer():
    rotate(torch.zeros(1, 1, 1, 2), torch.ones(1, 2), torch.zeros(1, 2))  # not written yet: NotImplementedError here
    run_project_tests_with("ex13_rope_gqa", 13, ["test_llama_difflora.py", "test_difflora.py"],
                           sorted(set(LLAMA_TESTS + GPT2_TESTS)))
