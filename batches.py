"""
train.py's data: a prepared dataset's token files, checked, and the batches read from them.

A dataset is a folder: {split}.bin (uint16 tokens, or uint32 for a vocabulary beyond 65,536:
meta.json says), optionally {split}_mask.bin (uint8, 0 = a target that does not count, such as a
prompt token: it becomes -1, which the loss skips) and meta.json. By what the folder holds, a
batch is made of
  windows         block_size + 1 tokens at random starts of a token stream (text);
  examples        of one length, when meta.json gives example_tokens (then block_size must be
                  example_tokens - 1), drawn at random like windows (the needle data);
  chats           of any length, when {split}_offsets.bin gives their boundaries: read in file
                  order, each once per epoch, cut to block_size + 1 tokens and padded on the right
                  to the longest of the micro-batch (the paper's Tulu 2 data).
Right padding needs no attention mask: under the causal mask no real token sees a later (padding)
one, and padding targets are -1. So each row holds one example, 64 per step as in the paper,
where packing would change the number of steps in an epoch.
"""

import os
import subprocess
import sys

import numpy as np
import torch

from tokenizer import dataset_dir, get_tokenizer, read_meta

SPLITS = ("train", "val")


def prepared_dir(dataset, base, prepare=True):
    """The folder of a dataset's token files for the base model `base`: data/<dataset>/<tokenizer>/
    for a dataset this project prepares (with prepare, its prepare.py runs first when they are
    missing), else the folder `dataset` itself, whose tokens must be the base's tokenizer's."""
    data_dir, script = dataset_dir(dataset, base)
    if script and prepare and not os.path.exists(os.path.join(data_dir, "train.bin")):
        print(f"{data_dir}/train.bin is missing: running {script} for {base}'s tokenizer")
        if subprocess.run([sys.executable, script, f"--tokenizer={base}", f"--out_dir={data_dir}"]).returncode != 0:
            raise OSError(f"{script} failed; run it by hand (see its --help)")
    meta = read_meta(data_dir)
    if not script and "tokenizer" in meta and meta["tokenizer"] != get_tokenizer(base).name:
        raise ValueError(f"{data_dir} holds tokens of the tokenizer {meta['tokenizer']} (made for {meta.get('base', 'gpt2')}), "
                         f"but the base {base} uses {get_tokenizer(base).name}: prepare the data for it, e.g. python "
                         f"data/needle/prepare.py --tokenizer={base} --out_dir=NEW_FOLDER, and pass --dataset=NEW_FOLDER")
    return data_dir


class Batches:

    def __init__(self, data_dir, block_size, batch_size, device, name=None):
        """Check the token files in data_dir against block_size; any mismatch is a ValueError that
        says what to do. name: the dataset as the user gave it, for those messages."""
        self.dir, self.block_size, self.batch_size, self.device = data_dir, block_size, batch_size, device
        self.meta = read_meta(data_dir)
        self.dtype = np.dtype(self.meta.get("dtype", "uint16"))
        self.example_tokens = self.meta.get("example_tokens")
        self.offsets, self.has_mask = {}, {}  # offsets: the n+1 example boundaries of chats, else None
        for split in SPLITS:
            path = os.path.join(data_dir, f"{split}.bin")
            if not os.path.exists(path):
                raise ValueError(f"dataset {name or data_dir!r} not found: no {path}. Prepare it first (e.g. python "
                                 f"data/shakespeare/prepare.py) or pass --dataset=FOLDER with train.bin and val.bin")
            offsets = os.path.join(data_dir, f"{split}_offsets.bin")
            self.offsets[split] = np.fromfile(offsets, dtype=np.int64) if os.path.exists(offsets) else None
            self.has_mask[split] = os.path.exists(os.path.join(data_dir, f"{split}_mask.bin"))
            if self.offsets[split] is None and self.n_tokens(split) <= block_size:
                raise ValueError(f"{path} holds fewer than block_size+1 = {block_size + 1} tokens")
        if self.example_tokens and self.example_tokens != block_size + 1:
            raise ValueError(f"{data_dir} holds examples of {self.example_tokens} tokens; set --block_size={self.example_tokens - 1}")

    @property
    def chats(self):
        """Whether the examples are chats of any length, read in order (else windows or examples, drawn at random)."""
        return self.offsets["train"] is not None

    def n_tokens(self, split):
        return os.path.getsize(os.path.join(self.dir, f"{split}.bin")) // self.dtype.itemsize

    def n_examples(self, split):
        """How many chats a split holds."""
        return len(self.offsets[split]) - 1

    def starts(self, split, shape, generator=None):
        """Random starts (shape) of windows, or of whole examples (at example boundaries)."""
        n = self.n_tokens(split)
        if self.example_tokens:
            return torch.randint(n // self.example_tokens, shape, generator=generator) * self.example_tokens
        return torch.randint(n - self.block_size, shape, generator=generator)

    def get(self, split, ix=None):
        """(x, y), each (batch_size, T) on the device: the windows or examples starting at ix (random
        if None), T = block_size; or the chats numbered ix, T = the longest of them, cut, minus 1."""
        data = np.memmap(os.path.join(self.dir, f"{split}.bin"), dtype=self.dtype, mode="r")  # reopened: memmaps leak otherwise
        if self.offsets[split] is not None:
            offsets = self.offsets[split]
            spans = [(offsets[i], min(offsets[i + 1], offsets[i] + self.block_size + 1)) for i in ix]
        else:
            starts = self.starts(split, (self.batch_size,)) if ix is None else ix
            spans = [(int(i), int(i) + self.block_size + 1) for i in starts]
        T = max(end - start for start, end in spans) - 1
        x = torch.zeros(len(spans), T, dtype=torch.long)  # (B, T); padding token 0, never seen by a real token
        y = torch.full((len(spans), T), -1, dtype=torch.long)  # (B, T)
        mask = np.memmap(os.path.join(self.dir, f"{split}_mask.bin"), dtype=np.uint8, mode="r") if self.has_mask[split] else None
        for row, (start, end) in enumerate(spans):
            x[row, :end - start - 1] = torch.from_numpy(data[start:end - 1].astype(np.int64))
            target = torch.from_numpy(data[start + 1:end].astype(np.int64))
            if mask is not None:
                target = target.masked_fill(torch.from_numpy(mask[start + 1:end] == 0), -1)
            y[row, :end - start - 1] = target
        if str(self.device).startswith("cuda"):
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def chat_numbers(self, first):
        """The numbers of the batch_size chats from `first` on, wrapping into the next epoch."""
        return (first + np.arange(self.batch_size)) % self.n_examples("train")

    def eval_starts(self, eval_iters, seed):
        """{split: (eval_iters, batch_size)}: the same validation (and train-estimate) batches at every
        evaluation, so that the curves compare: random windows or examples of a fixed seed, or the
        first chats of each split."""
        out = {}
        for split in SPLITS:
            if self.offsets[split] is not None:
                out[split] = np.arange(eval_iters * self.batch_size).reshape(eval_iters, self.batch_size) % self.n_examples(split)
            else:
                out[split] = self.starts(split, (eval_iters, self.batch_size), torch.Generator().manual_seed(seed))
        return out
