"""Shared fixtures: tiny random GPT-2 checkpoints in the Hugging Face layout, written by
transformers itself, and an offline tiktoken cache from ../shared/data when it exists."""

import os
import runpy
import subprocess
import sys
import tempfile

import numpy as np

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
sys.path.insert(0, ROOT)

# tiktoken reads TIKTOKEN_CACHE_DIR when it loads an encoding: set it before any test runs
_installer = os.path.join(SHARED_DATA, "gpt2", "install-tiktoken-cache.sh")
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.exists(_installer):
    os.environ["TIKTOKEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="tiktoken-")
    subprocess.run(["bash", _installer, os.environ["TIKTOKEN_CACHE_DIR"]], check=True, capture_output=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

TINY = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=101, bos_token_id=100, eos_token_id=100)


def make_hf_model(seed=0, **overrides):
    """A random transformers GPT2LMHeadModel (eval mode) of a tiny shape."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(**{**TINY, **overrides})
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # larger biases and LayerNorm gains than the default init, so every tensor matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """(directory written by save_pretrained, the transformers model it holds)."""
    model = make_hf_model()
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return str(path), model


@pytest.fixture
def tiny_gpt(hf_tiny):
    """A fresh model.GPT loaded from the tiny checkpoint."""
    from model import GPT
    return GPT.from_pretrained(hf_tiny[0]).eval()


@pytest.fixture(scope="session")
def tiny101(tmp_path_factory):
    """A tiny GPT-2 (vocab 101) with embeddings large enough that adapters can move its logits."""
    path = tmp_path_factory.mktemp("tiny101")
    make_hf_model(initializer_range=0.2).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """Token files where the next token is perm[current] 90% of the time: learnable in a few steps."""
    path = tmp_path_factory.mktemp("chain")
    rng = np.random.default_rng(0)
    perm = rng.permutation(101)
    for split, n in (("train", 20000), ("val", 4000)):
        t = np.zeros(n, dtype=np.uint16)
        for i in range(1, n):
            t[i] = perm[t[i - 1]] if rng.random() < 0.9 else rng.integers(101)
        t.tofile(path / f"{split}.bin")
    return str(path)


# ----------------------------------------------------------------------------- running the scripts

FAST = ["--batch_size=4", "--block_size=32", "--gradient_accumulation_steps=1", "--eval_iters=4", "--log_interval=5",
        "--learning_rate=1e-2", "--min_lr=1e-3", "--warmup_iters=2", "--lora_rank=4", "--lora_alpha=8.0", "--device=cpu"]


def train(*args):
    """Run train.py in this process; return its globals (the model, the metrics, ...)."""
    argv = sys.argv
    sys.argv = ["train.py", *FAST, *args]
    try:
        return runpy.run_path(os.path.join(ROOT, "train.py"), run_name="__main__")
    finally:
        sys.argv = argv


def run(*cmd, cwd=ROOT, **env):
    return subprocess.run([*cmd], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


@pytest.fixture(scope="session")
def trained_50k(tmp_path_factory):
    """A DiffLoRA checkpoint on a tiny GPT-2 with the real 50,257-token vocabulary."""
    base = tmp_path_factory.mktemp("tiny50k")
    make_hf_model(vocab_size=50257, bos_token_id=50256, eos_token_id=50256).save_pretrained(base)
    data = tmp_path_factory.mktemp("tok")
    tokens = np.random.default_rng(0).integers(0, 50257, 5000).astype(np.uint16)
    tokens.tofile(data / "train.bin")
    tokens.tofile(data / "val.bin")
    out = tmp_path_factory.mktemp("out")
    train(f"--init_from={base}", f"--dataset={data}", f"--out_dir={out}", "--max_iters=3", "--eval_interval=3")
    return str(base), str(out)


