"""
Needle-retrieval training data for train.py: fixed-length examples (see needle.py) with a
loss mask that counts only the answer tokens, so fine-tuning learns to retrieve, not to
model filler text.

    python data/needle/prepare.py                                   # 256-token examples, 3 needles, GPT-2 tokens
    python data/needle/prepare.py --tokenizer=smollm2               # SmolLM2's tokens (from its GGUF, no download)
    python train.py --dataset=needle --block_size=255 ...           # block_size = tokens - 1
    python data/needle/prepare.py --tokens=512 --needles=6 --n_train=4000 --out_dir=data/needle-512
    python data/needle/prepare.py --tokenizer=smollm2 --kinds=single,multikey,multivalue --needles=3-6

Writes train.bin / val.bin (uint16 tokens), train_mask.bin / val_mask.bin (uint8: 1 where a
target counts) and meta.json (example_tokens tells train.py to start windows at example
boundaries) into a folder here named after the tokenizer, as train.py expects. Each example
draws its depth uniformly, its kind from --kinds and its needle count from --needles (a number
or a range such as 3-6) uniformly; validation examples use other seeds.
"""

import argparse
import json
import os
import sys
import random

import numpy as np

from needle import KINDS, make_example

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root
from configurator import ArgumentParser, user_errors  # noqa: E402
from tokenizer import get_tokenizer, token_meta  # noqa: E402

parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--tokens", type=int, default=256, help="tokens per example (train with block_size = tokens - 1)")
parser.add_argument("--needles", default="3", help="needles per example, or a range such as 3-6 (one key is asked about)")
parser.add_argument("--kinds", default="single", help=f"comma-separated kinds of example, drawn uniformly: {', '.join(KINDS)}")
parser.add_argument("--values", type=int, default=3, help="codes of the asked key in a multivalue example")
parser.add_argument("--n_train", type=int, default=2000)
parser.add_argument("--n_val", type=int, default=200)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--tokenizer", default="gpt2", help="the base model whose tokenizer to use (gpt2, smollm2, a folder, "
                                                        "a .gguf file, a hub id)")
parser.add_argument("--out_dir", help="where the files go (default: a folder here named after the tokenizer)")
args = parser.parse_args()

if args.n_train < 1 or args.n_val < 1:
    parser.error(f"--n_train and --n_val must be at least 1, got {args.n_train} and {args.n_val}")
try:
    low, _, high = args.needles.partition("-")
    low, high = int(low), int(high or low)
except ValueError:
    parser.error(f"--needles must be a number or a range such as 3-6, got {args.needles!r}")
if low > high:
    parser.error(f"--needles: the range {args.needles} is empty")
kinds = args.kinds.split(",")
if not all(k in KINDS for k in kinds):
    parser.error(f"--kinds must be a comma-separated list of {', '.join(KINDS)}, got {args.kinds!r}")
with user_errors():
    enc = get_tokenizer(args.tokenizer)
try:  # the checks of make_example (needles 1..30, tokens enough to hold them), before writing anything
    for kind in kinds:
        make_example(enc, 0, args.tokens, low, kind=kind, values=args.values)
        make_example(enc, 0, args.tokens, high, kind=kind, values=args.values)
except ValueError as e:
    parser.error(str(e))
out_dir = args.out_dir or os.path.join(HERE, enc.name)
meta = token_meta(enc, args.tokenizer)
os.makedirs(out_dir, exist_ok=True)
rng = random.Random(args.seed)
for split, n, offset in (("train", args.n_train, 0), ("val", args.n_val, 10_000_000)):
    tokens, mask = [], []
    for i in range(n):
        n = rng.randint(low, high) if high > low else low  # a fixed count draws nothing: the earlier files stay the same
        kind = rng.choice(kinds) if len(kinds) > 1 else kinds[0]
        ex = make_example(enc, args.seed * 100_000_000 + offset + i, args.tokens, n, depth=rng.random(), kind=kind,
                          values=args.values)
        tokens += ex["tokens"]
        mask += [0] * ex["answer_start"] + [1] * (args.tokens - ex["answer_start"])
    np.array(tokens, dtype=meta["dtype"]).tofile(os.path.join(out_dir, f"{split}.bin"))
    np.array(mask, dtype=np.uint8).tofile(os.path.join(out_dir, f"{split}_mask.bin"))
meta.update(example_tokens=args.tokens, needles=args.needles, kinds=args.kinds, values=args.values, n_train=args.n_train, n_val=args.n_val, seed=args.seed)
with open(os.path.join(out_dir, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
print(f"{args.n_train} train and {args.n_val} val examples of {args.tokens} tokens, {args.needles} needles, "
      f"kinds {args.kinds}, in {out_dir}")
