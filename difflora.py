"""
DiffLoRA: differential low-rank adapters (Misrahi et al. 2025, arXiv 2507.23588) on a
pretrained GPT-2, and the plain LoRA baseline it is compared against.

Differential attention (Ye et al. 2024, arXiv 2410.05258) gives every head TWO attention
maps over the same values and subtracts one from the other, so that attention both maps
put on irrelevant tokens ("noise") cancels:

    A1 = softmax(Q1 K1^T / sqrt(d) + mask)     positive map
    A2 = softmax(Q2 K2^T / sqrt(d) + mask)     negative map      (d = head_dim)
    DiffAttn(x) = (A1 - lambda A2) V

DiffLoRA makes a pretrained attention layer differential without touching its weights.
Every pretrained matrix stays frozen; only low-rank adapters (and lambda) are trained:

                  x (B, T, C)
      ┌───────────────┼────────────────────────┐
      │               │                        │
    Q1 = x W_Q + s B_q1 A_q1 x    Q2 = s B_q2 A_q2 x        V = x W_V
    K1 = x W_K + s B_k1 A_k1 x    K2 = s B_k2 A_k2 x        (frozen, one V for both maps)
      │  positive term                │  negative term
    A1 = softmax(Q1 K1^T / sqrt(d))   A2 = softmax(Q2 K2^T / sqrt(d))
      └────────────── (A1 - lambda A2) V ───────────┘
                           │
         [optional: (1 - lambda_init) * RMSNorm per head]
                           │
                     W_O (frozen)

    s = alpha / r,  A: C -> r,  B: r -> C   (nn.Linear layout: delta W = s * B.weight @ A.weight)

lambda is one scalar per layer, learned through the reparameterisation
    lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,   lq1, lk1, lq2, lk2 ~ N(0, 0.1^2)
    lambda_init(depth) = 0.8 - 0.6 exp(-0.3 depth)           (depth counted from 0)
lambda_init sets where lambda starts (0.2 in the first layer, ~0.78 in the twelfth): deeper
layers subtract more. The exp form keeps the learned part smooth and lets it cross zero.

Why the negative term starts with a random B. In LoRA, B = 0 makes the adapter start as a
no-op while A still gets a gradient through B. In the negative term there is no pretrained
part: with B = 0, Q2 = K2 = 0, and the gradient of each one is proportional to the other, so
both stay 0 forever (A2 is uniform and never learns). The paper therefore initialises both
A and B of the negative term with kaiming-uniform (B ~ U(+-1/sqrt(r))).

Why GroupNorm is off by default. The Differential Transformer normalises each head's output
(RMSNorm, then times 1 - lambda_init). In a pretrained model this rescales every head to a
fixed RMS that has nothing to do with what the frozen W_O expects: the paper's fine-tuned
Llama collapsed with it (benchmark average 0.15 against 0.42 without).

What each variant computes at step 0 (before any update):
  both terms (default, the paper's DiffLoRA-32): o_pre - lambda A2 V with a random A2: NOT
      the pretrained model; the first steps repair that.
  negative term only (the paper's "right only" DiffLoRA-64; no LoRA on Q1/K1): same as above.
  shared base (the official code's default: Q2 = x W_Q + LoRA with B = 0): Q2 = Q1, so each
      head outputs (1 - lambda) o_pre: the pretrained model only if lambda = 0.
  any variant with GroupNorm: every head rescaled to RMS (1 - lambda_init): far from it.
  init="preserve" (this project's addition): lambda_init = 0 and lq2 = lq1, lk2 = lk1, so
      the exp terms cancel and lambda is exactly 0; with GroupNorm off the logits equal the
      base model's. lambda still gets a gradient at step 1 and through it the negative term
      starts learning.

Two ways to compute it, with the same parameters. The fused path uses
(A1 - lambda A2) V = A1 V - lambda (A2 V): two scaled_dot_product_attention calls, one per map,
no T x T matrix, so memory grows linearly in T. The explicit path materialises A1 and A2
(softmax in fp32) and can keep them for analysis (attention_maps); it too computes
A1 V - lambda (A2 V), so backward keeps the two maps and no third one.

What it costs. Over LoRA on Q, K at rank 2r (the same parameter count), the arithmetic adds one
attention map per head. The adapters that read the same x (Q1, K1, Q2, K2 and V's) run as one
batched computation (lora_deltas): two batched matmuls with the scales folded into B, and
their dropout masks drawn together. Each adapter keeps its own mask, as in the paper, so four
adapters draw twice the masks of LoRA's two: the one cost beyond the extra map.
"""

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F

