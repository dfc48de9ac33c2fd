"""
The GPU memory of one training step of the paper's runs (config/paper/*.py), estimated on a CPU
from the model's shapes: Llama-3.2-1B's by default, with random weights, nothing downloaded.

    python bench/memory.py                                        # every config/paper file, with and without checkpointing
    python bench/memory.py --configs=config/paper/difflora32.py,config/paper/lora8.py   # two of them (19 min on 2 CPU cores)

Memory at the peak of a step = the weights (fp32, as train.py holds them) + AdamW's two moments of
each trainable parameter (fp32) + the step's own tensors: activations kept for the backward pass,
the bf16 copies of the weights that autocast makes (kept for the backward pass too, unless the
block is checkpointed), the logits of the counted targets and their gradients, the adapters'
gradients. The step's tensors are counted as they are made and freed, by a dispatch mode that
sees every tensor op, forward and backward, on the CPU under the config's autocast dtype (on a
CPU, scaled_dot_product_attention runs a flash-attention kernel that keeps what CUDA's keeps: q,
k, v, the output and a log-sum-exp per row). The step is the config's own micro-batch,
batch_size x block_size tokens, on the model with 2 blocks and with 3: every block past the
first adds the same (its weights' share and what it keeps for the backward pass, all alive at
the peak, wherever it falls), so the peak of n_layer blocks is extrapolated linearly from those
two. (With one block the peak can fall elsewhere: the tests check the line from 2 and 3 blocks
against 4.) It is an estimate: CUDA's caching allocator adds
fragmentation, and CUDA kernels may keep other workspaces. --counted is the fraction of targets
counted in the loss (the logits are computed only for those); 1.0 is the worst case.
"""

import os
import sys
import time

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from configurator import check, configure, dataclass_from_settings, dataclass_settings, read_config, resolve_device  # noqa: E402
from difflora import APPLY, METHODS, SETTING_NAMES  # noqa: E402
from model import GPT, GPTConfig, LLAMA, empty_model, flops_per_token  # noqa: E402

# -----------------------------------------------------------------------------
configs = ("config/paper/difflora32.py,config/paper/difflora64_negative.py,config/paper/difflora64_lambda01.py,"  # comma-separated train.py config files
           "config/paper/difflora32_groupnorm.py,config/paper/lora8.py")
# the shape: Llama-3.2-1B's
n_layer = 16
n_head = 32
n_kv_head = 8
n_embd = 2048
n_inner = 8192
vocab_size = 128256
counted = 1.0  # fraction of the targets counted in the loss
loss_chunk = -1  # -1: each config's own; 0: the loss over all targets at once; N: over chunks of N
block_size = 0  # 0: each config's own sequence length; N: N tokens instead (a quicker look; the numbers are then N's)
seed = 0
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])
globals().update(config)
for key in ("n_layer", "n_head", "n_kv_head", "n_embd", "n_inner", "vocab_size"):
    check(config[key] >= 1, key, config[key], "an integer >= 1")
check(0 < counted <= 1, "counted", counted, "a number in (0, 1]")
check(loss_chunk >= -1, "loss_chunk", loss_chunk, "-1 (each config's own), 0 (off) or a chunk size")
check(block_size >= 0, "block_size", block_size, "0 (each config's own) or a number of tokens")
RUN_KEYS = dict(method="difflora", **dataclass_settings(METHODS.values(), SETTING_NAMES)[0], batch_size=4, block_size=255,
                gradient_checkpointing=False, loss_chunk=0, dtype="bfloat16")  # what a config file sets that matters here (train.py's defaults)


