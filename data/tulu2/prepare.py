"""
The paper's fine-tuning data, the Tulu 2 SFT mixture (allenai/tulu-v2-sft-mixture on the hub:
326,154 conversations in parquet files, columns dataset, id, messages), as chats of a base model
for train.py: each conversation rendered in the base's chat format and tokenised with its
tokenizer (tokenizer.py's Tokenizer.chat, equal to transformers' apply_chat_template), only the
assistant's tokens counted in the loss.

    pip install pyarrow                                            # reading parquet needs it: this script alone does
    python data/tulu2/prepare.py                                   # download, then prepare for Llama-3.2-1B-Instruct
    python data/tulu2/prepare.py --input='/data/tulu/train-*.parquet'   # local parquet files, nothing downloaded
    python data/tulu2/prepare.py --tokenizer=smollm2               # for SmolLM2-135M-Instruct (ChatML)

The parquet files are kept once, in source/ here (--source_dir): downloaded there, or linked
(copied across file systems) there from --input, and every base's chats are made from them (a
later run, or train.py preparing them for another tokenizer, needs neither --input nor the hub).

Writes into a folder here named after the tokenizer, as train.py expects (train.py runs this
script itself when the folder is missing):
  train.bin, val.bin                  the conversations one after another (uint32 for Llama 3's vocabulary)
  train_mask.bin, val_mask.bin        uint8, 1 where a target counts: an assistant turn's content and its end token
  train_offsets.bin, val_offsets.bin  int64, n+1 entries: example i is tokens offsets[i]:offsets[i+1]
  meta.json                           the tokenizer and the counts printed at the end

Long conversations are cut as open-instruct (the paper's trainer) cuts them: one longer than
--max_tokens (4,096) keeps its first max_tokens tokens and their mask, so an assistant turn cut
short counts up to the cut, without its end token; one left with no counted token (the cut came
before the first answer, or it has no answer) is dropped. The kept examples are shuffled once with
--seed; the last --n_val of them are held out for the validation loss (the paper holds none out),
and train.py reads the rest in file order, epoch after epoch.
"""

import argparse
import glob
import os
import shutil
import sys
import time

import numpy as np

REPO = "allenai/tulu-v2-sft-mixture"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root
from configurator import ArgumentParser, user_errors  # noqa: E402
from checkpoints import save_atomically, save_json  # noqa: E402
from tokenizer import get_tokenizer, token_meta  # noqa: E402

parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--input", nargs="+", help="local parquet files or globs, in Tulu's format (default: download "
                                               f"{REPO} into the Hugging Face cache)")
parser.add_argument("--tokenizer", default="meta-llama/Llama-3.2-1B-Instruct",
                    help="the base model whose chat format and tokenizer to use (a hub id, a folder, smollm2, a .gguf file)")
parser.add_argument("--max_tokens", type=int, default=4096, help="longer conversations keep their first max_tokens tokens")
parser.add_argument("--n_val", type=int, default=1000, help="examples held out for the validation loss")
parser.add_argument("--seed", type=int, default=0, help="the shuffle of the examples")
parser.add_argument("--out_dir", help="where the files go (default: a folder here named after the tokenizer)")
parser.add_argument("--source_dir", default=os.path.join(HERE, "source"),
                    help="where the parquet files are kept, once for every tokenizer (default: source/ here)")
args = parser.parse_args()

if args.max_tokens < 2 or args.n_val < 1:
    parser.error(f"--max_tokens must be at least 2 and --n_val at least 1, got {args.max_tokens} and {args.n_val}")
try:
    import pyarrow.parquet as pq
except ImportError:
    raise SystemExit("error: reading the parquet files needs pyarrow, an optional dependency of this script alone: "
                     "pip install pyarrow") from None
with user_errors():
    enc = get_tokenizer(args.tokenizer)
if enc.chat_format is None:
    raise SystemExit(f"error: the base {args.tokenizer} has no chat format (its tokenizer has no ChatML or Llama 3 chat "
                     f"template), so its conversations cannot be rendered: prepare the data for an instruct model, e.g. "
                     f"--tokenizer=meta-llama/Llama-3.2-1B-Instruct or --tokenizer=smollm2")


def kept():
    """The parquet files kept in source_dir (downloaded there, or given once with --input)."""
    return sorted(glob.glob(os.path.join(args.source_dir, "**", "*.parquet"), recursive=True))


def open_parquets(files):
    """{path: the open file}, every one checked before any is read."""
    parquets = {}
    for path in files:
        try:
            parquets[path] = pq.ParquetFile(path)
        except Exception as e:
            raise SystemExit(f"error: {path} is not a readable parquet file ({type(e).__name__}: {e})") from None
        names = parquets[path].schema_arrow.names
        if "messages" not in names:
            raise SystemExit(f"error: {path} has no 'messages' column (its columns: {', '.join(names)}): Tulu's format "
                             f"holds each conversation as a list of {{role, content}} in 'messages'")
    return parquets


