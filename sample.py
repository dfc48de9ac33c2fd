"""
Generate text with a fine-tuned model from train.py, or with a plain GPT-2.

    python sample.py                                          # the checkpoint in out-shakespeare-difflora
    python sample.py --out_dir=out-lora --start="ROMEO:" --temperature=0
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt # a base model, no checkpoint
"""

import sys
from contextlib import nullcontext

import tiktoken
import torch

from configurator import configure
from difflora import load_trained

# -----------------------------------------------------------------------------
out_dir = "out-shakespeare-difflora"
init_from = "out_dir"  # 'out_dir': the checkpoint there (an adapter on its base, or a full model); or a GPT-2 id/directory
base = ""  # for an adapter: the base model to put it on ('' = the one recorded in the adapter file)
start = "\n"  # the prompt, or FILE:path to read it from a file
num_samples = 3
max_new_tokens = 200
temperature = 0.8  # 0: greedy
top_k = 200  # 0: off
top_p = 1.0  # 1.0: off
seed = 1337
device = "auto"
dtype = "auto"  # auto: bf16 on a GPU that supports it, else fp32
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
globals().update(configure(config, sys.argv[1:]))

torch.manual_seed(seed)
if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
device_type = "cuda" if device.startswith("cuda") else "cpu"
if dtype == "auto":
    dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)

try:
    model = load_trained(out_dir if init_from == "out_dir" else init_from, base)
except (OSError, ValueError) as e:
    raise SystemExit(f"error: {e}")
model.eval().to(device)

enc = tiktoken.get_encoding("gpt2")
if start.startswith("FILE:"):
    with open(start[5:], encoding="utf-8") as f:
        start = f.read()
ids = enc.encode(start, allowed_special={"<|endoftext|>"})
if not ids:
    raise SystemExit("error: the prompt is empty; pass --start=TEXT or --start=FILE:path")
if len(ids) > model.config.block_size:
    raise SystemExit(f"error: the prompt is {len(ids)} tokens, longer than the model's context of "
                     f"{model.config.block_size}; shorten it")
if max(ids, default=0) >= model.config.vocab_size:
    raise SystemExit(f"error: the prompt has token ids beyond the model's vocabulary of {model.config.vocab_size}")
x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]

with torch.no_grad(), ctx:
    for _ in range(num_samples):
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None,
                           top_p=top_p if top_p < 1.0 else None)
        print(enc.decode(y[0].tolist()))
        print("---------------")
