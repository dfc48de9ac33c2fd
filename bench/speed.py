"""
Speed and memory of a training step and of generation, on random weights (no download),
GPT-2 small shapes by default.

1. A table, one fresh process per method and sequence length (so its peak memory is its own):
   step time, tokens/s, MFU (GPUs with a known peak) and memory (CUDA memory stats on a GPU,
   the process's resident set on CPU: the peak, and "step MB", how far the step rose above the
   memory the model held before it).
2. Ratios, measured so that they hold on a busy machine: the two contenders run in one
   process and alternate step by step (the order flips every pair), and each ratio is the
   median of the per-pair ratios, shown with their spread (lowest-highest). DiffLoRA / LoRA
   beside the arithmetic's floor (the ratio of their FLOPs per token); our forward pass / Hugging
   Face transformers' (the same weights, sdpa attention), our LoRA / transformers + PEFT LoRA
   (same parameter count) and our cached greedy generation against transformers' generate,
   when those libraries are installed (they are optional: only benchmarks and tests use them).
3. Generation with and without the KV cache.
4. With --gguf: the time to load that GGUF file (or alias) and its tokenizer, dequantisation included.
5. With --harness=MODEL (smollm2, a GGUF file or a Hugging Face folder): analysis/harness_lm.py's
   NanoLM against lm-eval's HFLM on that checkpoint, interleaved as in 2, on the requests of the
   offline tasks in analysis/tasks (loglikelihood, rolling, generation), with how far apart their
   numbers are.

    python bench/speed.py                                    # everything, on this machine
    python bench/speed.py --seq_lens=256 --gen=False         # a quicker one
    python bench/speed.py --device=cuda --compile=True       # on a GPU (bf16 autocast there)

    python bench/speed.py config/bench_smollm2.py            # SmolLM2-135M's shape (Llama family), and loading its GGUF
    python bench/speed.py --methods= --ratio_shapes= --gen=False --harness=smollm2 --pairs=3   # lm-eval: NanoLM / HFLM

Methods: none (the frozen base model, forward only), lora (LoRA on Q, K at rank 2r: DiffLoRA's
parameter budget), difflora (rank r, both terms; fused and explicit attention paths), full.
Adapter dropout is 0.1, as train.py uses it (--dropout to change it).
"""

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from configurator import check, choose, compile_errors, configure, peak_flops, resolve_device, user_errors  # noqa: E402
from difflora import LORA_TARGETS, DiffLoRAConfig, LoRAConfig, apply_difflora, apply_lora, set_attention_path  # noqa: E402
from model import GPT, GPTConfig, LLAMA, flops_per_token  # noqa: E402