from model import (ALIASES, GPT, apply_rope, cache_extend, causal_attention, causal_mask, checkpoint_path, file_sha256,
                   repeat_kv, save_atomically)

VARIANTS = ("both", "negative", "shared")
# the linear maps of a block that the LoRA baseline can adapt, by family; "all" names every one
GPT2_TARGETS = ("q", "k", "v", "attn_out", "mlp_in", "mlp_out")  # q, k, v are thirds of the fused c_attn
LLAMA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # gate and up are halves of the fused c_fc
LORA_TARGETS = tuple(dict.fromkeys(GPT2_TARGETS + LLAMA_TARGETS + ("all",)))


@dataclass
class DiffLoRAConfig:
    r: int = 16                 # rank of every adapter (the paper's "right only" run doubles it to match the budget)
    alpha: float = 32.0         # scale s = alpha / r
    dropout: float = 0.1        # on x before each A, an independent mask per adapter (the paper's 0.1)
    variant: str = "both"       # both | negative | shared (see the module docstring)
    learn_lambda: bool = True   # False: lambda is fixed at lambda_init (the paper found 0.1 more stable)
    lambda_init: float | None = None  # None: the depth schedule; a number: that constant for every layer
    groupnorm: bool = False     # per-head RMSNorm times (1 - lambda_init); off, as in the paper's main runs
    lora_v: bool = False        # also LoRA on V (reads x)
    lora_o: bool = False        # also LoRA on the output projection (reads the attention output)
    init: str = "paper"         # paper | preserve (step 0 equals the base model exactly)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.init not in ("paper", "preserve"):
            raise ValueError(f"init must be 'paper' or 'preserve', got {self.init!r}")
        if self.r < 1:
            raise ValueError(f"rank r must be >= 1, got {self.r}")
        if self.lambda_init is not None and not isinstance(self.lambda_init, (int, float)):
            raise ValueError(f"lambda_init must be None (the depth schedule) or a number, got {self.lambda_init!r}")
        if self.init == "preserve" and (self.groupnorm or not self.learn_lambda or self.lambda_init not in (None, 0)):
            raise ValueError("init='preserve' starts from lambda = 0 and needs learn_lambda=True, groupnorm=False "
                             "and lambda_init None or 0 (a fixed lambda of 0 would never train the negative term)")


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple = ("all",)  # GPT-2: q, k, v, attn_out, mlp_in, mlp_out; Llama: q, k, v, o, gate, up, down; or all

    def __post_init__(self):
        self.targets = tuple(self.targets)
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of {LORA_TARGETS}, got {self.targets}")
        if self.r < 1:
            raise ValueError(f"rank r must be >= 1, got {self.r}")


def lambda_init_schedule(depth):
    """lambda_init(depth) = 0.8 - 0.6 exp(-0.3 depth), depth counted from 0."""
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


class LoRA(nn.Module):
    """delta(x) = s * B(A(dropout(x))), s = alpha / r. A (r, in) is kaiming-uniform, i.e.
    U(+-1/sqrt(in)); B (out, r) is zero, or kaiming U(+-1/sqrt(r)) with random_b (the
    negative term). The weight delta in nn.Linear layout is s * B.weight @ A.weight (out, in).
    Adapters that read the same x run together through lora_deltas."""

    def __init__(self, in_features, out_features, r, alpha, dropout=0.0, random_b=False, like=None):
        super().__init__()
        kw = dict(device=like.device, dtype=like.dtype) if like is not None else {}
        self.A = nn.Linear(in_features, r, bias=False, **kw)
        self.B = nn.Linear(r, out_features, bias=False, **kw)
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        if random_b:
            nn.init.kaiming_uniform_(self.B.weight, a=math.sqrt(5))
        else:
            nn.init.zeros_(self.B.weight)
        self.scale = alpha / r
        self.p = dropout

    def forward(self, x):
        return lora_deltas(x, [self]).squeeze(0)  # (..., in) -> (..., out)

    def delta_weight(self):
        return self.scale * self.B.weight @ self.A.weight  # (out, in)


