"""Exercise 7: the project's own DiffLoRA layer tests (tests/test_difflora.py), run with your
layer in place of the project's: against the naive equations, fused vs explicit for every
variant with and without GroupNorm, the GroupNorm RMS, the shared base's (1 - lambda), the
preserving init, gradient liveness, the dead B = 0 negative term, the KV cache, merging,
attention maps and bf16 autocast."""

from swap_layer import run_project_tests_with

LAYER_TESTS = ["layer_matches_naive_equations", "fused_and_explicit_paths_agree", "groupnorm_head_rms",
               "shared_base_with_zero_b", "step0_of_paper_init", "preserve_init_equals_base", "gradient_liveness_difflora",
               "negative_term_with_zero_b", "kv_cache_generation", "difflora_merge_keeps", "attention_maps_rows",
               "bf16_autocast"]


def test_project_layer_tests_pass_with_your_layer():
    run_project_tests_with("ex7_layer", 7, ["test_difflora.py"], LAYER_TESTS)
