"""
Speed and memory tricks, kept apart from the ideas they serve. Each function computes what its
docstring's first line says, in plain math; the rest of the docstring says how it does it faster
or in less memory, and a test checks it against the plain computation.

    adapter_deltas / lora_deltas   s_i · dropout_i(x) A_i B_i for several LoRA adapters reading one x
    dropout_keep                   n independent dropout masks, four elements per 64-bit random draw
    chunked_cross_entropy          cross_entropy(h W_head, t), never holding all the logits at once
"""

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


def adapter_deltas(x, loras):
    """{adapter: s · dropout(x) A B} for LoRA adapters that all read x (B, T, in): lora_deltas once
    per output width (with grouped-query attention the K and V adapters are narrower than the Q ones)."""
    out = {}
    for width in dict.fromkeys(lora.B.out_features for lora in loras):
        group = [lora for lora in loras if lora.B.out_features == width]
        out.update(zip(group, lora_deltas(x, group).unbind(0)))
    return out


def lora_deltas(x, loras):
    """[s_i · dropout_i(x) A_i B_i] for adapters of one output width that all read x (B, T, in),
    stacked (n, B, T, out), each with its own dropout mask (in training). In nn.Linear's layout
    A_i = loras[i].A.weight.T and B_i = loras[i].B.weight.T. Computed as two batched matmuls, with
    the scales folded into the small A_i and B_i, instead of 2n thin matmuls and 2n scale multiplies;
    the masks come from dropout_keep."""
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


def chunked_cross_entropy(h, t, lm_head, chunk):
    """F.cross_entropy(lm_head(h).float(), t), the mean over the N targets t (N,) of the final
    hidden states h (N, C). The logits (N, vocab), their fp32 log-probabilities and their gradients
    are most of a long step's memory (N = 8,192 targets over Llama 3's 128,256 ids: 4 GiB each in
    fp32): here they exist for `chunk` targets at a time, and each chunk's are recomputed in the
    backward pass."""
    def loss_sum(hc, tc):
        return F.cross_entropy(lm_head(hc).float(), tc, reduction="sum")
    losses = (checkpoint(loss_sum, hc, tc, use_reentrant=False) for hc, tc in zip(h.split(chunk), t.split(chunk)))
    return sum(losses, h.new_zeros((), dtype=torch.float32)) / len(t)
