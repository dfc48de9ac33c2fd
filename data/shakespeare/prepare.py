"""
Tiny-shakespeare tokenized with GPT-2's BPE (tiktoken) into train.bin / val.bin (uint16),
split 90/10 by characters as nanoGPT does: 301,966 train and 36,059 val tokens.

    python data/shakespeare/prepare.py                      # uses input.txt here, else downloads it
    python data/shakespeare/prepare.py --input PATH         # a local copy of input.txt
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
from configurator import ArgumentParser  # noqa: E402
from model import gpt2_encoding  # noqa: E402

parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--input", help="path of a local input.txt (tiny-shakespeare, 1,115,394 characters)")
parser.add_argument("--out_dir", default=HERE, help="where train.bin, val.bin and meta.json go (default: this folder)")
args = parser.parse_args()

source = args.input or os.path.join(args.out_dir, "input.txt")
if not os.path.exists(source):
    if args.input:
        raise SystemExit(f"error: --input {args.input} does not exist")
    print(f"downloading {URL}")
    try:
        with urllib.request.urlopen(URL, timeout=30) as r:
            data = r.read()
    except OSError as e:
        raise SystemExit(f"error: could not download tiny-shakespeare from {URL} ({e}). "
                         f"Download input.txt elsewhere and run: python {__file__} --input PATH")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(source, "wb") as f:
        f.write(data)
with open(source, "rb") as f:
    raw = f.read()
text = raw.decode("utf-8")
n = len(text)
train_text, val_text = text[: int(n * 0.9)], text[int(n * 0.9):]

enc = gpt2_encoding()
os.makedirs(args.out_dir, exist_ok=True)
counts = {}
for split, part in (("train", train_text), ("val", val_text)):
    ids = np.array(enc.encode_ordinary(part), dtype=np.uint16)  # GPT-2's 50,257 ids fit in uint16
    ids.tofile(os.path.join(args.out_dir, f"{split}.bin"))
    counts[split] = len(ids)
meta = dict(encoding="gpt2", vocab_size=enc.n_vocab, dtype="uint16", characters=n,
            train_tokens=counts["train"], val_tokens=counts["val"],
            source=os.path.abspath(source), source_sha256=hashlib.sha256(raw).hexdigest())
with open(os.path.join(args.out_dir, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
print(f"{n:,} characters -> train {counts['train']:,} tokens, val {counts['val']:,} tokens in {args.out_dir}")
