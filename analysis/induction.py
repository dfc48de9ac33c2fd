"""
Can a model copy from its context? The induction test: feed random token runs written twice,
S S, and compare the loss on the first S (random: nothing to predict it from, about ln of the
alphabet size) with the loss on the second S (a model with an induction head finds the earlier
occurrence of the current token and predicts what followed it: loss near 0). Retrieval of a
needle from a long context needs exactly this.

    python analysis/induction.py --model=out-pretrain
    python analysis/induction.py --model=gpt2 --seq_lens=16,48,100 --out=induction.txt
    python analysis/induction.py --model=smollm2 --dataset=all

Tokens are drawn uniformly from the distinct tokens of the dataset's train.bin (the tokens of
a text the model has read), or with --dataset=all from the model's whole vocabulary. The first
token of each S is left out of both halves: it cannot be predicted in either.
"""

import os
import sys

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from configurator import check, configure, resolve_device, user_errors  # noqa: E402


@torch.no_grad()
def copy_losses(model, alphabet, seq_len, n_seq=64, seed=0):
    """Mean cross-entropy (nats) on the first and on the second copy of n_seq random runs of
    seq_len tokens from alphabet (a 1-D tensor of token ids), each written twice, and the
    share of the second copy's tokens that greedy decoding gets right."""
    g = torch.Generator().manual_seed(seed)
    s = alphabet[torch.randint(len(alphabet), (n_seq, seq_len), generator=g)]  # (n, L)
    x = torch.cat([s, s], dim=1).to(next(model.parameters()).device)  # (n, 2L)
    logits, _ = model(x)  # (n, 2L, vocab)
    logits, target = logits[:, :-1].float(), x[:, 1:]  # position t predicts token t + 1
    loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (n, 2L - 1)
    first, second = slice(0, seq_len - 1), slice(seq_len, 2 * seq_len - 1)  # targets S[1:] of each copy
    hits = (logits[:, second].argmax(-1) == target[:, second]).float()
    return loss[:, first].mean().item(), loss[:, second].mean().item(), hits.mean().item()


if __name__ == "__main__":
    from runs import load_trained, trained_config
    from tokenizer import dataset_dir, get_tokenizer, read_meta
    # -------------------------------------------------------------------------
    model = "out-pretrain"  # a train.py out_dir or a base model (gpt2, smollm2, a folder, a .gguf file, a hub id)
    dataset = "shakespeare"  # the tokens of this dataset's train.bin for the model's tokenizer (or a folder); 'all': every token
    seq_lens = "16,32,48,100"  # lengths of the repeated run S (2 x length must fit the context)
    n_seq = 64  # runs per length
    seed = 1234  # the copy documents of data/shakespeare_copy use other random runs
    device = "auto"
    out = ""  # also write the table to this file
    # -------------------------------------------------------------------------
    config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
    config = configure(config, sys.argv[1:])
    globals().update(config)
    check(all(n.isdigit() and int(n) >= 2 for n in seq_lens.split(",")), "seq_lens", seq_lens,
          "comma-separated lengths >= 2 such as 16,48")
    check(n_seq >= 1, "n_seq", n_seq, "an integer >= 1")
    device = resolve_device(device)[0]
    lens = [int(n) for n in seq_lens.split(",")]
    with user_errors():  # the context and the data from the config files alone, before the model is loaded
        shape, base = trained_config(model)
        enc = get_tokenizer(base) if dataset == "all" else None
        data_dir = dataset_dir(dataset, base)[0] if dataset != "all" else None
    if 2 * max(lens) > shape.block_size:
        raise SystemExit(f"error: seq_lens up to {max(lens)} need a context of {2 * max(lens)}; {model} has {shape.block_size}")
    if dataset == "all":  # every token but the special ones
        specials = {enc.encode_single_token(t) for t in enc.special_tokens_set}
        alphabet = torch.tensor([i for i in range(enc.vocab_size) if i not in specials])
    elif os.path.exists(os.path.join(data_dir, "train.bin")):
        tokens = np.fromfile(os.path.join(data_dir, "train.bin"), dtype=read_meta(data_dir).get("dtype", "uint16"))
        alphabet = torch.from_numpy(np.unique(tokens).astype(np.int64))
    else:
        raise SystemExit(f"error: no train.bin in {data_dir} for dataset {dataset!r}: prepare it first (python "
                         f"data/{dataset}/prepare.py --tokenizer=BASE), or pass --dataset=all")
    with user_errors():
        net = load_trained(model).eval().to(device)
    lines = [f"# python analysis/induction.py {' '.join(sys.argv[1:])}",
             f"# {model}: loss (nats) on random runs S of {len(alphabet):,} distinct tokens written twice; {n_seq} runs per length",
             f"# chance on the first S: ln {len(alphabet):,} = {np.log(len(alphabet)):.3f}",
             f"{'length':>8}{'first S':>10}{'second S':>10}{'copied':>9}"]
    print("\n".join(lines))
    for L in lens:
        first, second, acc = copy_losses(net, alphabet, L, n_seq, seed)
        lines.append(f"{L:>8}{first:>10.3f}{second:>10.3f}{acc:>9.3f}")
        print(lines[-1])
    if out:
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {out}")