class LiveTensors(TorchDispatchMode):
    """Inside it, the bytes of every tensor storage made by an op (forward or backward) that is still
    alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.alive, self.peak = {}, 0  # data pointer -> (weak reference, bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.alive = {k: v for k, v in self.alive.items() if not v[0].expired()}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                self.alive.setdefault(s.data_ptr(), (StorageWeakRef(s), s.nbytes()))
        self.peak = max(self.peak, sum(n for _, n in self.alive.values()))
        return out


def read_run(path):
    """The settings of a train.py config file that this estimate needs."""
    assigned = read_config(path)
    run = {k: assigned.get(k, v) for k, v in RUN_KEYS.items()}
    return {**run, "loss_chunk": run["loss_chunk"] if loss_chunk == -1 else loss_chunk}


def build(run, layers, meta=False):
    """The model with `layers` blocks and the run's adapter: random weights on the CPU, or with meta
    no memory at all (to count parameters and FLOPs)."""
    torch.manual_seed(seed)
    shape = GPTConfig(**LLAMA, n_layer=layers, n_head=n_head, n_kv_head=n_kv_head, n_embd=n_embd, n_inner=n_inner,
                      vocab_size=vocab_size, block_size=run["block_size"])
    if meta:
        with torch.device("meta"):
            model = GPT(shape)
    else:
        model = empty_model(shape)
        for p in model.parameters():  # any values: they do not change the memory
            p.data.uniform_(-0.02, 0.02)
    adapter = dataclass_from_settings(METHODS[run["method"]], run, SETTING_NAMES)
    APPLY[run["method"]](model, adapter)
    model.loss_chunk = run["loss_chunk"]
    return model.train()


def step_peak(model, B, T, ctx):
    """Peak bytes of the tensors a forward and backward pass of B sequences of T tokens makes."""
    torch.manual_seed(seed)
    x = torch.randint(0, vocab_size, (B, T))
    y = x.masked_fill(torch.rand(B, T) >= counted, -1)
    model.zero_grad(set_to_none=True)
    with LiveTensors() as live:
        with ctx:
            loss = model(x, y)[1]
        loss.backward()
    return live.peak


t0 = time.time()
GB = 2**30
print(f"Llama-family shape: n_layer {n_layer}, n_head {n_head}, n_kv_head {n_kv_head}, n_embd {n_embd}, n_inner {n_inner}, "
      f"vocab {vocab_size}; counted targets {counted:.0%}; loss_chunk {loss_chunk}; each config's micro-batch measured with 2 and 3 blocks on the "
      f"CPU with torch {torch.__version__}, extrapolated to {n_layer}")
print(f"{'config':<36}{'trainable':>11}{'ckpt':>6}{'GFLOP/token':>13}{'weights+adam':>14}{'step':>9}{'total':>9}   (GiB)")
for path in configs.split(","):
    run = read_run(path)
    run["block_size"] = block_size or run["block_size"]
    _, _, _, ctx = resolve_device("cpu", run["dtype"])
    full = build(run, n_layer, meta=True)
    n_all = sum(p.numel() for p in full.parameters())
    n_trainable = sum(p.numel() for p in full.parameters() if p.requires_grad)
    static = 4 * n_all + 8 * n_trainable  # fp32 weights; AdamW's exp_avg and exp_avg_sq (the gradients are the step's)
    models = [build(run, layers) for layers in (2, 3)]
    for checkpointing in (True, False):
        peaks = []
        for model in models:
            model.gradient_checkpointing = checkpointing
            peaks.append(step_peak(model, run["batch_size"], run["block_size"], ctx))
        step = peaks[0] + (n_layer - 2) * (peaks[1] - peaks[0])
        flops = flops_per_token(full, run["block_size"], recompute=checkpointing) / 1e9  # the blocks' forward pass twice
        print(f"{path:<36}{n_trainable:>11,}{'on' if checkpointing else 'off':>6}{flops:>13.2f}{static / GB:>14.2f}"
              f"{step / GB:>9.2f}{(static + step) / GB:>9.2f}   ({run['batch_size']} x {run['block_size']} tokens; "
              f"{peaks[0] / GB:.2f} and {peaks[1] / GB:.2f} GiB with 2 and 3 blocks)", flush=True)
    del models
print(f"bench/memory.py: {(time.time() - t0) / 60:.1f} min")