# -----------------------------------------------------------------------------
family = "gpt2"  # gpt2 | llama (RMSNorm, RoPE, SwiGLU, grouped-query attention, tied embeddings)
n_layer = 12
n_head = 12
n_kv_head = 0  # llama: key/value heads (0: n_head)
n_embd = 768
n_inner = 0  # MLP width (0: 4 n_embd)
vocab_size = 50257
batch_size = 1  # of the table
seq_lens = "256,512,1024"  # of the table
methods = "none,lora,difflora,full"  # of the table; "" for no table
explicit = True  # also time DiffLoRA's explicit (materialised maps) path in the table
steps = 3  # timed steps per table row, after one warm-up step
ratio_shapes = "1x1024,4x256"  # BxT shapes of the interleaved ratios; "" for none
pairs = 7  # interleaved pairs per ratio
hf = True  # also race transformers (+ PEFT), when installed
rank = 16  # DiffLoRA's; the LoRA baseline uses 2 * rank on Q and K
lora_rank = 0  # the LoRA baseline's rank (0: 2 * rank, DiffLoRA's parameter budget on Q and K)
lora_targets = "q,k"  # the LoRA baseline's maps (all: every linear map, the paper's); PEFT is raced on q,k only
gradient_checkpointing = False  # every method's blocks recomputed in the backward pass (MFU leaves the recompute out)
loss_chunk = 0  # > 0: the training loss over chunks of this many targets (train.py's setting)
dropout = 0.1  # adapter dropout of every method (train.py's lora_dropout default; 0.0 shows what the masks cost)
gen = True  # also time generation
gen_methods = "none,difflora"
gen_tokens = 128
gen_prompt = 16
device = "auto"
dtype = "auto"  # auto: bf16 autocast on a GPU that supports it, fp32 on CPU
compile = False
seed = 0
out = ""  # also write the results as JSON to this path
only = ""  # "method:T": measure that one configuration and print it as JSON (each runs in its own process)
gguf = ""  # also time loading this GGUF file or alias (smollm2), dequantisation and tokenizer included
harness = ""  # also race NanoLM against lm-eval's HFLM on this model (smollm2, a .gguf file, a Hugging Face folder)
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])
globals().update(config)
METHODS = ("none", "lora", "difflora", "full")
choose("family", family, ("gpt2", "llama"))
check(set(methods.split(",")) <= set(METHODS) or not methods, "methods", methods, "a comma-separated subset of " + ",".join(METHODS) + ", or empty")
check(set(gen_methods.split(",")) <= {"none", "difflora"}, "gen_methods", gen_methods, "a comma-separated subset of none,difflora")
check(all(t.isdigit() and int(t) >= 1 for t in seq_lens.split(",")), "seq_lens", seq_lens, "comma-separated lengths such as 256,1024")
check(all(s.count("x") == 1 and all(v.isdigit() and int(v) >= 1 for v in s.split("x")) for s in ratio_shapes.split(","))
      or not ratio_shapes, "ratio_shapes", ratio_shapes, "comma-separated BxT shapes such as 1x1024,4x256, or empty")
shapes = [tuple(int(v) for v in s.split("x")) for s in ratio_shapes.split(",")] if ratio_shapes else []
for key in ("n_layer", "n_head", "n_embd", "vocab_size", "batch_size", "rank", "steps", "pairs", "gen_tokens", "gen_prompt"):
    check(config[key] >= 1, key, config[key], "an integer >= 1")
for key in ("n_kv_head", "n_inner", "lora_rank", "loss_chunk"):
    check(config[key] >= 0, key, config[key], "an integer >= 0 (0: the default)")
check(n_embd % n_head == 0, "n_embd", n_embd, f"a multiple of n_head={n_head}")
check(n_head % (n_kv_head or n_head) == 0, "n_kv_head", n_kv_head, f"a divisor of n_head={n_head}")
check(0 <= dropout < 1, "dropout", dropout, "a number in [0, 1)")
check(set(lora_targets.split(",")) <= set(LORA_TARGETS), "lora_targets", lora_targets,
      "all, or comma-separated maps: GPT-2's q,k,v,attn_out,mlp_in,mlp_out or Llama's q,k,v,o,gate,up,down")
device, device_type, dtype, ctx = resolve_device(device, dtype)
peak = peak_flops(device)
T_max = max([int(t) for t in seq_lens.split(",")] + [T for _, T in shapes] + [gen_prompt + gen_tokens])


def build(method):
    torch.manual_seed(seed)
    shape = dict(block_size=T_max, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                 n_inner=n_inner or 4 * n_embd)
    model = GPT(GPTConfig(**shape, **LLAMA, n_kv_head=n_kv_head or None) if family == "llama" else GPTConfig(**shape))
    if method in ("difflora", "difflora-explicit"):
        apply_difflora(model, DiffLoRAConfig(r=rank, alpha=2.0 * rank, dropout=dropout))
        set_attention_path(model, method == "difflora-explicit")
    elif method == "lora":
        r = lora_rank or 2 * rank
        apply_lora(model, LoRAConfig(r=r, alpha=2.0 * r, dropout=dropout, targets=tuple(lora_targets.split(","))))
    elif method == "none":
        model.requires_grad_(False)
    model.gradient_checkpointing, model.loss_chunk = gradient_checkpointing, loss_chunk
    return model.to(device)


