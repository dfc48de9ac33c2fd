"""model.py against the reference: transformers' GPT-2, loaded from the files it writes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from conftest import ROOT, fake_hub_cache, make_hf_model
from model import GPT, causal_attention, causal_mask, configure_optimizers, sample_next

ATOL = 1e-5


def tokens(n=24, batch=2, vocab=101, seed=1):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def assert_logits_match(path, hf_model):
    model = GPT.from_pretrained(path).eval()
    idx = tokens()
    with torch.no_grad():
        ref = hf_model(idx).logits
        ours, _ = model(idx)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_logits_match_transformers(hf_tiny):
    assert_logits_match(*hf_tiny)


def test_logits_match_with_other_epsilon_and_width(tmp_path):
    hf = make_hf_model(seed=3, layer_norm_epsilon=1e-2, n_inner=48, n_layer=3, n_head=4)
    hf.save_pretrained(tmp_path)
    assert_logits_match(str(tmp_path), hf)


def test_checkpoint_without_transformer_prefix(tmp_path):
    hf = make_hf_model(seed=4)
    hf.transformer.save_pretrained(tmp_path)  # a GPT2Model: keys "h.0...", "wte.weight"
    from safetensors import safe_open
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "wte.weight" in f.keys() and not any(k.startswith("transformer.") for k in f.keys())
    assert_logits_match(str(tmp_path), hf)


def test_pytorch_model_bin_with_mask_buffers(tmp_path):
    # the layout of the original gpt2 repo: no prefix, attn.bias / attn.masked_bias buffers, a tied lm_head copy
    hf = make_hf_model(seed=5)
    sd = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items()}
    sd["lm_head.weight"] = sd["wte.weight"].clone()
    for i in range(hf.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf.config.save_pretrained(tmp_path)
    assert_logits_match(str(tmp_path), hf)


def test_fp16_checkpoint(tmp_path):
    # half-precision checkpoints (as some hub repos ship) load into the float32 model exactly
    hf = make_hf_model(seed=6).half()
    hf.save_pretrained(tmp_path)
    from safetensors import safe_open
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.get_tensor("transformer.wte.weight").dtype == torch.float16
    assert_logits_match(str(tmp_path), hf.float())


@pytest.mark.slow
def test_loads_through_the_hub_cache(hf_tiny, tmp_path):
    # lay the tiny checkpoint out as huggingface_hub's cache does, then load it by repo id offline
    fake_hub_cache(tmp_path / "hub", "someone/tiny-gpt2", hf_tiny[0], ("config.json", "model.safetensors"))
    code = ("import torch; from model import GPT; m = GPT.from_pretrained('someone/tiny-gpt2').eval();"
            "print(m(torch.arange(10)[None])[0].sum().item(), m.name_or_path)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    ref = hf_tiny[1](torch.arange(10)[None]).logits.sum().item()
    value, name = out.stdout.split()
    assert abs(float(value) - ref) < 1e-3 and name == "someone/tiny-gpt2"


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_matches_transformers(hf_tiny, tiny_gpt, use_cache):
    hf = hf_tiny[1]
    prompt = tokens(n=8, batch=1, seed=2)
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=30,
                      min_new_tokens=30, pad_token_id=100)
    ours = tiny_gpt.generate(prompt, 30, temperature=0, use_cache=use_cache)
    assert ours.tolist() == ref.tolist()


def test_cache_past_block_size_equals_cropping(tiny_gpt):
    tiny_gpt.crop_block_size(16)
    prompt = tokens(n=10, batch=2, seed=3)
    with_cache = tiny_gpt.generate(prompt, 30, temperature=0, use_cache=True)
    without = tiny_gpt.generate(prompt, 30, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 40)
    assert with_cache.tolist() == without.tolist()


def test_sampled_generation_with_cache_equals_without(tiny_gpt):
    prompt = tokens(n=5, batch=3, seed=4)
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        outs.append(tiny_gpt.generate(prompt, 20, temperature=0.8, top_k=20, top_p=0.9, use_cache=use_cache))
    assert outs[0].tolist() == outs[1].tolist()


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert sample_next(logits, temperature=0).item() == 1
    torch.manual_seed(0)
    assert {sample_next(logits, top_k=1).item() for _ in range(20)} == {1}
    # probabilities ~ [.03, .64, .09, .24]: top_p 0.8 keeps tokens 1 and 3 only
    assert {sample_next(logits, top_p=0.8).item() for _ in range(200)} == {1, 3}


def test_generation_stops_at_eos(tiny_gpt):
    prompt = tokens(n=6, batch=1, seed=5)
    first = tiny_gpt.generate(prompt, 1, temperature=0)[0, -1].item()
    out = tiny_gpt.generate(prompt, 30, temperature=0, eos_token=first)
    assert out.shape[1] == 7 and out[0, -1].item() == first


def test_loss_ignores_minus_one(tiny_gpt):
    idx = tokens(n=12, batch=2)
    targets = tokens(n=12, batch=2, seed=9)
    masked = targets.clone()
    masked[:, :6] = -1
    logits, loss = tiny_gpt(idx, masked)
    full, _ = tiny_gpt(idx)  # (B, T, vocab)
    torch.testing.assert_close(logits, full[:, 6:].reshape(-1, 101), atol=ATOL, rtol=0)  # the counted rows only
    ref = torch.nn.functional.cross_entropy(full[:, 6:].reshape(-1, 101), targets[:, 6:].reshape(-1))
    torch.testing.assert_close(loss, ref, atol=ATOL, rtol=0)


def test_overrides_and_crop(hf_tiny):
    m = GPT.from_pretrained(hf_tiny[0], dropout=0.2, block_size=16)
    assert m.config.block_size == 16 and m.transformer.wpe.weight.shape == (16, 32)
    assert m.transformer.h[0].attn.dropout == 0.2
    with pytest.raises(ValueError, match="longer than block_size 16"):
        m(tokens(n=17))
    with pytest.raises(ValueError, match="only dropout and block_size"):
        GPT.from_pretrained(hf_tiny[0], n_layer=4)


def test_configure_optimizers_groups(tiny_gpt):
    for p in tiny_gpt.transformer.h[1].parameters():
        p.requires_grad = False
    opt = configure_optimizers(tiny_gpt, weight_decay=0.1, learning_rate=1e-3)
    decay, no_decay = opt.param_groups
    trainable = [p for p in tiny_gpt.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_parameter_count_matches_transformers(hf_tiny, tiny_gpt):
    hf = hf_tiny[1]
    assert tiny_gpt.get_num_params(non_embedding=False) == sum(p.numel() for p in hf.parameters())


# ----------------------------------------------------------------------------- errors a user can hit

def test_error_other_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(ValueError, match="only GPT-2 and Llama-architecture checkpoints.*'bert'"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ValueError, match="config.json of a llama model lacks num_hidden_layers"):
        GPT.from_pretrained(str(tmp_path))


def test_error_no_weights_file(hf_tiny, tmp_path):
    (tmp_path / "config.json").write_text(open(os.path.join(hf_tiny[0], "config.json")).read())
    with pytest.raises(FileNotFoundError, match="has no weights: expected model.safetensors"):
        GPT.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_error_truncated_weights(hf_tiny, tmp_path, fmt):
    (tmp_path / "config.json").write_text(open(os.path.join(hf_tiny[0], "config.json")).read())
    if fmt == "safetensors":
        data = open(os.path.join(hf_tiny[0], "model.safetensors"), "rb").read()
        (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        torch.save(hf_tiny[1].state_dict(), tmp_path / "full.bin")
        data = (tmp_path / "full.bin").read_bytes()
        (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        GPT.from_pretrained(str(tmp_path))


def test_error_shape_and_key_mismatch(hf_tiny, tmp_path):
    from safetensors.torch import load_file, save_file
    cfg = json.load(open(os.path.join(hf_tiny[0], "config.json")))
    sd = load_file(os.path.join(hf_tiny[0], "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_positions": 32}))
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatch for 'transformer.wpe.weight'.*\(64, 32\).*\(32, 32\)"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({**sd, "transformer.h.0.attn.extra": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected key 'transformer.h.0.attn.extra'"):
        GPT.from_pretrained(str(tmp_path))
    save_file({k: v for k, v in sd.items() if k != "transformer.ln_f.bias"}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="missing 1 tensor.*'transformer.ln_f.bias'"):
        GPT.from_pretrained(str(tmp_path))


def run_load(name, **env):
    code = f"from model import GPT; GPT.from_pretrained({name!r})"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_error_unknown_name_offline(tmp_path):
    out = run_load("nobody/no-such-gpt2", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path))
    assert out.returncode != 0
    assert "there is no folder of that name here, and it could not be fetched" in out.stderr
    assert "HF_HUB_OFFLINE=1" in out.stderr


@pytest.mark.slow
def test_error_no_network(tmp_path):
    # an endpoint nobody listens on stands for a machine without network
    out = run_load("gpt2", HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(tmp_path), HF_ENDPOINT="http://127.0.0.1:9",
                   HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
    assert out.returncode != 0
    assert "could not load 'gpt2'" in out.stderr and "local directory" in out.stderr


def test_last_position_logits(tiny_gpt):
    """last=True runs the vocabulary matmul at the last position only, with the same values."""
    idx = tokens()
    full, _ = tiny_gpt(idx)
    last, _ = tiny_gpt(idx, last=True)
    assert last.shape == (2, 1, 101)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=0)


def test_decode_step_without_mask_equals_masked():
    """A single query row sees every key, so the mask-free call equals the masked one."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    masked = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(1, 7))
    torch.testing.assert_close(causal_attention(q, k, v), masked, atol=1e-6, rtol=0)