def dropout_keep(n, x, p):
    """n independent dropout masks for x: (keep (n, *x.shape) bool, scale), where each element is
    kept with probability 1 - p and then multiplied by scale = 1 / (1 - p). PyTorch's CPU
    generator is sequential and spends 32 bits on every element, so bernoulli_ cost more than the
    adapters' matmuls; here each 64-bit draw gives four elements 16 random bits each. p is
    rounded to a multiple of 2^-16 (0.1 becomes 0.100006) and scale uses the rounded value, so a
    kept-and-scaled element keeps its expected value exactly."""
    numel = n * x.numel()
    bits = torch.randint(-2**63, 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64, device=x.device)
    drop = round(p * 2**16)  # the lowest `drop` of the 2^16 values of an int16 drop the element
    keep = bits.view(torch.int16)[:numel] >= drop - 2**15
    return keep.view(n, *x.shape), 2**16 / (2**16 - drop)


def adapter_deltas(x, loras):
    """{adapter: its delta} for adapters that all read x: lora_deltas once per output width (with
    grouped-query attention the K and V adapters are narrower than the Q ones)."""
    out = {}
    for width in dict.fromkeys(lora.B.out_features for lora in loras):
        group = [lora for lora in loras if lora.B.out_features == width]
        out.update(zip(group, lora_deltas(x, group).unbind(0)))
    return out


def lora_deltas(x, loras):
    """[s_i B_i(A_i(dropout_i(x)))] for adapters that all read x (B, T, in), stacked (n, B, T, out),
    each with its own dropout mask (in training). Computed as two batched matmuls, with the
    scales folded into the small A_i and B_i, instead of 2n thin matmuls and 2n scale multiplies."""
    n, p = len(loras), loras[0].p
    A = torch.stack([lora.A.weight for lora in loras])  # (n, r, in)
    B = torch.stack([lora.scale * lora.B.weight for lora in loras])  # (n, out, r)
    x2 = x.reshape(-1, x.size(-1))  # (N, in), N = B*T
    if p > 0 and loras[0].training:
        keep, scale = dropout_keep(n, x2, p)  # the dropout's 1 / (1 - p) goes into the small A, not the (n, N, in) input
        u = torch.bmm(torch.where(keep, x2, 0.0), scale * A.transpose(1, 2))  # (n, N, r)
    else:  # no dropout: one matmul against all the A's side by side
        u = (x2 @ A.view(-1, A.size(-1)).t()).view(-1, n, A.size(1)).transpose(0, 1)  # (n, N, r)
    return torch.bmm(u, B.transpose(1, 2)).view(n, *x.shape[:-1], B.size(1))  # (n, B, T, out)


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus LoRA on some parts of its output, of the widths `sizes` (default:
    equal). The fused c_attn holds q, k, v (k and v narrower with grouped-query attention) and a
    SwiGLU c_fc holds gate, up: parts let LoRA touch some of them only."""

    def __init__(self, base, parts, config, sizes=None):
        super().__init__()
        self.base, self.parts = base, parts
        self.sizes = list(sizes or [base.out_features // len(parts)] * len(parts))
        self.lora = nn.ModuleDict({p: LoRA(base.in_features, n, config.r, config.alpha, config.dropout, like=base.weight)
                                   for p, n in zip(parts, self.sizes) if p in config.targets})
        self.merged = False

    def forward(self, x):
        y = self.base(x)  # (B, T, out)
        if self.merged:
            return y
        ys = list(y.split(self.sizes, dim=-1))
        deltas = adapter_deltas(x, list(self.lora.values()))  # every adapter of this map in one go
        for p, lora in self.lora.items():
            i = self.parts.index(p)
            ys[i] = ys[i] + deltas[lora]
        # one cat: measured faster, forward and backward, than adding in place into slices of y
        # (autograd then clones the whole gradient of y once per in-place add)
        return torch.cat(ys, dim=-1) if len(ys) > 1 else ys[0]

    def fold(self, sign):
        """Add (sign=+1, merge) or subtract (-1, unmerge) every adapter's delta into the base weight."""
        with torch.no_grad():
            for p, rows in zip(self.parts, self.base.weight.split(self.sizes)):  # views into the weight
                if p in self.lora:
                    rows += sign * self.lora[p].delta_weight()
        self.merged = sign > 0


def causal_softmax(q, k):
    """The attention map softmax(q k^T / sqrt(d) + causal mask) in fp32, (B, H, Tq, Tk); the Tq
    query rows are the last Tq of the Tk positions (the earlier keys come from a KV cache); k
    may have fewer heads (grouped-query attention)."""
    scores = (q @ repeat_kv(k, q.size(1)).transpose(-2, -1)).float().div(math.sqrt(q.size(-1)))  # (B, H, Tq, Tk)
    if q.size(-2) > 1:  # one query row (a decode step) sees every key: no mask to build
        scores = scores.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))
    return scores.softmax(-1)


