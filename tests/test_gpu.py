"""What only a CUDA GPU runs: the fused kernels, bf16 autocast, torch.compile and train.py there.
Skipped without one (the suite stays green on a CPU); bench/gpu_check.py runs them with -m gpu."""

import os
import sys

import pytest
import torch

from conftest import FAST, run, train
from difflora import DiffLoRAConfig, apply_difflora, set_attention_path
from model import GPT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def llama(llama_tiny):
    return llama_tiny[0]  # a tiny random Llama with grouped-query attention and a tokenizer


def difflora(path, **kw):
    torch.manual_seed(0)
    return apply_difflora(GPT.from_pretrained(path), DiffLoRAConfig(r=4, alpha=8, dropout=0.0, **kw)).cuda().eval()


def test_fused_and_explicit_paths_agree_on_cuda(llama):
    m = difflora(llama)
    x = torch.randint(0, 300, (2, 48), device="cuda")
    with torch.no_grad():
        fused = m(x)[0]
        set_attention_path(m, True)
        explicit = m(x)[0]
    torch.testing.assert_close(fused, explicit, atol=1e-4, rtol=0)


def test_bf16_autocast_close_to_fp32_on_cuda(llama):
    m = difflora(llama)
    x = torch.randint(0, 300, (2, 48), device="cuda")
    with torch.no_grad():
        ref = m(x, x)[1]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = m(x, x)[1]
    assert abs(bf16.item() - ref.item()) / ref.item() < 0.02


def test_cached_generation_equals_uncached_on_cuda(llama):
    m = difflora(llama)
    prompt = torch.randint(0, 300, (1, 8), device="cuda")
    assert torch.equal(m.generate(prompt, 20, temperature=0), m.generate(prompt, 20, temperature=0, use_cache=False))


def test_train_py_on_cuda_bf16_compiled(llama, chain, tmp_path):
    g = train(f"--init_from={llama}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=4", "--eval_interval=4",
              *[a for a in FAST if a != "--device=cpu"], "--device=cuda", "--dtype=bfloat16", "--compile=True")
    assert g["dtype"] == "bfloat16" and os.path.exists(tmp_path / "adapter.safetensors")
    ev = g["metrics"]["eval"]
    assert ev[-1]["val"] < ev[0]["val"]


def test_sample_py_on_cuda(llama):
    out = run(sys.executable, "sample.py", f"--init_from={llama}", "--device=cuda", "--start=hello", "--max_new_tokens=5",
              "--num_samples=1")
    assert out.returncode == 0, out.stderr
