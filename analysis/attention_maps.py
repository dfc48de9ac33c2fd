"""
Where attention goes, read off a model: the maps of every layer (a DiffLoRA layer's A1 and
lambda A2 through its explicit path, a plain layer's map recomputed from its q and k), and the
split of a map's mass over regions of the prompt (the first token, a needle, the question, the
rest), as the paper's analysis splits it. draw_attention.py draws them; eval_needle.py and
negative_map.py measure them over many examples.
"""

import torch

from difflora import DiffLoRAAttention, causal_softmax
from model import apply_rope


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
        model(idx, last=True)  # the maps are the hooks' and layers' business: one row of logits is enough
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
