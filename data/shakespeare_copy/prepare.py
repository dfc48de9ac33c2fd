"""
Pretraining data for a baby GPT-2 on a CPU: tiny-shakespeare (data/shakespeare) with generated
"copy documents" mixed into the training split. A copy document is a random run of tokens
written twice, <|endoftext|> S S, with S of len_min..len_max tokens drawn uniformly from an
alphabet: the `top` most frequent tokens of the shakespeare training text, plus the tokens that
spell the numbers 0..9999 after a space. The second S can only be predicted by finding the
first one and copying what came next: an induction head, the circuit retrieval needs. Fifteen
minutes of shakespeare alone (about a million tokens) do not grow one.

Why this alphabet: a model copies a token well only once its embedding has grown distinct from
the rest, which takes many occurrences; drawn from all 50,257 tokens (about 6 occurrences each
here), no copying appeared in 400 iterations. Numbers because the lab's needle task asks for
4-digit codes, and shakespeare holds 1 of the 986 tokens that spell them.

    python data/shakespeare_copy/prepare.py        # runs data/shakespeare/prepare.py first when its tokens are missing
    python train.py --dataset=shakespeare_copy ...

Writes train.bin (shakespeare and copy documents interleaved), train_mask.bin (0 on the
<|endoftext|> and the first S of each copy document: random, nothing to learn), val.bin (shakespeare's val split
alone, so the val loss is a language-modelling loss), and meta.json with two reference losses
on that val split: the uniform guess ln 50257, and the cross-entropy of the training text's
unigram distribution (add-one smoothed), the best a model that ignores context can do.
"""

import argparse
import json
import math
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root
from configurator import ArgumentParser, user_errors  # noqa: E402
from tokenizer import get_tokenizer, token_meta  # noqa: E402
SOURCE = os.path.join(os.path.dirname(HERE), "shakespeare", "gpt2")
EOT = 50256
VOCAB = 50257

parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--copy_fraction", type=float, default=0.5, help="share of the training tokens in copy documents")
parser.add_argument("--len_min", type=int, default=8, help="shortest repeated run S, in tokens")
parser.add_argument("--len_max", type=int, default=48, help="longest repeated run S, in tokens")
parser.add_argument("--top", type=int, default=2000,
                    help="copy documents draw from this many most frequent text tokens, and numbers (50257: every token)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--source", default=SOURCE, help="folder with shakespeare's train.bin and val.bin")
parser.add_argument("--tokenizer", default="gpt2", help="a base model with GPT-2's tokenizer (the baby model's)")
parser.add_argument("--out_dir", default=os.path.join(HERE, "gpt2"))
args = parser.parse_args()
if not 0 <= args.copy_fraction < 1:
    parser.error(f"--copy_fraction must be in [0, 1), got {args.copy_fraction}")
if args.top < 1:
    parser.error(f"--top must be at least 1, got {args.top}")
if not 1 <= args.len_min <= args.len_max:
    parser.error(f"need 1 <= --len_min <= --len_max, got {args.len_min} and {args.len_max}")
paths = {split: os.path.join(args.source, f"{split}.bin") for split in ("train", "val")}
if args.source == SOURCE and not all(os.path.exists(p) for p in paths.values()):  # made from shakespeare's one kept text
    script = os.path.join(os.path.dirname(HERE), "shakespeare", "prepare.py")
    if subprocess.run([sys.executable, script, f"--out_dir={SOURCE}"]).returncode != 0:
        raise SystemExit(f"error: {script} failed; run it by hand (see its --help)")
if not all(os.path.exists(p) for p in paths.values()):
    raise SystemExit(f"error: no {paths['train']} / {paths['val']}: run python data/shakespeare/prepare.py first "
                     f"(offline: --input PATH of tiny-shakespeare's input.txt)")
text = np.fromfile(paths["train"], dtype=np.uint16).astype(np.int64)
val = np.fromfile(paths["val"], dtype=np.uint16).astype(np.int64)
with user_errors():
    enc = get_tokenizer(args.tokenizer)
if enc.name != "gpt2":
    parser.error(f"--tokenizer {args.tokenizer}: the copy documents are made of GPT-2 tokens, for the baby GPT-2")
numbers = {t for n in range(10_000) for t in enc.encode_ordinary(f" {n}")}
frequent = np.argsort(-np.bincount(text, minlength=VOCAB), kind="stable")[:args.top]
alphabet = np.array(sorted((set(frequent.tolist()) | numbers) - {EOT}))  # the tokens a copy document draws from

# interleave: cut the text at random places and put one copy document into each cut, until the
# documents hold copy_fraction of all tokens
rng = np.random.default_rng(args.seed)
n_copy = int(len(text) * args.copy_fraction / (1 - args.copy_fraction))
docs, total = [], 0
while total < n_copy:
    s = rng.choice(alphabet, size=rng.integers(args.len_min, args.len_max + 1))
    docs.append(s)
    total += 1 + 2 * len(s)
cuts = np.sort(rng.choice(len(text), size=len(docs), replace=False))
tokens, mask, start = [], [], 0
for cut, s in zip(cuts, docs):
    tokens += [text[start:cut], [EOT], s, s]
    mask += [np.ones(cut - start, np.uint8), np.zeros(1 + len(s), np.uint8), np.ones(len(s), np.uint8)]
    start = cut
tokens.append(text[start:])
mask.append(np.ones(len(text) - start, np.uint8))
tokens, mask = np.concatenate(tokens).astype(np.uint16), np.concatenate(mask)
os.makedirs(args.out_dir, exist_ok=True)
tokens.tofile(os.path.join(args.out_dir, "train.bin"))
mask.tofile(os.path.join(args.out_dir, "train_mask.bin"))
val.astype(np.uint16).tofile(os.path.join(args.out_dir, "val.bin"))

# reference losses on the val split (nats per token)
counts = np.bincount(text, minlength=VOCAB) + 1.0  # add-one: a val token unseen in training still gets mass
unigram_val = float(-np.log(counts[val] / counts.sum()).mean())
meta = dict(**token_meta(enc, "gpt2"), train_tokens=len(tokens), val_tokens=len(val),
            text_tokens=len(text), copy_documents=len(docs), copy_tokens=len(tokens) - len(text),
            alphabet=len(alphabet), len_min=args.len_min, len_max=args.len_max, seed=args.seed,
            uniform_loss=math.log(VOCAB), unigram_val_loss=unigram_val)
with open(os.path.join(args.out_dir, "meta.json"), "w") as f:
    json.dump(meta, f, indent=2)
print(f"train {len(tokens):,} tokens ({len(text):,} of shakespeare, {len(tokens) - len(text):,} in {len(docs):,} copy "
      f"documents over {len(alphabet):,} distinct tokens), val {len(val):,} tokens of shakespeare, in {args.out_dir}")
print(f"reference val losses: uniform {meta['uniform_loss']:.3f}, unigram of the training text {unigram_val:.3f}")
