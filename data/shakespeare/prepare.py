"""
Tiny-shakespeare tokenized for a base model into train.bin / val.bin, split 90/10 by characters
as nanoGPT does: with GPT-2's BPE, 301,966 train and 36,059 val tokens.

    python data/shakespeare/prepare.py                         # GPT-2's tokens: data/shakespeare/gpt2/
    python data/shakespeare/prepare.py --tokenizer=smollm2     # SmolLM2's (from its GGUF, no download)
    python data/shakespeare/prepare.py --input PATH            # offline: a local copy of input.txt

The text is kept once, as input.txt in this folder (--source_dir): downloaded on the first run,
or copied there from --input, and every tokenizer's tokens are made from that one copy (train.py
prepares them for a new base's tokenizer with no download). The tokens go into a folder per
tokenizer (meta.json records which one). A run that finds the tokens there already, made from
the same text, changes nothing.
"""

import argparse
import hashlib
import json
import os
import sys
import urllib.request

import numpy as np

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root
from checkpoints import save_atomically  # noqa: E402
from configurator import ArgumentParser, user_errors  # noqa: E402
from tokenizer import get_tokenizer, read_meta, token_meta  # noqa: E402

parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--input", help="path of a local input.txt (tiny-shakespeare, 1,115,394 characters)")
parser.add_argument("--tokenizer", default="gpt2", help="the base model whose tokenizer to use (gpt2, smollm2, a folder, "
                                                        "a .gguf file, a hub id)")
parser.add_argument("--out_dir", help="where train.bin, val.bin and meta.json go (default: a folder here named after "
                                      "the tokenizer)")
parser.add_argument("--source_dir", default=HERE, help="where the text is kept, once for every tokenizer (default: here)")
args = parser.parse_args()

if args.input and not os.path.exists(args.input):
    raise SystemExit(f"error: --input {args.input} does not exist")
with user_errors():
    enc = get_tokenizer(args.tokenizer)
out_dir = args.out_dir or os.path.join(HERE, enc.name)
source = os.path.join(args.source_dir, "input.txt")  # the one copy every tokenizer's tokens are made from
old = read_meta(out_dir)
prepared = old.get("tokenizer") == enc.name and all(os.path.exists(os.path.join(out_dir, f"{s}.bin")) for s in ("train", "val"))
if args.input:
    with open(args.input, "rb") as f:
        data = f.read()
elif os.path.exists(source):
    data = None
elif prepared:  # the tokens are here: nothing to fetch
    print(f"{out_dir} already holds tiny-shakespeare in {enc.name} tokens; nothing to do")
    sys.exit(0)
else:
    print(f"downloading {URL} into {source}")
    try:
        with urllib.request.urlopen(URL, timeout=30) as r:
            data = r.read()
    except OSError as e:
        raise SystemExit(f"error: could not download tiny-shakespeare from {URL} ({e}). "
                         f"Download input.txt elsewhere and run: python {__file__} --input PATH")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(tmp):
    with open(tmp, "wb") as f:
        f.write(data)


if data is not None and not (os.path.exists(source) and read(source) == data):
    os.makedirs(args.source_dir, exist_ok=True)
    save_atomically(source, write)
    print(f"kept the text as {source}: every tokenizer's tokens are made from it")
raw = read(source)
if prepared and old.get("source_sha256") == hashlib.sha256(raw).hexdigest():
    print(f"{out_dir} already holds this input.txt in {enc.name} tokens; nothing to do")
    sys.exit(0)
text = raw.decode("utf-8")
n = len(text)
train_text, val_text = text[: int(n * 0.9)], text[int(n * 0.9):]

meta = token_meta(enc, args.tokenizer)
os.makedirs(out_dir, exist_ok=True)
counts = {}
for split, part in (("train", train_text), ("val", val_text)):
    ids = np.array(enc.encode_ordinary(part), dtype=meta["dtype"])
    ids.tofile(os.path.join(out_dir, f"{split}.bin"))
    counts[split] = len(ids)
meta.update(characters=n, train_tokens=counts["train"], val_tokens=counts["val"],
            source=os.path.abspath(source), source_sha256=hashlib.sha256(raw).hexdigest())
with open(os.path.join(out_dir, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
print(f"{n:,} characters -> train {counts['train']:,} tokens, val {counts['val']:,} tokens in {out_dir}")
