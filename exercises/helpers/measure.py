"""Measuring helpers the exercises give you (not an exercise)."""

import torch


def saved_for_backward_mb(fn, T, B=1, H=12, d=64):
    """Megabytes of tensors that autograd keeps for backward while fn(q1, k1, q2, k2, v, lam) runs
    on random (B, H, T, d) inputs: the memory a training step holds for this part of the layer."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    args = [torch.randn(B, H, T, d, requires_grad=True) for _ in range(5)] + [torch.tensor(0.5, requires_grad=True)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(storages.values()) / 2**20
