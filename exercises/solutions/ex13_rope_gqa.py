"""Exercise 13, a solution: exercise 7's layer with RoPE and grouped-query keys."""

import torch

from difflora import DiffLoRAAttention
from ex3_diff_attention import causal_attention_map, diff_attention_explicit
from ex4_lambda import lam
from ex5_fused import diff_attention_fused
from ex6_groupnorm import head_groupnorm
from model import cache_extend


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, d/2) each: the pairs are (x1_i, x2_i)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


def repeat_heads(t, n_head):
    return t.repeat_interleave(n_head // t.size(1), dim=1)


class DiffAttention(DiffLoRAAttention):

    def forward(self, x, cache=None, rope=None):
        B, T, C = x.size()
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split(self.sizes, dim=2)  # (B, T, H*hd), (B, T, Hkv*hd) twice
        adapted = lambda lora: lora is not None and not self.merged
        q1 = q + self.lora_q1(x) if adapted(self.lora_q1) else q
        k1 = k + self.lora_k1(x) if adapted(self.lora_k1) else k
        q2, k2 = self.lora_q2(x), self.lora_k2(x)
        if self.variant == "shared":
            q2, k2 = q + q2, k + k2
        if adapted(self.lora_v):
            v = v + self.lora_v(x)
        q1, q2 = (t.view(B, T, H, hd).transpose(1, 2) for t in (q1, q2))  # (B, H, T, hd)
        k1, k2, v = (t.view(B, T, Hkv, hd).transpose(1, 2) for t in (k1, k2, v))  # (B, Hkv, T, hd)
        if rope is not None:
            q1, k1, q2, k2 = (rotate(t, *rope) for t in (q1, k1, q2, k2))
        k1, k2, v = cache_extend(cache, k1=k1, k2=k2, v=v)  # (B, Hkv, Tk, hd)
        k1, k2, v = (repeat_heads(t, H) for t in (k1, k2, v))  # (B, H, Tk, hd)
        lmb = lam(self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2, self.lambda_init) \
            if self.learn_lambda else self.lambda_fixed
        if self.explicit:
            y = diff_attention_explicit(q1, k1, q2, k2, v, lmb)
            if self.keep_maps:
                a1, a2 = causal_attention_map(q1, k1), causal_attention_map(q2, k2)
                self.maps = (a1[:, :, self.keep_maps].detach(), (lmb * a2[:, :, self.keep_maps]).detach())
        else:
            y = diff_attention_fused(q1, k1, q2, k2, v, lmb)
        if self.gn_gain is not None:
            y = head_groupnorm(y, self.gn_gain, self.lambda_init)
        y = y.transpose(1, 2).contiguous().view(B, T, H * hd)
        out = self.c_proj(y)
        if adapted(self.lora_o):
            out = out + self.lora_o(y)
        return self.resid_dropout(out)