def reparam_lambda(lq1, lk1, lq2, lk2, lambda_init):
    """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, a 0-dim tensor."""
    return torch.exp(lq1 @ lk1) - torch.exp(lq2 @ lk2) + lambda_init


def fused_differential_attention(q1, k1, q2, k2, v, lam, dropout_p=0.0):
    """(A1 - lambda A2) V = A1 V - lambda (A2 V) for q (B, H, Tq, d), k and v (B, Hkv, Tk, d): two
    fused attention calls, one per map, and no T x T matrix. -> (B, H, Tq, d)"""
    y1, y2 = causal_attention(q1, k1, v, dropout_p), causal_attention(q2, k2, v, dropout_p)  # A1 V, A2 V
    return torch.addcmul(y1, y2, lam, value=-1)  # y1 - lam * y2 in one pass


def explicit_differential_attention(q1, k1, q2, k2, v, lam, dropout_p=0.0):
    """The same with both maps materialised, softmax in fp32: (y (B, H, Tq, d), A1, A2), the maps
    (B, H, Tq, Tk) before dropout. Computed as A1 V - lambda (A2 V), not (A1 - lambda A2) V:
    backward then keeps A1 and A2 only, not a third T x T map."""
    a1, a2 = causal_softmax(q1, k1), causal_softmax(q2, k2)  # (B, H, Tq, Tk) each
    d1, d2 = F.dropout(a1, dropout_p), F.dropout(a2, dropout_p)  # independent masks, as in the fused calls
    v = repeat_kv(v, q1.size(1)).float()
    return torch.addcmul(d1 @ v, d2 @ v, lam, value=-1).to(q1.dtype), a1, a2


def head_norm(y, gain, lambda_init, eps=1e-5):
    """GroupNorm of differential attention: each head's output y (B, H, T, d) RMS-normalised over
    d on its own (in fp32), times the shared gain (d,), times the constant (1 - lambda_init)."""
    return (1 - lambda_init) * F.rms_norm(y.float(), (y.size(-1),), gain.float(), eps=eps).to(y.dtype)


