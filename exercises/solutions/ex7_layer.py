"""Exercise 7, a solution, from the solutions of exercises 3-6."""

from difflora import DiffLoRAAttention
from ex3_diff_attention import causal_attention_map, diff_attention_explicit
from ex4_lambda import lam
from ex5_fused import diff_attention_fused
from ex6_groupnorm import head_groupnorm
from model import cache_extend


class DiffAttention(DiffLoRAAttention):

    def forward(self, x, cache=None, rope=None):  # a GPT-2 layer: rope is None
        B, T, C = x.size()
        H, hd = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        adapted = lambda lora: lora is not None and not self.merged
        q1 = q + self.lora_q1(x) if adapted(self.lora_q1) else q
        k1 = k + self.lora_k1(x) if adapted(self.lora_k1) else k
        q2, k2 = self.lora_q2(x), self.lora_k2(x)
        if self.variant == "shared":
            q2, k2 = q + q2, k + k2
        if adapted(self.lora_v):
            v = v + self.lora_v(x)
        q1, k1, q2, k2, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q1, k1, q2, k2, v))  # (B, H, T, hd)
        k1, k2, v = cache_extend(cache, k1=k1, k2=k2, v=v)
        lmb = lam(self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2, self.lambda_init) \
            if self.learn_lambda else self.lambda_fixed
        if self.explicit:
            y = diff_attention_explicit(q1, k1, q2, k2, v, lmb)
            if self.keep_maps:
                self.maps = (causal_attention_map(q1, k1).detach(), (lmb * causal_attention_map(q2, k2)).detach())
        else:
            y = diff_attention_fused(q1, k1, q2, k2, v, lmb)
        if self.gn_gain is not None:
            y = head_groupnorm(y, self.gn_gain, self.lambda_init)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        out = self.c_proj(y)
        if adapted(self.lora_o):
            out = out + self.lora_o(y)
        return self.resid_dropout(out)
