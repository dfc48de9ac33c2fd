"""Pretraining from scratch (train.py --init_from=scratch), the copy-document data
(data/shakespeare_copy) and the induction test (analysis/induction.py), on tiny shapes; and the
docs' report of the committed results."""

import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import ROOT, run, train
from runs import load_trained
from analysis.induction import copy_losses
from model import GPT, GPTConfig

SCRATCH = ["--init_from=scratch", "--method=full", "--n_layer=2", "--n_head=2", "--n_embd=32", "--dropout=0.1",
           "--weight_decay=0.1", "--eval_interval=5"]


@pytest.fixture(scope="session")
def scratch_run(chain, tmp_path_factory):
    out = tmp_path_factory.mktemp("scratch")
    g = train(*SCRATCH, f"--dataset={chain}", f"--out_dir={out}", "--max_iters=10")
    return str(out), g


@pytest.mark.slow
def test_scratch_checkpoint_loads_in_transformers_with_equal_logits(scratch_run):
    out, g = scratch_run
    from transformers import GPT2LMHeadModel
    assert g["metrics"]["eval"][-1]["val"] < g["metrics"]["eval"][0]["val"]  # it learned
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]) == (2, 2, 32, 50257, 32)
    idx = torch.randint(0, 50257, (2, 32))
    ours = g["raw_model"].eval()(idx)[0]
    torch.testing.assert_close(GPT.from_pretrained(out).eval()(idx)[0], ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(GPT2LMHeadModel.from_pretrained(out).eval()(idx).logits, ours, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_scratch_initialisation_is_gpt2s(chain, tmp_path):
    g = train(*SCRATCH, f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=0", "--n_layer=4", "--n_embd=64")
    sd = g["raw_model"].state_dict()
    assert all(p.requires_grad for p in g["raw_model"].parameters())
    assert abs(sd["transformer.h.0.attn.c_attn.weight"].std().item() - 0.02) < 0.002
    assert abs(sd["transformer.h.0.mlp.c_proj.weight"].std().item() - 0.02 / (2 * 4) ** 0.5) < 0.001  # residual projections
    assert g["metrics"]["eval"][0]["val"] == pytest.approx(np.log(50257), abs=0.05)  # a fresh model is uniform


@pytest.mark.slow
def test_scratch_resume_is_bit_identical(chain, tmp_path):
    common = [*SCRATCH, f"--dataset={chain}", "--lr_decay_iters=12"]
    straight = train(*common, f"--out_dir={tmp_path / 'a'}", "--max_iters=12")
    train(*common, f"--out_dir={tmp_path / 'b'}", "--max_iters=5")
    # the shape comes from the checkpoint, whatever the command line says
    resumed = train(*common, f"--out_dir={tmp_path / 'b'}", "--max_iters=12", "--init_from=resume", "--n_layer=3")
    assert resumed["raw_model"].config.n_layer == 2 and resumed["start_iter"] == 5
    a, b = straight["raw_model"].state_dict(), resumed["raw_model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["lossf"] == resumed["lossf"] and straight["metrics"]["eval"] == resumed["metrics"]["eval"]


@pytest.mark.slow
def test_scratch_out_dir_is_a_base_model_for_difflora(scratch_run, chain, tmp_path):
    base, _ = scratch_run
    g = train(f"--init_from={base}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=4", "--eval_interval=4")
    assert g["metrics"]["eval"][-1]["val"] < g["metrics"]["eval"][0]["val"]
    frozen = GPT.from_pretrained(base).state_dict()
    for name, p in g["raw_model"].named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), frozen[name.replace(".base.", ".")]), name
    model = load_trained(str(tmp_path)).eval()  # adapter on its recorded base, as sample.py and analysis/eval_needle.py load it
    x = torch.randint(0, 101, (1, 16))
    torch.testing.assert_close(model(x)[0], g["raw_model"].eval()(x)[0], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_scratch_needs_full_and_a_valid_shape(chain, tmp_path):
    with pytest.raises(SystemExit, match="setting 'method' is 'difflora'; allowed: full with init_from=scratch"):
        train("--init_from=scratch", f"--dataset={chain}", f"--out_dir={tmp_path}")
    with pytest.raises(SystemExit, match="setting 'n_embd' is 30; allowed: a multiple of n_head=4"):
        train(*SCRATCH, "--n_embd=30", "--n_head=4", f"--dataset={chain}", f"--out_dir={tmp_path}")


# ----------------------------------------------------------------------------- the induction test

class Copier(torch.nn.Module):
    """An ideal induction head, written out: predicts the token that followed the latest earlier
    occurrence of the current token (uniform when there is none)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # copy_losses puts the input on the model's device

    def forward(self, x):
        B, T = x.shape
        logits = torch.zeros(B, T, 50257)
        for b in range(B):
            for t in range(T):
                earlier = [s for s in range(t) if x[b, s] == x[b, t]]
                if earlier:
                    logits[b, t, x[b, earlier[-1] + 1]] = 100.0
        return logits, None


@pytest.mark.slow
def test_copy_losses_split_the_halves(tiny_gpt):
    alphabet = torch.arange(101)
    first, second, acc = copy_losses(Copier(), torch.arange(1000, 1500), seq_len=12, n_seq=4)
    assert first == pytest.approx(np.log(50257), abs=1e-4) and second < 1e-3 and acc == 1.0
    # a real model, against the loss written out position by position
    first, second, acc = copy_losses(tiny_gpt, alphabet, seq_len=10, n_seq=3, seed=5)
    s = alphabet[torch.randint(101, (3, 10), generator=torch.Generator().manual_seed(5))]
    x = torch.cat([s, s], 1)
    logits = tiny_gpt(x)[0]
    nll = lambda t: F.cross_entropy(logits[:, t], x[:, t + 1])  # noqa: E731
    assert first == pytest.approx(np.mean([nll(t).item() for t in range(9)]), abs=1e-5)
    assert second == pytest.approx(np.mean([nll(t).item() for t in range(10, 19)]), abs=1e-5)
    assert 0 <= acc <= 1


@pytest.mark.slow
def test_induction_script(scratch_run, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    np.arange(50, 90, dtype=np.uint16).tofile(data / "train.bin")
    out = run(sys.executable, "analysis/induction.py", f"--model={scratch_run[0]}", f"--dataset={data}", "--seq_lens=4,8",
              "--n_seq=4", f"--out={tmp_path / 'ind.txt'}")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in open(tmp_path / "ind.txt") if not line.startswith("#")][1:]
    assert [r[0] for r in rows] == ["4", "8"] and all(len(r) == 4 for r in rows)
    out = run(sys.executable, "analysis/induction.py", f"--model={scratch_run[0]}", f"--dataset={data}", "--seq_lens=40")
    assert out.returncode == 1 and "need a context of 80" in out.stderr


# ----------------------------------------------------------------------------- the pretraining data

@pytest.mark.slow
def test_shakespeare_copy_data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    text = np.random.default_rng(0).integers(0, 500, 3000).astype(np.uint16)
    text.tofile(src / "train.bin")
    val = np.arange(100, 300, dtype=np.uint16)
    val.tofile(src / "val.bin")
    out = run(sys.executable, "data/shakespeare_copy/prepare.py", f"--source={src}", f"--out_dir={tmp_path}",
              "--copy_fraction=0.25", "--len_min=3", "--len_max=6")
    assert out.returncode == 0, out.stderr
    tokens = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    mask = np.fromfile(tmp_path / "train_mask.bin", dtype=np.uint8)
    meta = json.load(open(tmp_path / "meta.json"))
    assert np.array_equal(np.fromfile(tmp_path / "val.bin", dtype=np.uint16), val)
    # walk the stream: text tokens in their order, and <|endoftext|> S S documents whose first S is masked
    kept, i, docs = [], 0, 0
    while i < len(tokens):
        if tokens[i] != 50256:
            assert mask[i] == 1
            kept.append(tokens[i])
            i += 1
            continue
        rest = tokens[i + 1:]
        n = next(n for n in range(3, 7) if np.array_equal(rest[:n], rest[n:2 * n]) and mask[i + 1 + n] == 1)
        assert mask[i:i + 1 + n].sum() == 0 and mask[i + 1 + n:i + 1 + 2 * n].all()
        assert rest[:n].max() < 50256
        i, docs = i + 1 + 2 * n, docs + 1
    assert np.array_equal(kept, text) and docs == meta["copy_documents"]
    assert 0.2 < meta["copy_tokens"] / meta["train_tokens"] < 0.3
    counts = np.bincount(text, minlength=50257) + 1.0
    assert meta["unigram_val_loss"] == pytest.approx(-np.mean(np.log(counts[val] / counts.sum())), rel=1e-9)
    assert meta["uniform_loss"] == pytest.approx(np.log(50257))


@pytest.mark.slow
def test_shakespeare_copy_needs_shakespeare(tmp_path):
    out = run(sys.executable, "data/shakespeare_copy/prepare.py", f"--source={tmp_path}", f"--out_dir={tmp_path}")
    assert out.returncode == 1 and "run python data/shakespeare/prepare.py first" in out.stderr


# ----------------------------------------------------------------------------- the reported results

@pytest.mark.slow
def test_docs_report_the_baby_models_induction_numbers():
    rows = [line.split() for line in open(os.path.join(ROOT, "results", "pretrain", "induction.txt"))
            if not line.startswith("#")][1:]
    readme = open(os.path.join(ROOT, "docs", "pretraining.md")).read()  # the baby model's page
    assert rows
    for length, first, second, copied in rows:
        assert re.search(rf"\|\s*{length}\s*\|\s*{first}\s*\|\s*{second}\s*\|\s*{copied}\s*\|", readme), length
