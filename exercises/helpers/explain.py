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
