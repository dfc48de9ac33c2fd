"""Exercise 7: a whole differential attention layer from your exercises 3-6.
Handout: exercises/handouts/ex7_layer.md. Grader: python -m pytest exercises/tests/test_ex7_layer.py
(it swaps this class into difflora.py and runs the project's own DiffLoRA layer tests on it)."""

import torch

from difflora import DiffLoRAAttention
from ex3_diff_attention import causal_attention_map, diff_attention_explicit
from ex4_lambda import lam
from ex5_fused import diff_attention_fused
from ex6_groupnorm import head_groupnorm
from model import cache_extend


class DiffAttention(DiffLoRAAttention):
    """The project's DiffLoRA layer with its forward written by you. The parameters are inherited
    (read DiffLoRAAttention.__init__): self.c_attn (W_Q, W_K, W_V fused, frozen), self.c_proj (W_O),
    the adapters self.lora_q1, lora_k1 (None in the "negative" variant), lora_q2, lora_k2, lora_v,
    lora_o (None unless configured; call one as self.lora_q2(x)), the lambda vectors
    self.lambda_q1 .. lambda_k2 and self.lambda_init (or self.lambda_fixed when lambda is not
    learned), self.gn_gain (None without GroupNorm), and the flags self.variant, self.merged,
    self.explicit, self.keep_maps."""

    def forward(self, x, cache=None, rope=None):
        """x (B, T, C) -> (B, T, C) on a GPT-2 layer (rope, Llama's position rotation, stays None). In order:
        1. q, k, v from c_attn; Q1 = q + LoRA_q1(x), K1 likewise (unless merged: then the LoRA is
           already inside c_attn, or the variant has no positive LoRA); Q2 = LoRA_q2(x), K2 likewise,
           plus q and k in the "shared" variant; V gets lora_v when there is one (and not merged).
        2. split into heads (B, H, T, hd); extend the cache with k1, k2, v (model.cache_extend).
        3. lambda (your exercise 4, or self.lambda_fixed).
        4. differential attention: your exercise 3 on the explicit path (and when self.keep_maps,
           store self.maps = (A1, lambda * A2), detached), else your exercise 5.
        5. GroupNorm (your exercise 6) when self.gn_gain is not None.
        6. merge the heads, c_proj, plus lora_o of the merged heads when there is one (and not
           merged), then self.resid_dropout. Attention dropout: ignore it (the tests use 0)."""
        raise NotImplementedError("exercise 7: DiffAttention.forward")