def build_hf(lora):
    """transformers' model (GPT2LMHeadModel or LlamaForCausalLM) with the same random weights as
    build("none"); with lora, PEFT's LoRA at the parameter count of our LoRA on Q and K at rank 2r:
    on GPT-2's c_attn (Q, K and V fused) at rank 2r, on Llama's q_proj and k_proj at rank 2r.
    None when the libraries are missing."""
    try:
        import transformers
        if lora:
            from peft import LoraConfig, get_peft_model
    except ImportError:
        return None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cls = transformers.LlamaForCausalLM if family == "llama" else transformers.GPT2LMHeadModel
    with tempfile.TemporaryDirectory() as tmp:
        build("none").save_pretrained(tmp)
        model = cls.from_pretrained(tmp, attn_implementation="sdpa")
    if lora:
        targets = dict(target_modules=["q_proj", "k_proj"]) if family == "llama" else dict(target_modules=["c_attn"], fan_in_fan_out=True)
        model = get_peft_model(model, LoraConfig(r=2 * rank, lora_alpha=4 * rank, lora_dropout=dropout, **targets))
    return model.to(device)


def forward_fn(model, B, T, hf_model=False):
    """A forward pass of model on random tokens (B, T), no gradients: the logits of every position."""
    x = torch.randint(0, vocab_size, (B, T), device=device)
    model.eval()

    def forward():
        with torch.no_grad(), ctx:
            model(input_ids=x) if hf_model else model(x)
    return forward


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


def train_step(model, B, T, hf_model=False):
    """One training step of model on random tokens (B, T), as a function of no arguments: forward,
    backward, AdamW; a model with nothing to train runs the forward pass alone."""
    x = torch.randint(0, vocab_size, (B, T), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    fn = torch.compile(model) if compile else model
    model.train()

    def step():
        with compile_errors(compile):
            if opt is None:
                with torch.no_grad(), ctx:
                    fn(x)
                return
            with ctx:
                loss = fn(input_ids=x, labels=x).loss if hf_model else fn(x, x)[1]
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def timed(fn):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(a, b):
    """Per-pair ratios time(a) / time(b) over `pairs` pairs, a and b alternating (the order flips
    every pair, so neither always runs right after the other), after two warm-up calls of each
    (the allocator and the optimiser's state settle in the first steps)."""
    a(), b(), a(), b()
    ratios = []
    for i in range(pairs):
        if i % 2 == 0:
            ta, tb = timed(a), timed(b)
        else:
            tb, ta = timed(b), timed(a)
        ratios.append(ta / tb)
    return ratios


def bench_step(method, T):
    model = build(method)
    reset_peak()
    before = memory_mb(peak=False)  # the model; the step adds activations, gradients, optimiser state
    step = train_step(model, batch_size, T)
    step()  # warm-up (and compilation)
    dt = sum(timed(step) for _ in range(steps)) / steps
    trains = any(p.requires_grad for p in model.parameters())
    return dict(method=method, T=T, ms=dt * 1000, tok_s=batch_size * T / dt, peak_mb=memory_mb(peak=True),
                step_mb=memory_mb(peak=True) - before,
                mfu=(flops_per_token(model, T) * batch_size * T / dt / peak) if peak and trains else None)


def generate_fn(model, prompt, use_cache=True, hf_model=False):
    model.eval()
    if hf_model:  # min_new_tokens: a random model may emit the end-of-text token; make both emit gen_tokens
        return lambda: model.generate(prompt, max_new_tokens=gen_tokens, min_new_tokens=gen_tokens, do_sample=False,
                                      pad_token_id=0)
    return lambda: model.generate(prompt, gen_tokens, temperature=0, use_cache=use_cache)


def summary(ratios):
    return dict(median=statistics.median(ratios), low=min(ratios), high=max(ratios), pairs=ratios)


def show(label, r, floor=None):
    floor = f"   arithmetic's floor {floor:.2f}" if floor is not None else ""
    print(f"{label:<52}{r['median']:>6.2f}  ({r['low']:.2f}-{r['high']:.2f} over {len(r['pairs'])} pairs){floor}", flush=True)


if only:
    method, T = only.split(":")
    print(json.dumps(bench_step(method, int(T))))
    sys.exit(0)

name = torch.cuda.get_device_name(device) if device_type == "cuda" else "CPU"
print(f"device {device} ({name}), dtype {dtype}, compile {compile}, torch {torch.__version__}, "
      f"threads {torch.get_num_threads()}; {family} n_layer {n_layer}, n_head {n_head}, n_kv_head {n_kv_head or n_head}, "
      f"n_embd {n_embd}, n_inner {n_inner or 4 * n_embd}, vocab {vocab_size}, rank {rank}; LoRA rank "
      f"{lora_rank or 2 * rank} on {lora_targets}; gradient checkpointing {gradient_checkpointing}")
rows = []
method_list = methods.split(",") if methods else []
if explicit and "difflora" in method_list:
    method_list.insert(method_list.index("difflora") + 1, "difflora-explicit")
if method_list:
    print(f"\n1. one process per row, batch {batch_size}, {steps} steps each")
    print(f"{'method':<18}{'T':>6}{'step ms':>10}{'tok/s':>10}{'MFU':>8}{'peak MB':>10}{'step MB':>10}")
for T in (int(t) for t in seq_lens.split(",")):
    for method in method_list:
        res = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--only={method}:{T}"],
                             capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"error: {method} at T={T} failed:\n{res.stderr[-3000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{method:<18}{T:>6}{r['ms']:>10.1f}{r['tok_s']:>10,.0f}{mfu:>8}{r['peak_mb']:>10,.0f}{r['step_mb']:>10,.0f}", flush=True)
