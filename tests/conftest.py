"""Shared fixtures: tiny random GPT-2 checkpoints in the Hugging Face layout, written by
transformers itself, and an offline tiktoken cache from ../shared/data when it exists."""

import os
import subprocess
import sys
import tempfile

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
