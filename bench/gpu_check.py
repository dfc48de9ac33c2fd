"""
The first command on a GPU machine: does the project run here, and how fast. Each check runs on
its own (a crash fails its row, not the table); the table is printed and written to
results/gpu_check_<device>.txt, and the exit code is 1 if any check failed.

    python bench/gpu_check.py                                  # one GPU: sized for about 8 minutes on an H100 or H200 (estimated)
    python bench/gpu_check.py --device=cpu --quick=True --out=out-gpu-check/cpu.txt   # the same checks, tiny shapes

  check   what it runs                                                 it fails when
  tests   the test suite's GPU-marked tests (pytest -m gpu)            a test fails
  bf16    a DiffLoRA and a LoRA training step on SmolLM2-135M in bf16  the loss is not within `tolerance` of
          autocast, eager and compiled, beside fp32 on the same batch  fp32's, or a gradient is not finite
  speed   bench/speed.py at SmolLM2-135M's and Llama-3.2-1B's shapes   a run fails, or our greedy tokens differ
          (random weights): our forward, LoRA step and cached          from transformers'
          generation against transformers + PEFT, interleaved;
          DiffLoRA / LoRA against the FLOP floor
  paper   the paper's step at Llama-3.2-1B's shape (config/bench_paper  the run fails, or its peak memory is
          .py: 2 x 4,096 tokens, checkpointing, chunked loss): time,    more than 25% off bench/memory.py's
          MFU and peak memory, beside bench/memory.py's estimate        estimate (results/paper/memory.txt)
  ddp     train.py under torchrun on 2 GPUs over NCCL                  the ranks' trained tensors differ
                                                                       (skipped, saying so, with one GPU)

quick=True swaps every model for a tiny one (and a tiny random Llama for SmolLM2), for a check of
the checks on any machine: the test suite runs it on the CPU.
"""

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configurator import check, configure, resolve_device, user_errors  # noqa: E402
from difflora import APPLY, DiffLoRAConfig, LoRAConfig  # noqa: E402
from model import GPT, GPTConfig, LLAMA  # noqa: E402

# -----------------------------------------------------------------------------
device = "auto"  # auto (the first GPU, else the CPU) | cpu | cuda | cuda:N
checks = "tests,bf16,speed,paper,ddp"  # which checks to run (all, by default)
quick = False  # tiny models instead of SmolLM2 and Llama-3.2-1B's shape: checks the checks, anywhere
compile = True  # also the compiled bf16 step (torch.compile)
tolerance = 0.02  # the bf16 loss's largest relative difference from fp32's on the same batch
timeout = 600  # seconds each external check may run
out = ""  # the table ('' = results/gpu_check_<device>.txt)
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])
globals().update(config)
check(set(checks.split(",")) <= {"tests", "bf16", "speed", "paper", "ddp"}, "checks", checks,
      "a comma-separated subset of tests,bf16,speed,paper,ddp")
check(timeout >= 1, "timeout", timeout, "a number of seconds >= 1")
device, device_type, _, _ = resolve_device(device)
device_name = torch.cuda.get_device_name(device) if device_type == "cuda" else "CPU"
out = out or os.path.join(ROOT, "results", f"gpu_check_{re.sub(r'[^a-z0-9]+', '-', device_name.lower()).strip('-')}.txt")
TINY = dict(family="llama", n_layer=2, n_head=4, n_kv_head=2, n_embd=64, n_inner=96, vocab_size=256)
SMOLLM2 = dict(family="llama", n_layer=30, n_head=9, n_kv_head=3, n_embd=576, n_inner=1536, vocab_size=49152)
LLAMA_1B = dict(family="llama", n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, n_inner=8192, vocab_size=128256)
rows = []  # (check, what, result, status)


def row(check, what, result, status):
    rows.append((check, what, result, status))
    print(f"{check:<7}{what:<40}{status:<6}{result}", flush=True)


def run(*args, env=None):
    """An external check's output (stdout and stderr), its exit code and its time."""
    t0 = time.time()
    try:
        res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **(env or {})})
        return res.stdout + res.stderr, res.returncode, time.time() - t0
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s", -1, time.time() - t0


def last_line(text):
    return (text.strip().splitlines() or [""])[-1][:150]


