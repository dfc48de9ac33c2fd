"""
Speed and memory of a training step and of generation, on random weights (no download),
GPT-2 small shapes by default. For each method and sequence length: step time, tokens/s,
MFU (GPUs with a known peak) and memory (CUDA memory stats on a GPU, the process's resident
set on CPU: the peak, and "step MB", how far the step rose above the memory the model held before it); then generation with and without the KV cache; then the ratios that matter.

    python bench.py                                    # the full table on this machine
    python bench.py --seq_lens=256,512 --gen=False     # a quicker one
    python bench.py --device=cuda --compile=True       # on a GPU (bf16 autocast there)

Methods: none (the frozen base model, forward only), lora (LoRA on Q, K at rank 2r: DiffLoRA's
parameter budget), difflora (rank r, both terms; fused and explicit attention paths), full.
"""

import gc
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

from configurator import check, check_device, choose, configure
from difflora import DiffLoRAConfig, LoRAConfig, apply_difflora, apply_lora, set_attention_path
from model import GPT, GPTConfig, peak_flops

# -----------------------------------------------------------------------------
n_layer = 12
n_head = 12
n_embd = 768
vocab_size = 50257
batch_size = 1
seq_lens = "256,512,1024"
methods = "none,lora,difflora,full"
explicit = True  # also time DiffLoRA's explicit (materialised maps) path
rank = 16  # DiffLoRA's; the LoRA baseline uses 2 * rank on Q and K
steps = 3  # timed steps, after one warm-up step
gen = True  # also time generation
gen_methods = "none,difflora"
gen_tokens = 256
gen_prompt = 16
device = "auto"
dtype = "auto"  # auto: bf16 autocast on a GPU that supports it, fp32 on CPU
compile = False
seed = 0
out = ""  # also write the results as JSON to this path
only = ""  # "method:T": measure that one configuration and print it as JSON (each runs in its own process)
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])
globals().update(config)
METHODS = ("none", "lora", "difflora", "full")
check(set(methods.split(",")) <= set(METHODS), "methods", methods, "a comma-separated subset of " + ",".join(METHODS))
check(set(gen_methods.split(",")) <= {"none", "difflora"}, "gen_methods", gen_methods, "a comma-separated subset of none,difflora")
check(all(t.isdigit() and int(t) >= 1 for t in seq_lens.split(",")), "seq_lens", seq_lens, "comma-separated lengths such as 256,1024")
for key in ("n_layer", "n_head", "n_embd", "vocab_size", "batch_size", "rank", "steps", "gen_tokens", "gen_prompt"):
    check(config[key] >= 1, key, config[key], "an integer >= 1")
check(n_embd % n_head == 0, "n_embd", n_embd, f"a multiple of n_head={n_head}")
check_device(device)
choose("dtype", dtype, ("auto", "float32", "bfloat16", "float16"))
if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
device_type = "cuda" if device.startswith("cuda") else "cpu"
if dtype == "auto":
    dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type, dtype=getattr(torch, dtype))
peak = peak_flops(device)
T_max = max(int(t) for t in seq_lens.split(","))


def build(method):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=max(T_max, gen_prompt + gen_tokens), vocab_size=vocab_size, n_layer=n_layer,
                          n_head=n_head, n_embd=n_embd))
    if method in ("difflora", "difflora-explicit"):
        apply_difflora(model, DiffLoRAConfig(r=rank, alpha=2.0 * rank))
        set_attention_path(model, method == "difflora-explicit")
    elif method == "lora":
        apply_lora(model, LoRAConfig(r=2 * rank, alpha=4.0 * rank, dropout=0.1, targets=("q", "k")))
    elif method == "none":
        model.requires_grad_(False)
    return model.to(device)


def reset_peak():
    gc.collect()
    if device_type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:  # Linux: restart the peak-RSS (VmHWM) count from now
                f.write("5")
        except OSError:
            pass


def memory_mb(peak):
    """Peak (or current) memory: CUDA allocations on a GPU, the process's resident set on CPU."""
    if device_type == "cuda":
        return (torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()) / 2**20
    try:
        with open("/proc/self/status") as f:
            key = "VmHWM" if peak else "VmRSS"
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))
    except OSError:
        import resource  # no /proc: the peak over the whole process, an upper bound
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync():
    if device_type == "cuda":
        torch.cuda.synchronize()


