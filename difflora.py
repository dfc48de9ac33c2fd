"""
DiffLoRA: differential low-rank adapters (Misrahi et al. 2025, arXiv 2507.23588) on a
pretrained transformer of model.py (GPT-2 or the Llama family), and the plain LoRA baseline it
is compared against.

Differential attention (Ye et al. 2024, arXiv 2410.05258) gives every attention head TWO maps
over the same values and subtracts one from the other, so that attention both maps put on
irrelevant tokens ("noise") cancels:

    A1 = softmax(Q1 K1^T / sqrt(d) + mask)     positive map
    A2 = softmax(Q2 K2^T / sqrt(d) + mask)     negative map      (d = head_dim)
    DiffAttn(x) = (A1 - lambda A2) V

DiffLoRA makes a pretrained attention layer differential without touching its weights: every
pretrained matrix stays frozen, only low-rank adapters (and lambda) are trained. Row vectors
throughout, as in the code: x holds one token per row and a map multiplies on the right, x W.

                  x (B, T, C)
      ┌───────────────┼──────────────────────────┐
      │               │                          │
    Q1 = x W_Q + s x A_q1 B_q1    Q2 = s x A_q2 B_q2       V = x W_V
    K1 = x W_K + s x A_k1 B_k1    K2 = s x A_k2 B_k2       (frozen, one V for both maps)
      │  positive term                 │  negative term
    A1 = softmax(Q1 K1^T / sqrt(d))    A2 = softmax(Q2 K2^T / sqrt(d))
      └────────────── (A1 - lambda A2) V ────────────┘
                           │
         [optional: (1 - lambda_init) * RMSNorm per head]
                           │
                     W_O (frozen)

    s = alpha / r,   A: (C, r),   B: (r, C)   so x A B is (T, C), like x W_Q
    (with grouped-query attention K's B is (r, C_kv), like W_K: (C, C_kv)). nn.Linear stores
    the transposes, A = lora.A.weight.T and B = lora.B.weight.T; the weight update s A B is
    s * (lora.B.weight @ lora.A.weight) in nn.Linear's (out, in) layout.

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
  both terms (default, the paper's DiffLoRA-32): o_pre - lambda A2 V with a random A2, where
      o_pre = A1 V is the pretrained head's output: NOT the pretrained model; the first steps
      repair that.
  negative term only (the paper's "right only" DiffLoRA-64; no LoRA on Q1/K1): same as above.
  shared base (the official code's default: Q2 = x W_Q + LoRA with B = 0): Q2 = Q1, so each
      head outputs (1 - lambda) o_pre: the pretrained model only if lambda = 0.
  any variant with GroupNorm: every head rescaled to RMS (1 - lambda_init): far from it.
  init="preserve" (this project's addition): lambda_init = 0 and lq2 = lq1, lk2 = lk1, so
      the exp terms cancel and lambda is exactly 0; with GroupNorm off the logits equal the
      base model's. lambda still gets a gradient at step 1 and through it the negative term
      starts learning.
  lambda_ramp=N (after axolotl's converter): the paper's form with lambda times min(1, step / N),
      so step 0 outputs o_pre exactly and from step N on lambda is the paper's (lambda_init
      0.2-0.8, B random). Adam's normalised update undoes the ramp's scaling of the gradients
      (none at step 0): the ramp makes the forward pass gradual, not the learning.

Two ways to compute it, with the same parameters. The fused path uses
(A1 - lambda A2) V = A1 V - lambda (A2 V): two scaled_dot_product_attention calls, one per map,
no T x T matrix, so memory grows linearly in T. The explicit path materialises A1 and A2
(softmax in fp32) so that they can be looked at (analysis/attention_maps.py); it too computes
A1 V - lambda (A2 V), so backward keeps the two maps and no third one.

What it costs. Over LoRA on Q, K at rank 2r (the same parameter count), the arithmetic adds one
attention map per head. The adapters that read the same x run as one batched computation
(speedups.adapter_deltas), each with its own dropout mask as in the paper: four adapters draw
twice the masks of LoRA's two, the one cost beyond the extra map.
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F

from model import apply_rope, cache_extend, causal_attention, causal_mask, repeat_kv
from speedups import adapter_deltas

VARIANTS = ("both", "negative", "shared")
INITS = ("paper", "preserve")
# the linear maps of a block that the LoRA baseline can adapt, by family; "all" names every one
GPT2_TARGETS = ("q", "k", "v", "attn_out", "mlp_in", "mlp_out")  # q, k, v are thirds of the fused c_attn
LLAMA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # gate and up are halves of the fused c_fc
LORA_TARGETS = tuple(dict.fromkeys(GPT2_TARGETS + LLAMA_TARGETS + ("all",)))


@dataclass
class AdapterConfig:
    """What DiffLoRA and LoRA share (train.py: --lora_rank, --lora_alpha, --lora_dropout), one default each."""
    r: int = 16                 # rank of every adapter (the paper's "right only" run doubles it to match the budget)
    alpha: float = 32.0         # scale s = alpha / r
    dropout: float = 0.1        # on x before each A, an independent mask per adapter (the paper's 0.1)

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"rank r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class DiffLoRAConfig(AdapterConfig):
    variant: str = "both"       # both | negative | shared (see the module docstring)
    learn_lambda: bool = True   # False: lambda is fixed at lambda_init (the paper found 0.1 more stable)
    lambda_init: float | None = None  # None: the depth schedule; a number: that constant for every layer
    groupnorm: bool = False     # per-head RMSNorm times (1 - lambda_init); off, as in the paper's main runs
    lora_v: bool = False        # also LoRA on V (reads x)
    lora_o: bool = False        # also LoRA on the output projection (reads the attention output)
    init: str = "paper"         # paper | preserve (step 0 equals the base model exactly)
    lambda_ramp: int = 0        # N > 0: lambda times min(1, step / N) (axolotl's warmup): step 0 is the base model
    CHOICES = dict(variant=VARIANTS, init=INITS)  # the allowed values of the fields that have a few (train.py checks them too)

    def __post_init__(self):
        for key, options in self.CHOICES.items():
            if getattr(self, key) not in options:
                raise ValueError(f"{key} must be one of {options}, got {getattr(self, key)!r}")
        super().__post_init__()
        if self.lambda_init is not None and not isinstance(self.lambda_init, (int, float)):
            raise ValueError(f"lambda_init must be None (the depth schedule) or a number, got {self.lambda_init!r}")
        if self.init == "preserve" and (self.groupnorm or not self.learn_lambda or self.lambda_init not in (None, 0)):
            raise ValueError("init='preserve' starts from lambda = 0 and needs learn_lambda=True, groupnorm=False "
                             "and lambda_init None or 0 (a fixed lambda of 0 would never train the negative term)")
        if not isinstance(self.lambda_ramp, int) or self.lambda_ramp < 0:
            raise ValueError(f"lambda_ramp must be an integer >= 0 (steps), got {self.lambda_ramp!r}")
        if self.lambda_ramp and (self.groupnorm or self.init == "preserve"):
            raise ValueError("lambda_ramp starts the paper's lambda at 0 so that step 0 is the base model: it cannot with "
                             "groupnorm=True (GroupNorm rescales every head) and is not needed with init='preserve' "
                             "(lambda already starts at 0); use lambda_ramp=0 there")


@dataclass
class LoRAConfig(AdapterConfig):
    targets: tuple = ("all",)  # GPT-2: q, k, v, attn_out, mlp_in, mlp_out; Llama: q, k, v, o, gate, up, down; or all
    CHOICES = dict(targets=LORA_TARGETS)  # targets: any of them (train.py takes them comma-separated)

    def __post_init__(self):
        self.targets = tuple(self.targets.split(",") if isinstance(self.targets, str) else self.targets)
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of {LORA_TARGETS}, got {self.targets}")
        super().__post_init__()


# what train.py calls the fields the two configs share (the others keep their names: --variant, --init, ...)
SETTING_NAMES = {"r": "lora_rank", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "lora_targets"}
METHODS = {"difflora": DiffLoRAConfig, "lora": LoRAConfig}


def lambda_init_schedule(depth):
    """lambda_init(depth) = 0.8 - 0.6 exp(-0.3 depth), depth counted from 0."""
    return 0.8 - 0.6 * math.exp(-0.3 * depth)


class LoRA(nn.Module):
    """delta(x) = s · dropout(x) A B, s = alpha / r, for x (..., in): A (in, r), B (r, out), stored
    by nn.Linear as A.weight (r, in) and B.weight (out, r). A is kaiming-uniform, i.e.
    U(+-1/sqrt(in)); B is zero, or kaiming U(+-1/sqrt(r)) with random_b (the negative term).
    The weight update s A B is s * B.weight @ A.weight in nn.Linear's (out, in) layout.
    The layers below compute every adapter that reads one x together (speedups.adapter_deltas):
    the same delta, and in training a mask of the same rate drawn another way (a test checks both)."""

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
        return self.scale * self.B(self.A(F.dropout(x, self.p, self.training)))  # (..., in) -> (..., out)

    def delta_weight(self):
        return self.scale * self.B.weight @ self.A.weight  # (out, in)


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
        deltas = adapter_deltas(x, list(self.lora.values()))  # {lora: lora(x)}, every adapter of this map in one go
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
        self.ramp_steps = config.lambda_ramp
        # min(1, step / N), set by set_lambda_ramp; a tensor, so that a compiled model reads it without recompiling
        self.register_buffer("ramp", torch.tensor(0.0 if config.lambda_ramp else 1.0, **kw), persistent=False)
        self.ramp_set = False  # whether set_lambda_ramp has run: training a ramp without it would keep lambda at 0
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
        self.keep_maps = None  # with explicit: a slice of query rows whose (A1, lambda A2) attend keeps in self.maps
        self.maps = None
        self.merged = False  # merge() folded the positive term's LoRA (and V's, W_O's) into c_attn and c_proj

    def lam(self):
        """lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init (a 0-dim tensor), or the fixed value;
        with lambda_ramp, times min(1, step / N)."""
        if not self.learn_lambda:
            lam = self.lambda_fixed
        else:
            lam = reparam_lambda(self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2, self.lambda_init)
        if not self.ramp_steps:
            return lam
        if self.training and not self.ramp_set:
            raise ValueError("this model has a lambda ramp (lambda_ramp > 0): call difflora.set_lambda_ramp(model, step) "
                             "before each training step (train.py does), or lambda stays 0")
        return self.ramp * lam

    def forward(self, x, cache=None, rope=None):
        """x (B, T, C) -> (B, T, C): the diagram at the top of this file, for one layer."""
        B, T, C = x.size()
        H, Hkv, hd = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split(self.sizes, dim=2)  # x W_Q, x W_K, x W_V: the frozen pretrained maps
        delta = self.input_deltas(x)  # {"q1": s x A_q1 B_q1, "k1", "q2", "k2", "v"}: 0 where there is no adapter
        q1, k1 = q + delta["q1"], k + delta["k1"]  # positive term: pretrained + LoRA
        q2, k2 = delta["q2"], delta["k2"]  # negative term: LoRA only
        if self.variant == "shared":  # the official code's form: the pretrained map plus a LoRA of its own
            q2, k2 = q + q2, k + k2
        v = v + delta["v"]
        q1, q2 = (t.view(B, T, H, hd).transpose(1, 2) for t in (q1, q2))  # (B, H, T, hd)
        k1, k2, v = (t.view(B, T, Hkv, hd).transpose(1, 2) for t in (k1, k2, v))  # (B, Hkv, T, hd)
        if rope is not None:  # both maps see positions alike
            q1, k1, q2, k2 = (apply_rope(t, *rope) for t in (q1, k1, q2, k2))
        k1, k2, v = cache_extend(cache, k1=k1, k2=k2, v=v)  # (B, Hkv, Tk, hd), Tk = cached + T
        y = self.attend(q1, k1, q2, k2, v, self.lam())  # (A1 - lambda A2) V: (B, H, T, hd)
        if self.gn_gain is not None:
            y = head_norm(y, self.gn_gain, self.lambda_init)
        y = y.transpose(1, 2).contiguous().view(B, T, H * hd)
        return self.resid_dropout(self.c_proj(y) + self.output_delta(y))  # x W_O (frozen), plus its LoRA if any

    def input_deltas(self, x):
        """{name: s · dropout(x) A B} of the adapters that read x: q1, k1, q2, k2 and v, all in one
        batched computation (speedups.adapter_deltas); 0 for an adapter that the variant lacks, or
        whose update merge() has folded into c_attn."""
        names = ("q2", "k2") if self.merged else ("q2", "k2", "q1", "k1", "v")
        loras = {n: getattr(self, "lora_" + n) for n in names if getattr(self, "lora_" + n) is not None}
        deltas = adapter_deltas(x, list(loras.values()))
        return {n: deltas[loras[n]] if n in loras else 0 for n in ("q1", "k1", "q2", "k2", "v")}

    def output_delta(self, y):
        """s · dropout(y) A_o B_o, the LoRA on W_O (it reads the attention output y); 0 without one."""
        return self.lora_o(y) if self.lora_o is not None and not self.merged else 0

    def attend(self, q1, k1, q2, k2, v, lam):
        """(A1 - lambda A2) V for q (B, H, Tq, hd), k and v (B, Hkv, Tk, hd): two fused attention
        calls, or with self.explicit the maps materialised, and with keep_maps those rows of A1 and
        lambda A2 kept in self.maps (to look at them)."""
        p = self.dropout if self.training else 0.0
        if not self.explicit:
            return fused_differential_attention(q1, k1, q2, k2, v, lam, p)
        y, a1, a2 = explicit_differential_attention(q1, k1, q2, k2, v, lam, p)
        if self.keep_maps:
            self.maps = (a1[:, :, self.keep_maps].detach(), (lam * a2[:, :, self.keep_maps]).detach())
        return y

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


APPLY = {"difflora": apply_difflora, "lora": apply_lora}  # a method's name -> what puts it on a model (METHODS: its config)


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


def adapted_modules(model):
    return [m for m in model.modules() if isinstance(m, (LoRALinear, DiffLoRAAttention))]


def merge(model):
    """Fold the adapters into the frozen weights (LoRA: all; DiffLoRA: the positive term, V, W_O)."""
    for m in adapted_modules(model):
        if not m.merged:
            m.fold(+1)


def unmerge(model):
    for m in adapted_modules(model):
        if m.merged:
            m.fold(-1)


def merged_model(model):
    """The plain transformer of a LoRA model, in place: every adapter folded into its weight and the
    LoRA wrappers replaced by those weights, so that save_pretrained writes a checkpoint that any
    Hugging Face tool loads (for benchmarks such as OLMES). A DiffLoRA model has no such form: its
    negative map is a second attention that no plain checkpoint has."""
    if model.adapter is None or model.adapter[0] != "lora":
        raise ValueError("only a LoRA model merges into a plain checkpoint; DiffLoRA's negative map has no place in one "
                         "(save its adapter with runs.save_adapter)" if model.adapter else "this model has no adapter to merge")
    merge(model)
    for block in model.transformer.h:
        for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")):
            if isinstance(getattr(parent, name), LoRALinear):
                setattr(parent, name, getattr(parent, name).base)
    model.adapter = None
    return model


def set_lambda_ramp(model, step):
    """Set every DiffLoRA layer's lambda ramp to min(1, step / N), N = its config's lambda_ramp
    (layers without a ramp keep 1): train.py calls it before each step and evaluation, and a
    saved run is loaded at the step it was saved."""
    for m in model.modules():
        if isinstance(m, DiffLoRAAttention) and m.ramp_steps:
            m.ramp.fill_(min(1.0, step / m.ramp_steps))
            m.ramp_set = True


def set_attention_path(model, explicit):
    """Choose the fused (False) or explicit (True) differential attention in every layer."""
    for m in model.modules():
        if isinstance(m, DiffLoRAAttention):
            m.explicit = explicit