def shape_args(shape):
    return [f"--{k}={v}" for k, v in shape.items()]


# ----------------------------------------------------------------------------- the checks

def check_tests():
    text, code, dt = run("-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests")
    summary = next((line for line in reversed(text.splitlines()) if " in " in line and ("passed" in line or "skipped" in line
                                                                                      or "failed" in line)), last_line(text))
    row("tests", "pytest -m gpu", f"{summary.strip('= ')} ({dt:.0f} s)", "ok" if code == 0 else "FAIL")


def check_bf16():
    """A training step's loss and gradients in bf16 autocast (eager, compiled) against fp32's, on one batch."""
    torch.manual_seed(0)
    if quick:
        base = GPT(GPTConfig(**LLAMA, **{k: v for k, v in TINY.items() if k != "family"}, block_size=64))
        B, T = 2, 32
    else:
        with user_errors():
            base = GPT.from_pretrained("smollm2")
        B, T = 4, 256
    x = torch.randint(0, base.config.vocab_size, (B, T + 1), device=device)
    for method, adapter in (("difflora", DiffLoRAConfig(dropout=0.0)),
                            ("lora", LoRAConfig(r=32, alpha=64.0, dropout=0.0, targets=("q", "k")))):
        torch.manual_seed(1)
        model = APPLY[method](copy.deepcopy(base), adapter).to(device).train()
        fp32 = None
        for mode in ("fp32", "eager", "compiled"):
            if mode == "compiled" and not compile:
                row("bf16", f"{method} step, compiled", "skipped: --compile=False", "skip")
                continue
            fn = torch.compile(model) if mode == "compiled" else model
            model.zero_grad(set_to_none=True)
            try:
                t0 = time.time()
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=mode != "fp32"):
                    loss = fn(x[:, :-1], x[:, 1:])[1]
                loss.backward()
                if device_type == "cuda":
                    torch.cuda.synchronize()
                dt = time.time() - t0
            except Exception as e:  # compile without a compiler, an unsupported kernel: the row says which
                row("bf16", f"{method} step, {mode}", f"{type(e).__name__}: {last_line(str(e))}", "FAIL")
                continue
            finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
            if mode == "fp32":
                fp32 = loss.item()
                continue
            rel = abs(loss.item() - fp32) / abs(fp32)
            row("bf16", f"{method} step, {mode}", f"loss {loss.item():.4f} vs fp32 {fp32:.4f} ({100 * rel:.2f}%), gradients "
                f"{'finite' if finite else 'NOT finite'}, {dt:.1f} s", "ok" if rel <= tolerance and finite else "FAIL")


def check_speed():
    for label, shape, extra in (("SmolLM2-135M", SMOLLM2, ["--ratio_shapes=1x1024,4x256", "--rank=16"]),
                                ("Llama-3.2-1B", LLAMA_1B, ["--ratio_shapes=1x2048", "--rank=32"])):
        if quick:
            label, shape, extra = "tiny", TINY, ["--ratio_shapes=1x16", "--rank=4", "--pairs=3", "--gen_tokens=4", "--gen_prompt=4"]
        with tempfile.TemporaryDirectory() as tmp:
            text, code, dt = run("bench/speed.py", *shape_args(shape), "--methods=", "--gen_methods=none", f"--device={device}",
                                 f"--out={tmp}/speed.json", *extra)
            if code != 0:
                row("speed", f"{label}'s shape", last_line(text), "FAIL")
                continue
            ratios = json.load(open(f"{tmp}/speed.json"))["ratios"]
        same = "same tokens as transformers: True" in text
        floors = dict(re.findall(r"DiffLoRA / LoRA step, (B=\d+ T=\d+) .*floor (\d+\.\d+)", text))
        for key, r in ratios.items():
            what = {"forward/hf": "our forward / transformers'", "lora/peft": "our LoRA step / transformers+PEFT",
                    "difflora/lora": "DiffLoRA step / LoRA step", "generate/hf": "our generation tok/s / transformers'"}[key.split()[0]]
            shape_text = key.split()[1].replace("x", " x ") if " " in key else ""
            floor = floors.get("B={} T={}".format(*key.split()[1].split("x"))) if key.startswith("difflora") else None
            row("speed", f"{label}: {what} {shape_text}".strip(), f"{r['median']:.2f} ({r['low']:.2f}-{r['high']:.2f}, "
                f"{len(r['pairs'])} pairs)" + (f", FLOP floor {floor}" if floor else ""), "ok")
        row("speed", f"{label}: greedy tokens equal transformers'", str(same), "ok" if same else "FAIL")
        if quick:
            break


