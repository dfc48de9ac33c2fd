"""Exercise 7: your layer against the equations on one GPT-2 layer (a failure names the classic
mistake it matches: the wrong keys or queries in a map, lambda missing or on the wrong map, the
positive term without its LoRA, the 1 / d scale), its cache against the uncached output; then the
project's own DiffLoRA layer tests (tests/test_difflora.py) with your layer in place of the
project's: against the naive equations, fused vs explicit for every
variant with and without GroupNorm, the GroupNorm RMS, the shared base's (1 - lambda), the
preserving init, gradient liveness, the dead B = 0 negative term, the KV cache, merging,
attention maps and bf16 autocast."""

import torch

from ex7_layer import DiffAttention
from explain import assert_close_or_explain, cache_shapes_lesson, diff_layer, graded_layer, layer_mistakes
from swap_layer import run_project_tests_with

LAYER_TESTS = {  # the project's test (a part of its name) -> what it checks, said when it fails
    "layer_matches_naive_equations": "the whole layer, LoRA on V and W_O included, against the equations",
    "fused_and_explicit_paths_agree": "the explicit and fused paths give the same output, every variant, with and without GroupNorm",
    "groupnorm_head_rms": "with GroupNorm each head's output has RMS (1 - lambda_init)",
    "shared_base_with_zero_b": "the shared variant with B = 0 outputs (1 - lambda) times the base head",
    "step0_of_paper_init": "the paper's init changes the model at step 0 (the negative term is random)",
    "preserve_init_equals_base": "init=preserve gives the base model's logits at step 0, then learns",
    "gradient_liveness_difflora": "every adapter and lambda gets a gradient",
    "negative_term_with_zero_b": "a negative term with B = 0 never learns (the reason B starts random)",
    "kv_cache_generation": "generation with the cache equals generation without it",
    "difflora_merge_keeps": "merging the positive LoRA into W_Q, W_K keeps the output",
    "attention_maps_rows": "with keep_maps, self.maps holds A1 and lambda A2 (rows of A1 sum to 1)",
    "bf16_autocast": "under bf16 autocast the output stays close to fp32",
}


def test_your_layer_computes_the_equations():
    layer, _, x = graded_layer(DiffAttention, llama=False)
    with torch.no_grad():
        assert_close_or_explain(layer(x), diff_layer(layer, x), layer_mistakes(layer, x), atol=1e-5,
                                rule="out = ((A1 - lambda A2) V) W_O, A1 = softmax(Q1 K1^T / sqrt(d)) with Q1, K1 "
                                     "pretrained + LoRA, A2 = softmax(Q2 K2^T / sqrt(d)) with Q2, K2 LoRA only")


def test_your_cache_gives_the_uncached_output():
    layer, _, x = graded_layer(DiffAttention, llama=False)
    cache = {}
    with torch.no_grad():
        first = layer(x[:, :5], cache)
        lesson = cache_shapes_lesson(cache, 2, 5, layer.n_kv_head, layer.head_dim)
        assert lesson is None, lesson
        last = layer(x[:, 5:], cache)  # one new token: its query attends to the 5 cached keys and its own
        full = layer(x)
    torch.testing.assert_close(last, full[:, 5:], atol=1e-5, rtol=0, msg=lambda m: (
        "with a cache, the new token's output differs from the uncached pass: the cache must hold k1, k2 and v of the "
        "earlier positions and the new query row may see every cached key and its own (the mask of exercise 1)\n" + m))


def test_project_layer_tests_pass_with_your_layer():
    run_project_tests_with("ex7_layer", 7, ["test_difflora.py"], LAYER_TESTS)