class DiffLoRAAttention(nn.Module):
    """Replaces a pretrained CausalSelfAttention (model.py) in place; shares its frozen c_attn
    (W_Q, W_K, W_V fused) and c_proj (W_O). Same heads and head_dim. On a Llama-family layer,
    RoPE rotates Q2, K2 exactly as Q1, K1 (the same angles at the same positions), and with
    grouped-query attention K2 has the key/value heads, each serving its group of query heads
    in both maps, as K1 does: the K adapters map r to n_kv_head * head_dim."""
    n_maps = 2

    def __init__(self, attn, depth, config):
        super().__init__()
        self.c_attn, self.c_proj, self.resid_dropout = attn.c_attn, attn.c_proj, attn.resid_dropout
        self.n_head, self.n_kv_head, self.head_dim, self.sizes = attn.n_head, attn.n_kv_head, attn.head_dim, attn.sizes
        self.dropout, self.variant = attn.dropout, config.variant
        C, (Cq, Ckv, _) = self.c_attn.in_features, self.sizes
        lora = lambda n_in, n_out, random_b=False: LoRA(n_in, n_out, config.r, config.alpha, config.dropout, random_b,
                                                        like=self.c_attn.weight)
        kw = dict(device=self.c_attn.weight.device, dtype=self.c_attn.weight.dtype)
        positive = config.variant != "negative"  # positive term: pretrained + LoRA (B = 0)
        self.lora_q1, self.lora_k1 = (lora(C, Cq), lora(C, Ckv)) if positive else (None, None)
        # negative term: LoRA only, so both A and B random (see the docstring); shared base: B = 0
        random_b = config.variant != "shared"
        self.lora_q2, self.lora_k2 = lora(C, Cq, random_b), lora(C, Ckv, random_b)
        self.lora_v = lora(C, Ckv) if config.lora_v else None
        self.lora_o = lora(Cq, C) if config.lora_o else None  # reads the attention output
        self.lambda_init = 0.0 if config.init == "preserve" else (
            lambda_init_schedule(depth) if config.lambda_init is None else float(config.lambda_init))
        self.learn_lambda = config.learn_lambda
        hd = self.head_dim
        if not config.learn_lambda:  # on the model's device like a weight, but not saved (the config holds it)
            self.register_buffer("lambda_fixed", torch.tensor(self.lambda_init, **kw), persistent=False)
        else:
            self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
                nn.Parameter(0.1 * torch.randn(hd, **kw)) for _ in range(4))
            if config.init == "preserve":  # exp(lq1.lk1) - exp(lq2.lk2) is then exactly 0
                self.lambda_q2.data.copy_(self.lambda_q1.data)
                self.lambda_k2.data.copy_(self.lambda_k1.data)
        self.gn_gain = nn.Parameter(torch.ones(hd, **kw)) if config.groupnorm else None
        self.explicit = False   # True: materialise A1, A2 (analysis, tests); False: fused kernels
        self.keep_maps = None  # with explicit: a slice of query rows whose (A1, lambda A2) the last call keeps in self.maps
        self.maps = None
        self.merged = False

    def lam(self):
        """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init (a 0-dim tensor), or the fixed value."""
        if not self.learn_lambda:
            return self.lambda_fixed
        return reparam_lambda(self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2, self.lambda_init)

    def forward(self, x, cache=None, rope=None):
        B, T, C = x.size()
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split(self.sizes, dim=2)  # pretrained (positive LoRA folded in when merged)
        positive = self.lora_q1 is not None and not self.merged
        lora_v = self.lora_v is not None and not self.merged
        adapters = [self.lora_q2, self.lora_k2] + [self.lora_q1, self.lora_k1] * positive + [self.lora_v] * lora_v
        d = adapter_deltas(x, adapters)  # every adapter that reads x, batched
        q1, k1 = (q + d[self.lora_q1], k + d[self.lora_k1]) if positive else (q, k)  # positive term: pretrained + LoRA
        q2, k2 = d[self.lora_q2], d[self.lora_k2]  # negative term: LoRA only
        if self.variant == "shared":
            q2, k2 = q + q2, k + k2
        if lora_v:
            v = v + d[self.lora_v]
        q1, q2 = (t.view(B, T, H, hd).transpose(1, 2) for t in (q1, q2))  # (B, H, T, hd)
        k1, k2, v = (t.view(B, T, Hkv, hd).transpose(1, 2) for t in (k1, k2, v))  # (B, Hkv, T, hd)
        if rope is not None:  # both maps see positions alike
            q1, k1, q2, k2 = (apply_rope(t, *rope) for t in (q1, k1, q2, k2))
        k1, k2, v = cache_extend(cache, k1=k1, k2=k2, v=v)  # (B, Hkv, Tk, hd)
        lam = self.lam()
        p = self.dropout if self.training else 0.0
        if self.explicit:  # the maps materialised, to look at them
            y, a1, a2 = explicit_differential_attention(q1, k1, q2, k2, v, lam, p)
            if self.keep_maps:
                self.maps = (a1[:, :, self.keep_maps].detach(), (lam * a2[:, :, self.keep_maps]).detach())
        else:
            y = fused_differential_attention(q1, k1, q2, k2, v, lam, p)  # (B, H, T, hd)
        if self.gn_gain is not None:
            y = head_norm(y, self.gn_gain, self.lambda_init)
        y = y.transpose(1, 2).contiguous().view(B, T, H * hd)
        out = self.c_proj(y)
        if self.lora_o is not None and not self.merged:
            out = out + self.lora_o(y)
        return self.resid_dropout(out)

    def fold(self, sign):
        """Merge (+1) the positive-term LoRA (and those on V and W_O) into the frozen weights, or
        take it back out (-1). The negative term has no pretrained matrix to fold into: it stays."""
        if self.variant == "shared":
            raise ValueError("the shared-base variant cannot be merged: its negative term reads the same W_Q, W_K, "
                             "so folding the positive LoRA into them would change the negative term too")
        with torch.no_grad():
            for rows, lora in zip(self.c_attn.weight.split(self.sizes), (self.lora_q1, self.lora_k1, self.lora_v)):
                if lora is not None:
                    rows += sign * lora.delta_weight()
            if self.lora_o is not None:
                self.c_proj.weight += sign * self.lora_o.delta_weight()
        self.merged = sign > 0


# ----------------------------------------------------------------------------- converting a model

def _check_unadapted(model):
    if model.adapter is not None:
        raise ValueError(f"this model already has a {model.adapter[0]} adapter; load a fresh base model")