def estimate(method):
    """bench/memory.py's estimate (GiB) of the paper's step for config/paper's run of this method,
    checkpointed, as results/paper/memory.txt holds it."""
    config_file = {"difflora": "config/paper/difflora32.py", "lora": "config/paper/lora8.py"}[method]
    text = open(os.path.join(ROOT, "results", "paper", "memory.txt")).read()
    found = re.search(rf"^{re.escape(config_file)}\s+[\d,]+\s+on\s+\S+\s+\S+\s+\S+\s+(\S+)", text, flags=re.M)
    return float(found.group(1))


def check_paper():
    shape = [*shape_args({k: v for k, v in TINY.items() if k != "family"}), "--seq_lens=256", "--ratio_shapes=2x256",
             "--pairs=2"] if quick else []
    with tempfile.TemporaryDirectory() as tmp:
        text, code, dt = run("bench/speed.py", "config/bench_paper.py", *shape, f"--device={device}", f"--out={tmp}/paper.json")
        if code != 0:
            row("paper", "the paper's step", last_line(text), "FAIL")
            return
        steps = json.load(open(f"{tmp}/paper.json"))["steps"]
    for r in steps:
        peak = r["peak_mb"] / 1024
        mfu = f"MFU {100 * r['mfu']:.1f}%, " if r["mfu"] else ""
        if device_type != "cuda" or quick:  # the estimate is of the paper's shape on a GPU's allocator
            verdict, status = "not compared with the estimate: " + ("a tiny shape" if quick else "no GPU allocator"), "ok"
        else:
            est = estimate(r["method"].split("-")[0])
            verdict = f"bench/memory.py's estimate {est:.2f} GiB ({peak / est - 1:+.0%})"
            status = "ok" if abs(peak / est - 1) <= 0.25 else "FAIL"
        row("paper", f"{r['method']}, {r['T']} tokens x 2", f"{r['ms']:.0f} ms, {mfu}peak {peak:.2f} GiB, {verdict}", status)


def check_ddp():
    n = torch.cuda.device_count() if device_type == "cuda" else 0
    if n < 2:
        row("ddp", "torchrun, 2 processes, NCCL", f"skipped: {n} GPU{'s' * (n != 1)} here, DDP needs 2", "skip")
        return
    with tempfile.TemporaryDirectory() as tmp:
        text, code, dt = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                             "--max_iters=4", "--eval_interval=4", "--eval_iters=1", f"--out_dir={tmp}/run")
    same = "all 2 ranks hold identical trainable tensors: True" in text
    row("ddp", "torchrun, 2 processes, NCCL", f"{'identical' if same else last_line(text)} ({dt:.0f} s)",
        "ok" if code == 0 and same else "FAIL")


started = time.time()
print(f"{'check':<7}{'what':<40}{'':<6}result")
CHECKS = dict(tests=check_tests, bf16=check_bf16, speed=check_speed, paper=check_paper, ddp=check_ddp)
for name in checks.split(","):
    try:
        CHECKS[name]()
    except (SystemExit, Exception) as e:  # a check that cannot run is a failed row, and the others still run
        row(name, "(could not run)", f"{type(e).__name__}: {last_line(str(e))}", "FAIL")
failed = [r for r in rows if r[3] == "FAIL"]
lines = [f"# python bench/gpu_check.py {' '.join(sys.argv[1:])}",
         f"# {device_name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {time.strftime('%Y-%m-%d')}, "
         f"{(time.time() - started) / 60:.1f} min; {len(failed)} of {len(rows)} checks failed",
         f"{'check':<7}{'what':<52}{'status':<8}result"] + [f"{c:<7}{w:<52}{s:<8}{r}" for c, w, r, s in rows]
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"\n{len(failed)} of {len(rows)} checks failed; wrote {out} ({(time.time() - started) / 60:.1f} min)")
sys.exit(1 if failed else 0)
