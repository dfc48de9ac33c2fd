"""Exercise 13: rotate and repeat_heads against their equations; your layer against the equations
on a Llama layer with RoPE and grouped-query keys (a failure names the classic mistake it
matches: Q2, K2 not rotated, the wrong keys or queries in a map, lambda missing or on the wrong
map, key/value heads tiled) and its cache (it must hold the n_kv_head key/value heads, not the
repeated query-width heads); then the project's own layer
tests, of the Llama family (RoPE, grouped-query keys: tests/test_llama_difflora.py) and of
GPT-2 (tests/test_difflora.py), run with your layer in place of the project's."""

import torch

from ex13_rope_gqa import DiffAttention, repeat_heads, rotate
from explain import (BACKWARDS, NEIGHBOURS, TILED, assert_close_or_explain, cache_shapes_lesson, diff_layer, graded_layer,
                     layer_mistakes, rope_neighbours, tiled_heads)
from model import apply_rope, rope_cos_sin
from swap_layer import run_project_tests_with


LLAMA_TESTS = {  # the project's test (a part of its name) -> what it checks, said when it fails
    "layer_matches_naive_equations_with_rope_and_gqa": "a Llama layer (RoPE, grouped-query keys) against the equations",
    "fused_and_explicit_paths_agree": "the explicit and fused paths give the same output, every variant",
    "preserve_init_equals_base": "init=preserve gives the base model's logits at step 0, then learns",
    "kv_cache_generation_equals_uncached": "generation with the cache equals generation without it",
    "merge_keeps_the_logits": "merging the positive LoRA into W_Q, W_K keeps the logits",
    "frozen_stay_identical_and_every_trainable_moves": "training moves every adapter and lambda, and nothing frozen",
}
GPT2_TESTS = {
    "layer_matches_naive_equations": "a GPT-2 layer (no RoPE, rope is None) against the equations",
    "kv_cache_generation": "GPT-2 generation with the cache equals generation without it",
    "difflora_merge_keeps": "GPT-2: merging keeps the output",
    "attention_maps_rows": "with keep_maps, self.maps holds A1 and lambda A2 of the kept query rows",
}


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


def test_your_layer_computes_the_equations():
    layer, rope, x = graded_layer(DiffAttention, llama=True)
    with torch.no_grad():
        assert_close_or_explain(layer(x, None, rope), diff_layer(layer, x, rope), layer_mistakes(layer, x, rope),
                                atol=1e-5, rule="out = ((A1 - lambda A2) V) W_O with RoPE on Q1, K1, Q2, K2 and query head "
                                                "h reading key/value head h // g in both maps")


def test_your_cache_holds_the_key_value_heads():
    layer, (cos, sin), x = graded_layer(DiffAttention, llama=True)
    cache = {}
    with torch.no_grad():
        layer(x[:, :5], cache, (cos[:5], sin[:5]))
        lesson = cache_shapes_lesson(cache, 2, 5, layer.n_kv_head, layer.head_dim)
        assert lesson is None, lesson
        last = layer(x[:, 5:], cache, (cos[5:], sin[5:]))  # the new token at position 5
        full = layer(x, None, (cos, sin))
    torch.testing.assert_close(last, full[:, 5:], atol=1e-5, rtol=0, msg=lambda m: (
        "with a cache, the new token's output differs from the uncached pass: the cache holds the earlier keys already "
        "rotated (each at its own position), the new query and key turn by position 5's angles, and the new query row "
        "sees every cached key and its own\n" + m))


def test_project_layer_tests_pass_with_your_layer():
    rotate(torch.zeros(1, 1, 1, 2), torch.ones(1, 2), torch.zeros(1, 2))  # not written yet: NotImplementedError here
    run_project_tests_with("ex13_rope_gqa", 13, ["test_llama_difflora.py", "test_difflora.py"], {**GPT2_TESTS, **LLAMA_TESTS})