def apply_difflora(model, config):
    """Turn every attention layer of a loaded GPT into a DiffLoRA one, in place; freeze all
    but the adapters, the lambda vectors and the GroupNorm gains."""
    _check_unadapted(model)
    model.requires_grad_(False)
    for depth, block in enumerate(model.transformer.h):
        block.attn = DiffLoRAAttention(block.attn, depth, config)
    model.adapter = ("difflora", config)
    return model


def apply_lora(model, config):
    """Put LoRA on the chosen linear maps of every block, in place; freeze all but the adapters.
    The maps' names are the family's: GPT-2's q, k, v, attn_out, mlp_in, mlp_out, Llama's q, k,
    v, o, gate, up, down ("all": every one)."""
    _check_unadapted(model)
    llama = model.config.family == "llama"
    names = LLAMA_TARGETS if llama else GPT2_TARGETS
    t = set(names) if "all" in config.targets else set(config.targets)
    if not t <= set(names):
        raise ValueError(f"LoRA targets {sorted(t - set(names))} are not maps of this {'Llama' if llama else 'GPT-2'} model; "
                         f"its maps are {', '.join(names)} (or all)")
    model.requires_grad_(False)
    out, mlp_in, mlp_out = (("o",), ("gate", "up"), ("down",)) if llama else (("attn_out",), ("mlp_in",), ("mlp_out",))
    lora = lambda linear, parts, sizes=None: LoRALinear(linear, parts, replace(config, targets=tuple(t)), sizes)
    for block in model.transformer.h:
        if t & {"q", "k", "v"}:
            block.attn.c_attn = lora(block.attn.c_attn, ("q", "k", "v"), block.attn.sizes)
        if t & set(out):
            block.attn.c_proj = lora(block.attn.c_proj, out)
        if t & set(mlp_in):
            block.mlp.c_fc = lora(block.mlp.c_fc, mlp_in)
        if t & set(mlp_out):
            block.mlp.c_proj = lora(block.mlp.c_proj, mlp_out)
    model.adapter = ("lora", config)
    return model