by = {(r["method"], r["T"]): r for r in rows}
for T in (int(t) for t in seq_lens.split(",")):
    if ("difflora-explicit", T) in by and by["difflora", T]["step_mb"] >= 1:
        e, f = by["difflora-explicit", T], by["difflora", T]
        print(f"T={T}: DiffLoRA explicit / fused step memory {e['step_mb'] / f['step_mb']:.2f}")

ratios = {}
if shapes or (gen and hf):
    print(f"\n2. ratios of times, the contenders interleaved in one process: median (lowest-highest) of {pairs} pairs")
for B, T in shapes:
    ours, theirs = build("none"), build_hf(lora=False) if hf else None
    if theirs is not None:
        r = ratios[f"forward/hf {B}x{T}"] = summary(interleaved(forward_fn(ours, B, T), forward_fn(theirs, B, T, hf_model=True)))
        show(f"our forward / transformers' forward, B={B} T={T}", r)
    del ours, theirs
    lora, diff = build("lora"), build("difflora")
    floor = flops_per_token(diff, T) / flops_per_token(lora, T)
    r = ratios[f"difflora/lora {B}x{T}"] = summary(interleaved(train_step(diff, B, T), train_step(lora, B, T)))
    show(f"DiffLoRA / LoRA step, B={B} T={T}", r, floor)
    peft = build_hf(lora=True) if hf and lora_targets == "q,k" and not lora_rank else None
    if peft is not None:
        r = ratios[f"lora/peft {B}x{T}"] = summary(interleaved(train_step(lora, B, T), train_step(peft, B, T, hf_model=True)))
        show(f"our LoRA / transformers+PEFT LoRA step, B={B} T={T}", r)
    del lora, diff, peft
if gen and hf:
    ours, theirs = build("none"), build_hf(lora=False)
    if theirs is not None:
        prompt = torch.randint(0, vocab_size, (1, gen_prompt), device=device)
        with torch.no_grad():
            same = torch.equal(generate_fn(ours, prompt)(), generate_fn(theirs, prompt, hf_model=True)())
        r = ratios["generate/hf"] = summary(interleaved(generate_fn(theirs, prompt, hf_model=True), generate_fn(ours, prompt)))
        show("our cached generation, tokens/s / transformers'", r)
        print(f"  ({gen_tokens} greedy tokens after {gen_prompt}, batch 1; same tokens as transformers: {same})")
    del ours, theirs

