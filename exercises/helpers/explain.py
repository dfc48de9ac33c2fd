"""The graders' comparison (not an exercise): an answer equal to the reference passes; one that is
not fails with a sentence that teaches. When the answer equals what a classic mistake computes
(the mask's diagonal off by one, key/value heads tiled instead of interleaved, RoPE on neighbouring
dimensions), the failure names that mistake and what is right instead."""

import math

import torch


def assert_close_or_explain(got, want, mistakes=(), atol=1e-5, rtol=0.0, rule=""):
    """torch.testing.assert_close(got, want), explained. mistakes: (lesson, what that mistake
    computes) pairs, tried in order when got is not want; rule: the sentence that says what is
    compared, shown with any other failure."""
    if got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol):
        return
    for lesson, wrong in mistakes:
        if wrong.shape == got.shape and torch.allclose(got.float(), wrong.float(), atol=atol, rtol=rtol, equal_nan=True):
            raise AssertionError(lesson)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{rule}\n{m}" if rule else m)


# ----------------------------------------------------------------------------- what the classic mistakes compute

def attention_with_mask(q, k, v, keep, scale=None):
    """softmax(q k^T * scale, keeping the (Tq, Tk) bool mask keep) v, in fp32: the map any mask makes."""
    scores = (q.float() @ k.float().transpose(-2, -1)) * (scale or 1 / math.sqrt(q.size(-1)))
    return scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v.float()


def mask_mistakes(q, k, v):
    """(lesson, output) of the causal masks students get wrong, for q (.., Tq, d) the last Tq of Tk positions."""
    Tq, Tk = q.size(-2), k.size(-2)
    ones = torch.ones(Tq, Tk, dtype=torch.bool)
    right = ones.tril(Tk - Tq)
    out = [("the mask's diagonal is off by one: each query row also sees the key right after its own position "
            "(the future). Query row i of Tq, the last Tq of Tk positions, may see keys 0 .. Tk - Tq + i.",
            attention_with_mask(q, k, v, ones.tril(Tk - Tq + 1)))]
    if Tq > 1 or Tk > 1:
        out.append(("the mask's diagonal is off by one: each query row misses its own key. Query row i of Tq, "
                    "the last Tq of Tk positions, may see keys 0 .. Tk - Tq + i, its own position included.",
                    attention_with_mask(q, k, v, ones.tril(Tk - Tq - 1))))  # row 0: no key at all, NaN
    if Tq < Tk:
        out.append(("the mask is aligned to the first keys: with a KV cache the Tq queries are the LAST Tq of the Tk "
                    "positions, so query row i may see keys 0 .. Tk - Tq + i, not 0 .. i (torch.tril(ones, Tk - Tq)).",
                    attention_with_mask(q, k, v, ones.tril(0))))
    if not right.all():
        out.append(("no causal mask: every query row sees every key, the future included.", attention_with_mask(q, k, v, ones)))
    out.append(("the scores are divided by d; the scale is 1 / sqrt(d), d the head width.",
                attention_with_mask(q, k, v, right, scale=1 / q.size(-1))))
    return out


def tiled_heads(t, n_head):
    """The grouped-query mistake: key/value heads tiled (h % Hkv) instead of interleaved (h // g)."""
    return t.repeat(1, n_head // t.size(1), 1, 1)


TILED = ("the key/value heads are tiled: query head h got key/value head h % Hkv. In grouped-query attention "
         "each group of g = n_head / Hkv consecutive query heads shares one key/value head: query head h gets "
         "head h // g (repeat_interleave, not repeat).")


def rope_neighbours(x, cos, sin):
    """The RoPE layout mistake: dimensions (2i, 2i+1) turned together by pair i's angle (Meta's original code)."""
    half = x.size(-1) // 2
    c, s = cos[..., :half], sin[..., :half]  # the angle of pair i
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * c - odd * s, odd * c + even * s), dim=-1).flatten(-2)


NEIGHBOURS = ("you turned neighbouring dimensions (2i, 2i+1) together, the layout of Meta's original code. Hugging "
              "Face's Llama weights (and this project) pair dimension i with i + d/2, the half-split layout: "
              "(x_i, x_{i+d/2}) -> (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin).")
BACKWARDS = ("each pair turns the wrong way: the first of a pair gets minus the second times sin, "
             "(x_i, x_{i+d/2}) -> (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin).")


# ----------------------------------------------------------------------------- a whole DiffLoRA layer (exercises 7 and 13)