if args.input:  # checked, then kept beside this script: hard links, or copies across file systems
    given = []
    for pattern in args.input:
        found = sorted(glob.glob(pattern))
        if not found:
            raise SystemExit(f"error: --input {pattern} matches no file")
        given += found
    open_parquets(given)
    os.makedirs(args.source_dir, exist_ok=True)
    given = [os.path.realpath(p) for p in given]
    for path in kept():  # the source is what was given last (a given file that is kept already stays)
        if os.path.realpath(path) not in given:
            os.remove(path)
    for i, path in enumerate(given):
        if os.path.commonpath([path, os.path.realpath(args.source_dir)]) == os.path.realpath(args.source_dir):
            continue  # kept already
        dest = os.path.join(args.source_dir, f"{i:05d}-{os.path.basename(path)}")
        try:
            os.link(path, dest)
        except OSError:
            save_atomically(dest, lambda tmp: shutil.copyfile(path, tmp))
    print(f"kept {len(given)} parquet file(s) in {args.source_dir}: every tokenizer's chats are made from them")
elif not kept():
    from huggingface_hub import snapshot_download
    try:
        snapshot_download(REPO, repo_type="dataset", allow_patterns=["data/*.parquet"], local_dir=args.source_dir)
    except Exception as e:
        raise SystemExit(f"error: could not download {REPO} ({type(e).__name__}): with no connection to the hub, "
                         f"pass its parquet files with --input") from None
parquets = open_parquets(kept())

t0 = time.time()
examples, n_read, n_cut, n_empty, tokens_before = [], 0, 0, 0, 0
for parquet in parquets.values():
    for batch in parquet.iter_batches(columns=["messages"], batch_size=1000):
        for messages in batch.column(0).to_pylist():
            n_read += 1
            ids, mask = enc.chat(messages)
            tokens_before += len(ids)
            if len(ids) > args.max_tokens:
                n_cut += 1
                ids, mask = ids[:args.max_tokens], mask[:args.max_tokens]
            if not mask[1:].any():  # the first token is never a target
                n_empty += 1
                continue
            examples.append((np.array(ids, dtype=np.uint32), mask))
            if n_read % 20_000 == 0:
                print(f"{n_read:,} conversations, {time.time() - t0:.0f} s")
if len(examples) <= args.n_val:
    raise SystemExit(f"error: only {len(examples)} examples with assistant tokens; --n_val={args.n_val} must be smaller")

meta = token_meta(enc, args.tokenizer)
out_dir = args.out_dir or os.path.join(HERE, enc.name)
os.makedirs(out_dir, exist_ok=True)
order = np.random.default_rng(args.seed).permutation(len(examples))
counts = {}
for split, picked in (("train", order[:-args.n_val]), ("val", order[-args.n_val:])):
    lengths = np.array([len(examples[i][0]) for i in picked])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate([examples[i][0] for i in picked]).astype(meta["dtype"])
    mask = np.concatenate([examples[i][1] for i in picked]).astype(np.uint8)
    # the mask and offsets first: train.py takes the folder as prepared once train.bin is there
    save_atomically(os.path.join(out_dir, f"{split}_mask.bin"), mask.tofile)
    save_atomically(os.path.join(out_dir, f"{split}_offsets.bin"), offsets.tofile)
    save_atomically(os.path.join(out_dir, f"{split}.bin"), tokens.tofile)
    pairs = lengths[:len(lengths) // 2 * 2].reshape(-1, 2)  # train.py's micro-batches of 2, padded to the longer
    counts[split] = dict(examples=len(picked), tokens=int(lengths.sum()), counted=int(mask.sum()),
                         real_fraction_at_batch_2=round(float(pairs.sum() / (2 * pairs.max(1)).sum()), 4) if len(pairs) else 1.0)
meta.update(source=[os.path.basename(f) for f in parquets], max_tokens=args.max_tokens, seed=args.seed, n_val=args.n_val,
            read=n_read, truncated=n_cut, dropped=n_empty, tokens_before_truncation=tokens_before, **counts)
save_json(os.path.join(out_dir, "meta.json"), meta)
kept_tokens = counts["train"]["tokens"] + counts["val"]["tokens"]
print(f"{n_read:,} conversations read from {len(parquets)} file(s) in {time.time() - t0:.0f} s; {n_cut:,} cut to "
      f"{args.max_tokens:,} tokens, {n_empty:,} dropped with no assistant token; kept {len(examples):,} "
      f"({len(examples) / n_read:.1%}) and {kept_tokens:,} of {tokens_before:,} tokens ({kept_tokens / tokens_before:.1%})")
for split, c in counts.items():
    print(f"{split}: {c['examples']:,} examples, {c['tokens']:,} tokens, {c['counted']:,} counted "
          f"({c['counted'] / c['tokens']:.1%}); in micro-batches of 2, {c['real_fraction_at_batch_2']:.1%} of the "
          f"padded tokens are real")
print(f"one epoch at 64 examples per iteration (the paper's batch): {counts['train']['examples'] // 64:,} iterations; "
      f"in {out_dir}")