def _kind(name):
    """What a parameter is, from its name: 'LoRA q1', 'LoRA mlp_in', 'lambda', 'GroupNorm gain', 'base model'."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("lora_"):
            return "LoRA " + part[5:]
        if part == "lora":
            return "LoRA " + parts[i + 1]
    if parts[-1].startswith("lambda_"):
        return "lambda"
    return "GroupNorm gain" if parts[-1] == "gn_gain" else "base model"


def param_counts(model):
    """{kind: (trainable, frozen)} parameter counts; the tied lm_head is counted once."""
    counts = {}
    for name, p in model.named_parameters():
        t, f = counts.get(_kind(name), (0, 0))
        counts[_kind(name)] = (t + p.numel(), f) if p.requires_grad else (t, f + p.numel())
    return counts


def param_report(model):
    """A small table of param_counts, for printing."""
    counts = param_counts(model)
    rows = [f"{'kind':<16}{'trainable':>14}{'frozen':>14}"]
    rows += [f"{k:<16}{t:>14,}{f:>14,}" for k, (t, f) in counts.items()]
    total_t, total_f = (sum(c[i] for c in counts.values()) for i in (0, 1))
    rows.append(f"{'total':<16}{total_t:>14,}{total_f:>14,}  ({100 * total_t / (total_t + total_f):.3f}% trainable)")
    return "\n".join(rows)


def _adapted_modules(model):
    return [m for m in model.modules() if isinstance(m, (LoRALinear, DiffLoRAAttention))]


def merge(model):
    """Fold the adapters into the frozen weights (LoRA: all; DiffLoRA: the positive term, V, W_O)."""
    for m in _adapted_modules(model):
        if not m.merged:
            m.fold(+1)


def unmerge(model):
    for m in _adapted_modules(model):
        if m.merged:
            m.fold(-1)


def merged_model(model):
    """The plain transformer of a LoRA model, in place: every adapter folded into its weight and the
    LoRA wrappers replaced by those weights, so that save_pretrained writes a checkpoint that any
    Hugging Face tool loads (for benchmarks such as OLMES). A DiffLoRA model has no such form: its
    negative map is a second attention that no plain checkpoint has."""
    if model.adapter is None or model.adapter[0] != "lora":
        raise ValueError("only a LoRA model merges into a plain checkpoint; DiffLoRA's negative map has no place in one "
                         "(save its adapter with save_adapter)" if model.adapter else "this model has no adapter to merge")
    merge(model)
    for block in model.transformer.h:
        for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")):
            if isinstance(getattr(parent, name), LoRALinear):
                setattr(parent, name, getattr(parent, name).base)
    model.adapter = None
    return model


def set_attention_path(model, explicit):
    """Choose the fused (False) or explicit (True) differential attention in every layer."""
    for m in model.modules():
        if isinstance(m, DiffLoRAAttention):
            m.explicit = explicit


@torch.no_grad()
def attention_maps(model, idx, rows=None):
    """Run idx (B, T) and return, per layer, (A1, lambda*A2, lambda) with the maps (B, H, T, T) in
    fp32: DiffLoRA layers through the explicit path (the differential map is A1 - lambda*A2);
    plain layers (base or LoRA) give (A, None, 0.0), recomputed from their q and k (rotated by
    RoPE on a Llama-family model). rows (a slice of query positions, e.g. slice(-1, None) for
    the last token's row) keeps only those rows, (B, H, rows, T): at T = 4096 the whole maps of a
    30-layer model would take gigabytes."""
    rows = slice(None) if rows is None else rows
    plain, hooks = {}, []
    layers = [block.attn for block in model.transformer.h]
    for i, attn in enumerate(layers):
        if isinstance(attn, DiffLoRAAttention):
            attn.explicit, attn.keep_maps = True, rows
        else:
            def hook(m, args, output, i=i):  # args: the layer's (x, cache, rope)
                x, rope = args[0], args[2]
                B, T, _ = x.size()
                q, k, _ = m.c_attn(x).split(m.sizes, dim=2)
                q = q.view(B, T, m.n_head, m.head_dim).transpose(1, 2)  # (B, H, T, hd)
                k = k.view(B, T, m.n_kv_head, m.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
                if rope is not None:
                    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
                if rows.stop is None and rows.step is None:  # the last rows: only their queries (causal_softmax aligns them at the end)
                    plain[i] = causal_softmax(q[:, :, rows], k)
                else:
                    plain[i] = causal_softmax(q, k)[:, :, rows]
            hooks.append(attn.register_forward_hook(hook))
    try:
        model(idx)
        return [(a.maps[0], a.maps[1], a.lam().item()) if isinstance(a, DiffLoRAAttention) else (plain[i], None, 0.0)
                for i, a in enumerate(layers)]
    finally:
        for h in hooks:
            h.remove()
        for a in layers:
            if isinstance(a, DiffLoRAAttention):
                a.explicit, a.keep_maps, a.maps = False, None, None


def attention_regions(T, needle=None, query=None):
    """Disjoint boolean masks (T,) over key positions that together cover all T: 'first' (the
    first token, where much attention sinks), 'needle' and 'query' (token ranges [start, end),
    the needle also a list of them), 'rest'. Summing a map's row over each region splits its
    mass the way the paper's analysis does."""
    regions = {"first": torch.zeros(T, dtype=torch.bool)}
    regions["first"][0] = True
    taken = regions["first"].clone()
    for name, spans in (("needle", needle), ("query", query)):
        m = torch.zeros(T, dtype=torch.bool)
        for start, end in [] if spans is None else [spans] if isinstance(spans[0], int) else spans:
            m[start:end] = True
        regions[name] = m & ~taken
        taken |= regions[name]
    regions["rest"] = ~taken
    return regions


def region_mass(a, regions):
    """{region: (..., Tq) attention mass}, for a map a (..., Tq, T) and attention_regions(T)."""
    return {name: a[..., m.to(a.device)].sum(-1) for name, m in regions.items()}


def load_trained(path, base=""):
    """A model to run: a train.py out_dir (adapter.safetensors on its base model, or on `base` if
    given; or a full fine-tune, which is a plain checkpoint), or any name or directory that
    GPT.from_pretrained takes."""
    adapter = os.path.join(path, "adapter.safetensors")
    if os.path.isdir(path) and os.path.exists(adapter):
        recorded = read_adapter(adapter)[2]["name_or_path"]
        try:
            base_model = GPT.from_pretrained(base or recorded)
        except (OSError, ValueError) as e:
            if base:
                raise
            raise type(e)(f"the adapter in {path} was trained on the base model {recorded!r}, which cannot be loaded "
                          f"here ({e}); pass --base=FOLDER_OR_HUB_ID of a base model of the same shape") from e
        return load_adapter(base_model, adapter)
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        raise ValueError(f"no checkpoint in {path!r}: expected adapter.safetensors or model.safetensors there. "
                         f"Train first (python train.py --out_dir={path}) or pass a base model such as gpt2")
    return GPT.from_pretrained(path)


# ----------------------------------------------------------------------------- adapter files

SHAPE_KEYS = ("n_layer", "n_embd", "n_head", "vocab_size", "n_kv_head", "head_dim", "family")  # an adapter fits only these


def base_identity(model):
    """What an adapter file records of its base: where it came from (for a GGUF file, also a hash
    of its content: one name can stand for another file on another machine) and its shape."""
    c = model.config
    ident = dict(name_or_path=str(model.name_or_path), n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head,
                 vocab_size=c.vocab_size, n_kv_head=c.n_kv_head, head_dim=c.head_dim, family=c.family)
    if model.name_or_path in ALIASES or str(model.name_or_path).endswith(".gguf"):
        ident["gguf_sha256"] = file_sha256(checkpoint_path(model.name_or_path))
    return ident


def trainable_state_dict(model):
    """Exactly what was trained: the tensors that require grad (adapters, lambda vectors, gains)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, path):
    """Write the trainable tensors to a safetensors file, with the method, its configuration and
    the base model's identity as metadata. Atomic: a crash mid-write leaves the old file intact."""
    method, config = model.adapter
    from safetensors.torch import save_file
    metadata = {"method": method, "config": json.dumps(asdict(config)), "base": json.dumps(base_identity(model))}
    tensors = {k: v.contiguous().cpu() for k, v in trainable_state_dict(model).items()}
    save_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_adapter(path):
    """(method, config, base identity, tensors) of an adapter file."""
    from safetensors.torch import load_file
    from safetensors import safe_open
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except Exception as e:
        raise ValueError(f"could not read adapter file {path}: truncated or corrupt ({type(e).__name__}: {e})") from e
    if meta.get("method") not in ("difflora", "lora"):
        raise ValueError(f"{path} is not an adapter file of this project (no difflora/lora method in its metadata)")
    cls = DiffLoRAConfig if meta["method"] == "difflora" else LoRAConfig
    return meta["method"], cls(**json.loads(meta["config"])), json.loads(meta["base"]), tensors


def load_adapter(model, path):
    """Load an adapter file onto a base GPT (applying its method and configuration), or onto a
    model already converted with the same method and configuration. Returns the model."""
    method, config, base, tensors = read_adapter(path)
    ours = base_identity(model)
    for key in SHAPE_KEYS:
        if base.get(key, ours[key]) != ours[key]:  # (files of GPT-2 adapters before the Llama family lack some keys)
            raise ValueError(f"adapter {path} was trained on a base model with {key}={base[key]} "
                             f"({base['name_or_path']}), this model has {key}={ours[key]} ({ours['name_or_path']})")
    if base["name_or_path"] != ours["name_or_path"]:
        warnings.warn(f"adapter {path} was trained on {base['name_or_path']}, loading it onto {ours['name_or_path']} (same shape)")
    elif base.get("gguf_sha256", ours.get("gguf_sha256")) != ours.get("gguf_sha256"):
        warnings.warn(f"adapter {path} was trained on another file named {base['name_or_path']} (its content differs; "
                      f"same shape): its results may differ")
    if model.adapter is None:
        (apply_difflora if method == "difflora" else apply_lora)(model, config)
    elif model.adapter[0] != method:
        raise ValueError(f"adapter {path} holds a {method} adapter, but this model has a {model.adapter[0]} adapter")
    elif model.adapter[1] != config:
        raise ValueError(f"adapter {path} was saved with {config}, this model has {model.adapter[1]}")
    load_trainable_state_dict(model, tensors, f"adapter {path}")
    return model


def load_trainable_state_dict(model, tensors, source):
    """Copy tensors into exactly the parameters that require grad (the inverse of
    trainable_state_dict); any missing, extra or misshaped tensor is an error naming source."""
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{source} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    if any(m.merged for m in _adapted_modules(model)):
        raise ValueError("unmerge the model before loading adapter weights into it")
    with torch.no_grad():
        for name, t in tensors.items():
            if t.shape != params[name].shape:
                raise ValueError(f"{source}: tensor {name} has shape {tuple(t.shape)}, the model expects {tuple(params[name].shape)}")
            params[name].copy_(t)