gen_rows = []
if gen:
    print(f"\n3. generation of {gen_tokens} tokens after a {gen_prompt}-token prompt, batch 1, greedy")
    print(f"{'method':<18}{'cached s':>10}{'uncached s':>12}{'speedup':>9}")
    for method in gen_methods.split(","):
        model = build(method)
        prompt = torch.randint(0, vocab_size, (1, gen_prompt), device=device)
        with ctx:
            cached, uncached = timed(generate_fn(model, prompt)), timed(generate_fn(model, prompt, use_cache=False))
        gen_rows.append(dict(method=method, tokens=gen_tokens, cached_s=cached, uncached_s=uncached, speedup=uncached / cached))
        print(f"{method:<18}{cached:>10.2f}{uncached:>12.2f}{uncached / cached:>8.1f}x", flush=True)
load = None
if gguf:
    from tokenizer import get_tokenizer
    t0 = time.perf_counter()
    with user_errors():
        loaded = GPT.from_pretrained(gguf)
        get_tokenizer(gguf)
    load = dict(file=gguf, seconds=time.perf_counter() - t0, parameters=loaded.get_num_params(non_embedding=False))
    print(f"\n4. loading {gguf} (GGUF: reading, dequantising to float32, the tokenizer): {load['seconds']:.1f} s "
          f"for {load['parameters']:,} parameters", flush=True)
harness_ratios = {}
if harness:
    from analysis.harness_lm import NanoLM
    from checkpoints import checkpoint_path
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    with user_errors():
        ours, path = NanoLM(harness, batch_size=8, device=device), checkpoint_path(harness)
        theirs = HFLM(pretrained=os.path.dirname(path), gguf_file=os.path.basename(path), device=device, batch_size=8,
                      dtype="float32") if path.endswith(".gguf") else HFLM(pretrained=path, device=device, batch_size=8,
                                                                            dtype="float32")
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "analysis", "tasks", "capitals.jsonl")) as f:
        docs = [json.loads(line) for line in f if line.strip()]
    ask = "Question: What is the capital of {}?\nAnswer:"
    kinds = {"loglikelihood": [(ask.format(d["country"]), " " + c) for d in docs for c in d["choices"]],  # nano_capitals_mc's
             "loglikelihood_rolling": [(open(__file__).read()[i:i + 2000],) for i in range(0, 8000, 2000)],  # code as text
             "generate_until": [(ask.format(d["country"]), dict(until=["\n"], max_gen_toks=10, do_sample=False))
                                for d in docs[:8]]}
    print(f"\n5. lm-eval requests on {harness}, NanoLM / HFLM (batch 8 both), interleaved: median (lowest-highest) of "
          f"{pairs} pairs")
    for kind, args in kinds.items():
        reqs = [Instance(kind, {}, a, i) for i, a in enumerate(args)]
        call = lambda lm: (lambda: getattr(lm, kind)(reqs, disable_tqdm=True))
        a, b = call(ours)(), call(theirs)()
        if kind == "generate_until":
            apart = f"the same generations: {a == b}"
        else:
            pick = (lambda r: r[0]) if kind == "loglikelihood" else (lambda r: r)
            apart = f"largest |difference| {max(abs(pick(x) - pick(y)) for x, y in zip(a, b)):.2e} nats"
            if kind == "loglikelihood":
                apart += f", the same is_greedy: {[x[1] for x in a] == [y[1] for y in b]}"
        r = harness_ratios[kind] = summary(interleaved(call(ours), call(theirs)))
        show(f"{kind} ({len(reqs)} requests), time", r)
        print(f"  {apart}")
if out:
    with open(out, "w") as f:
        json.dump(dict(device=name, dtype=dtype, compile=compile, torch=torch.__version__, settings=config,
                       steps=rows, ratios=ratios, generation=gen_rows, load=load, harness=harness_ratios), f, indent=1)