def diff_layer(layer, x, rope=None, mistake=None):
    """A DiffLoRA layer's output (B, T, C) for x (B, T, C) without a cache, from the layer's own
    parameters by the equations (in eval mode: no dropout; no GroupNorm, no LoRA on V or W_O),
    or what the classic `mistake` (a key of LAYER_MISTAKES) computes instead:
        Q1 = x W_Q + s x A_q1 B_q1,  K1 = x W_K + s x A_k1 B_k1,  Q2 = s x A_q2 B_q2,  K2 = s x A_k2 B_k2
        RoPE on Q1, K1, Q2, K2;  K1, K2, V repeated to the query heads (head h reads key/value head h // g)
        out = ((A1 - lambda A2) V) W_O,  A_i = softmax(Q_i K_i^T / sqrt(d) + causal mask)"""
    from model import apply_rope
    B, T, C = x.shape
    H, Hkv, d = layer.n_head, layer.n_kv_head, layer.head_dim
    q, k, v = layer.c_attn(x).split(layer.sizes, dim=2)
    q1, k1 = (q, k) if mistake == "no_positive_lora" else (q + layer.lora_q1(x), k + layer.lora_k1(x))
    q2, k2 = layer.lora_q2(x), layer.lora_k2(x)
    heads = lambda t, n: t.view(B, T, n, d).transpose(1, 2)  # (B, n, T, d)
    q1, q2, k1, k2, v = heads(q1, H), heads(q2, H), heads(k1, Hkv), heads(k2, Hkv), heads(v, Hkv)
    if rope is not None and mistake != "no_rope":
        q1, k1 = apply_rope(q1, *rope), apply_rope(k1, *rope)
        if mistake != "no_rope_negative":
            q2, k2 = apply_rope(q2, *rope), apply_rope(k2, *rope)
    repeat = tiled_heads if mistake == "tiled_heads" else lambda t, n: t.repeat_interleave(n // t.size(1), dim=1)
    k1, k2, v = repeat(k1, H), repeat(k2, H), repeat(v, H)
    if mistake == "k1_in_negative":
        k2 = k1
    if mistake == "q1_in_negative":
        q2 = q1
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scale = 1 / d if mistake == "scale_d" else 1 / math.sqrt(d)
    a1 = (q1.float() @ k1.float().transpose(-2, -1) * scale).masked_fill(~causal, float("-inf")).softmax(-1)
    a2 = (q2.float() @ k2.float().transpose(-2, -1) * scale).masked_fill(~causal, float("-inf")).softmax(-1)
    lam = layer.lam().float()
    diff = {"no_lambda": a1 - a2, "lambda_on_positive": lam * a1 - a2, "plus": a1 + lam * a2}.get(mistake, a1 - lam * a2)
    y = (diff @ v.float()).to(x.dtype).transpose(1, 2).reshape(B, T, H * d)
    return layer.c_proj(y)


LAYER_MISTAKES = {
    "no_positive_lora": "the positive map lost its LoRA: Q1 = x W_Q + s x A_q1 B_q1 and K1 = x W_K + s x A_k1 B_k1.",
    "k1_in_negative": "the negative map reads K1: it is softmax(Q2 K2^T / sqrt(d)), keys from the negative term's own "
                      "adapters (K2 = s x A_k2 B_k2).",
    "q1_in_negative": "the negative map reads Q1: it is softmax(Q2 K2^T / sqrt(d)), queries from the negative term's own "
                      "adapters (Q2 = s x A_q2 B_q2).",
    "no_lambda": "lambda is not applied: the output is (A1 - lambda A2) V, not (A1 - A2) V.",
    "lambda_on_positive": "lambda multiplies the wrong map: the output is (A1 - lambda A2) V, not (lambda A1 - A2) V.",
    "plus": "the negative map is added: the output is (A1 - lambda A2) V, a difference.",
    "scale_d": "the scores are divided by d; the scale is 1 / sqrt(d), d the head width.",
    "no_rope": "RoPE is missing: on a Llama layer Q1, K1, Q2 and K2 are all rotated by position before the scores.",
    "no_rope_negative": "Q2 and K2 are not rotated by RoPE: the negative map must see positions as the positive one does, "
                        "so Q2 and K2 turn by the same angles as Q1 and K1.",
    "tiled_heads": TILED,
}


def layer_mistakes(layer, x, rope=None):
    """(lesson, output) of every classic mistake for this layer, for assert_close_or_explain."""
    skip = {"no_rope", "no_rope_negative"} if rope is None else set()
    skip |= {"tiled_heads"} if layer.n_kv_head == layer.n_head else set()
    return [(lesson, diff_layer(layer, x, rope, m)) for m, lesson in LAYER_MISTAKES.items() if m not in skip]


def cache_shapes_lesson(cache, B, T, n_kv_head, d):
    """None if every tensor a layer's cache dict holds is (B, n_kv_head, T, d), else what is wrong."""
    for name, t in cache.items():
        if t.dim() == 4 and t.size(1) != n_kv_head and t.size(1) > n_kv_head:
            return (f"the cache holds {name} with {t.size(1)} heads, the repeated query-width heads: it should hold the "
                    f"{n_kv_head} key/value heads, (B, n_kv_head, T, d) = {(B, n_kv_head, T, d)}, and repeat them for "
                    "the query heads after reading the cache (the memory grouped-query attention saves).")
        if tuple(t.shape) != (B, n_kv_head, T, d):
            return (f"the cache's {name} is {tuple(t.shape)}: a layer's cache holds k1, k2 and v of every position so "
                    f"far, (B, n_kv_head, T, d) = {(B, n_kv_head, T, d)}, keys already rotated.")
    return None


def graded_layer(layer_class, llama):
    """(your layer, rope angles for 6 positions or None, x (2, 6, C)): one DiffLoRA layer of a tiny
    model (GPT-2: 4 heads; Llama: RoPE, 4 query heads sharing 2 key/value heads) whose adapters and
    lambda are all random (so that every mistake changes the output), in eval mode, turned into
    an instance of layer_class (your DiffAttention) with the same parameters."""
    from difflora import DiffLoRAConfig, apply_difflora
    from model import GPT, GPTConfig, LLAMA, rope_cos_sin
    torch.manual_seed(0)
    shape = dict(n_layer=1, n_head=4, n_embd=32, block_size=16, vocab_size=64)
    config = GPTConfig(**shape, **LLAMA, n_kv_head=2) if llama else GPTConfig(**shape)
    model = apply_difflora(GPT(config), DiffLoRAConfig(r=4, alpha=8.0, dropout=0.0)).eval()
    layer = model.transformer.h[0].attn
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.5 if name.startswith("lambda") else 0.3)
    layer.__class__ = layer_class
    rope = rope_cos_sin(model.rope_inv_freq, torch.arange(6)) if llama else None
    return layer, rope, torch.randn(2, 6, 32)