def bench_step(method, T):
    model = build(method)
    step_fn = model
    if compile:
        step_fn = torch.compile(model)
    x = torch.randint(0, vocab_size, (batch_size, T), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    reset_peak()
    before = memory_mb(peak=False)  # the model; the step adds activations, gradients, optimiser state

    def step():
        if opt is None:  # nothing to train: the forward pass alone
            with torch.no_grad(), ctx:
                step_fn(x)
            return
        with ctx:
            _, loss = step_fn(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (and compilation)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    row = dict(method=method, T=T, ms=dt * 1000, tok_s=batch_size * T / dt, peak_mb=memory_mb(peak=True),
               step_mb=memory_mb(peak=True) - before,
               mfu=(model.flops_per_token(T) * batch_size * T / dt / peak) if peak and opt else None)
    del model, opt, step_fn
    return row


def bench_generate(method):
    model = build(method).eval()
    prompt = torch.randint(0, vocab_size, (1, gen_prompt), device=device)
    times = {}
    for use_cache in (True, False):
        sync()
        t0 = time.perf_counter()
        with ctx:
            model.generate(prompt, gen_tokens, temperature=0, use_cache=use_cache)
        sync()
        times[use_cache] = time.perf_counter() - t0
    del model
    return dict(method=method, tokens=gen_tokens, cached_s=times[True], uncached_s=times[False],
                speedup=times[False] / times[True])


if only:
    method, T = only.split(":")
    print(json.dumps(bench_step(method, int(T))))
    sys.exit(0)

name = torch.cuda.get_device_name(device) if device_type == "cuda" else "CPU"
print(f"device {device} ({name}), dtype {dtype}, compile {compile}, torch {torch.__version__}, "
      f"threads {torch.get_num_threads()}; n_layer {n_layer}, n_head {n_head}, n_embd {n_embd}, batch {batch_size}")
rows = []
method_list = methods.split(",")
if explicit and "difflora" in method_list:
    method_list.insert(method_list.index("difflora") + 1, "difflora-explicit")
print(f"{'method':<18}{'T':>6}{'step ms':>10}{'tok/s':>10}{'MFU':>8}{'peak MB':>10}{'step MB':>10}")
for T in (int(t) for t in seq_lens.split(",")):
    for method in method_list:
        # a fresh process per configuration: its peak memory is its own, its allocator starts empty
        res = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--only={method}:{T}"],
                             capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"error: {method} at T={T} failed:\n{res.stderr[-3000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{method:<18}{T:>6}{r['ms']:>10.1f}{r['tok_s']:>10,.0f}{mfu:>8}{r['peak_mb']:>10,.0f}{r['step_mb']:>10,.0f}", flush=True)

gen_rows = []
if gen:
    print(f"\ngeneration of {gen_tokens} tokens after a {gen_prompt}-token prompt, batch 1, greedy")
    print(f"{'method':<18}{'cached s':>10}{'uncached s':>12}{'speedup':>9}")
    for method in gen_methods.split(","):
        g = bench_generate(method)
        gen_rows.append(g)
        print(f"{method:<18}{g['cached_s']:>10.2f}{g['uncached_s']:>12.2f}{g['speedup']:>8.1f}x", flush=True)

print("\nratios")
by = {(r["method"], r["T"]): r for r in rows}
for T in (int(t) for t in seq_lens.split(",")):
    if ("difflora", T) in by and ("lora", T) in by:
        print(f"T={T}: DiffLoRA / LoRA step time {by['difflora', T]['ms'] / by['lora', T]['ms']:.2f}")
    if ("difflora-explicit", T) in by and by["difflora", T]["step_mb"] >= 1:
        e, f = by["difflora-explicit", T], by["difflora", T]
        print(f"T={T}: DiffLoRA explicit / fused step memory {e['step_mb'] / f['step_mb']:.2f}, step time {e['ms'] / f['ms']:.2f}")
for g in gen_rows:
    print(f"{g['method']}: cached generation {g['speedup']:.1f}x faster than uncached")
if out:
    with open(out, "w") as f:
        json.dump(dict(device=name, dtype=dtype, compile=compile, torch=torch.__version__, settings=config,
                       steps=rows, generation=gen_rows), f, indent=1)
