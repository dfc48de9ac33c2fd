"""
A GPT-2 in one file, nanoGPT-style, that loads pretrained GPT-2 checkpoints in the
Hugging Face layout (from the hub or a local directory) and reproduces the reference
logits. Generation uses a KV cache. difflora.py swaps the attention layers of a
loaded model for differential ones; nothing here knows about adapters.
"""

import json
import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # n_positions in a Hugging Face config
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5


CONV1D_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # stored (in, out) by Hugging Face


def causal_mask(Tq, Tk, device=None):
    """(Tq, Tk) bool, True where query row i (the last Tq of Tk positions) may see a key."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(Tk - Tq)


def causal_attention(q, k, v, dropout_p=0.0):
    """softmax(q k^T / sqrt(d) + mask) v for q (B, H, Tq, d) whose rows are the LAST Tq of the
    Tk positions in k, v (the earlier ones come from a KV cache). Fused kernel, no T x T matrix."""
    Tq, Tk = q.size(-2), k.size(-2)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if Tq == 1:  # one new token (a decode step) sees every key: no mask to build
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(Tq, Tk, q.device), dropout_p=dropout_p)


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


def cache_extend(cache, **new):
    """Append each new (B, H, T, d) tensor along time to a layer's cache dict and return the
    full tensors, in the order given. With cache None (no caching) return them unchanged."""
    if cache is None:
        return list(new.values())
    for name, t in new.items():
        cache[name] = t if name not in cache else torch.cat([cache[name], t], dim=2)
    return [cache[name] for name in new]


class KVCache:
    """What generation keeps between steps: one dict per layer (each attention layer decides
    what it stores: GPT-2 keeps k and v, DiffLoRA k1, k2 and v) and the next position."""

    def __init__(self, n_layer):
        self.layers = [{} for _ in range(n_layer)]
        self.pos = 0


class CausalSelfAttention(nn.Module):
    n_maps = 1  # attention maps per head (DiffLoRA has 2); used to count FLOPs

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v fused
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        k, v = cache_extend(cache, k=k, v=v)  # (B, H, Tk, hd), Tk = cached + T
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        n_inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, n_inner)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(n_inner, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.name_or_path = None  # set by from_pretrained; adapter files record it
        self.adapter = None  # (method, config) once difflora.py has converted the model
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True, trainable_only=False):
        """Parameter count (tied lm_head counted once). Position embeddings are left out by
        default, as in nanoGPT; token embeddings stay in because the lm_head reuses them."""
        params = [p for p in self.parameters() if p.requires_grad or not trainable_only]
        n = sum(p.numel() for p in params)
        if non_embedding and (self.transformer.wpe.weight.requires_grad or not trainable_only):
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, cache=None, last=False):
        """idx (B, T) token ids -> logits (B, T, vocab), loss None; with last, the last position's
        logits only, (B, 1, vocab): the one generation samples from. With targets (B, T): the mean
        cross-entropy over the targets != -1, and the logits of those positions only, (N, vocab)
        in row-major order. Either way the vocabulary matmul, most of a small model's cost and a
        large part of a prompt's, runs only where its result is used (a loss on answers alone, as
        in the needle data, counts a few positions per example). With a KVCache, idx holds only
        the new tokens."""
        B, T = idx.size()
        pos0 = cache.pos if cache is not None else 0
        if pos0 + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos0 + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(pos0, pos0 + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)  # (B, T, C)
        if targets is None:
            return self.lm_head(x[:, -1:] if last else x), None  # (B, T or 1, vocab)
        keep = targets.view(-1) != -1  # (B*T,)
        logits = self.lm_head(x.view(-1, x.size(-1))[keep])  # (N, vocab)
        return logits, F.cross_entropy(logits.float(), targets.view(-1)[keep])

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. 1024 -> 256) to save memory; keeps the first positions."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in 1..{self.config.block_size} (the model's context), got {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone(),
                                                   requires_grad=self.transformer.wpe.weight.requires_grad)

    def flops_per_token(self, T):
        """Training FLOPs (forward + backward) per token at sequence length T. Every matmul weight
        costs 2 FLOPs forward and 2 backward (gradient of its input); only trainable ones cost 2 more
        for their own gradient. Attention costs 4 C T forward per map (QK^T and AV), twice that
        backward. For full fine-tuning this is nanoGPT's 6 N + 12 L C T."""
        matmul = [p for n, p in self.named_parameters() if p.dim() == 2 and "wpe" not in n]  # wte counts as lm_head
        n_all = sum(p.numel() for p in matmul)
        n_trainable = sum(p.numel() for p in matmul if p.requires_grad)
        attn = sum(b.attn.n_maps * 4 * self.config.n_embd * T for b in self.transformer.h)
        return 4 * n_all + 2 * n_trainable + 3 * attn

    def save_pretrained(self, path):
        """Write config.json and model.safetensors in the Hugging Face GPT-2 layout (Conv1D weights
        transposed back), so from_pretrained and transformers both load the result."""
        from safetensors.torch import save_file
        if self.adapter is not None:
            raise ValueError("save_pretrained writes a plain GPT-2; merge or save the adapter with difflora.save_adapter")
        os.makedirs(path, exist_ok=True)
        sd = {}
        for name, t in self.state_dict().items():
            if name == "lm_head.weight":
                continue  # tied to wte
            sd[name] = (t.t() if name.endswith(CONV1D_WEIGHTS) else t).contiguous().cpu()
        c = self.config
        hf = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_positions=c.block_size, n_ctx=c.block_size,
                  vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_inner=c.n_inner,
                  layer_norm_epsilon=c.layer_norm_epsilon, activation_function="gelu_new", tie_word_embeddings=True,
                  resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout)
        save_atomically(os.path.join(path, "model.safetensors"), lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
        save_json(os.path.join(path, "config.json"), hf)

    def configure_optimizers(self, weight_decay, learning_rate, betas=(0.9, 0.95), device_type="cpu"):
        """AdamW over the parameters that require grad. Weight decay goes to matrices (linear
        weights, embeddings, LoRA A and B) only: decaying biases, LayerNorm gains, lambda
        vectors or GroupNorm gains would pull scales and offsets toward 0 for no benefit."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type == "cuda"  # the fused CUDA kernel is faster; on CPU the default is fine
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_token=None, use_cache=True,
                 on_token=None):
        """Extend idx (B, T) by up to max_new_tokens. temperature 0 is greedy (argmax); top_k and
        top_p (nucleus) filter before sampling. Stops early once every row has emitted eos_token
        (rows that finish first are padded with it). on_token(next_token (B, 1)), if given, sees
        each token as it is chosen (to stream text)."""
        block_size = self.config.block_size
        cache = None
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= block_size:
                logits, _ = self(idx[:, -1:], cache=cache)  # the cache holds every earlier token
            else:
                # (Re)encode the window: at the start, and every step once the sequence is longer
                # than block_size, because GPT-2's absolute positions shift when the window slides,
                # so every cached key is stale. This keeps the result identical to use_cache=False.
                cache = KVCache(self.config.n_layer) if use_cache else None
                logits, _ = self(idx[:, -block_size:], cache=cache, last=True)
            next_token = sample_next(logits[:, -1, :].float(), temperature, top_k, top_p)  # (B, 1)
            if eos_token is not None:
                next_token = torch.where(done[:, None], eos_token, next_token)
                done |= next_token[:, 0] == eos_token
            idx = torch.cat((idx, next_token), dim=1)
            if on_token is not None:
                on_token(next_token)
            if done.all():
                break
        return idx

    @classmethod
    def from_pretrained(cls, name_or_path, **overrides):
        """Load a GPT-2-architecture checkpoint: a Hugging Face model id (downloaded into the
        normal hub cache) or a local directory with config.json and model.safetensors (or
        pytorch_model.bin). overrides: dropout, block_size (<= n_positions, crops)."""
        bad = set(overrides) - {"dropout", "block_size"}
        if bad:
            raise ValueError(f"from_pretrained can override only dropout and block_size, not {sorted(bad)}")
        path = _checkpoint_dir(name_or_path)
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        if hf.get("model_type") != "gpt2":
            raise ValueError(f"{name_or_path}: only GPT-2-architecture checkpoints (model_type 'gpt2') can be "
                             f"loaded, this one has model_type {hf.get('model_type')!r}")
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{name_or_path}: activation {hf['activation_function']!r} is not supported (GPT-2 uses gelu_new)")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or not hf.get("scale_attn_weights", True):
            raise ValueError(f"{name_or_path}: non-standard GPT-2 attention options in config.json are not supported")
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                           n_head=hf["n_head"], n_embd=hf["n_embd"], n_inner=hf.get("n_inner"),
                           layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), dropout=overrides.get("dropout", 0.0))
        model = cls(config)
        model.name_or_path = os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else name_or_path  # any cwd
        _load_hf_state_dict(model, _read_weights(path))
        if "block_size" in overrides:
            model.crop_block_size(overrides["block_size"])
        return model


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. tiktoken downloads its two files on first use; offline, say how to
    supply them instead of failing with a connection error."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise SystemExit(f"error: could not load the GPT-2 tokenizer ({type(e).__name__}): tiktoken fetches vocab.bpe and "
                         f"encoder.json on first use. Offline, copy tiktoken's cache folder from a machine that has them "
                         f"(${{TIKTOKEN_CACHE_DIR}}, by default /tmp/data-gym-cache) and point TIKTOKEN_CACHE_DIR at it") from None


def peak_flops(device):
    """Dense bf16 peak FLOP/s of a known GPU, for MFU; None when unknown (CPU included)."""
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
             "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}
    return next((v for k, v in table.items() if k in name), None)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick one token per row of logits (B, vocab) -> (B, 1)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


# ----------------------------------------------------------------------------- checkpoint loading

def is_hub_id(name):
    """Whether name could be a Hugging Face model id (gpt2, org/name) rather than a path."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not name.startswith(".")


def _checkpoint_dir(name_or_path):
    """A local directory, or the hub cache snapshot of a model id (downloaded if needed)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise ValueError(f"{name_or_path} is a file; pass the directory holding config.json and the weights")
    if not is_hub_id(name_or_path):
        raise OSError(f"no folder {name_or_path!r} here (from {os.getcwd()}): pass an existing checkpoint folder or a "
                      f"Hugging Face model id such as gpt2")
    from huggingface_hub import snapshot_download
    try:
        # safetensors first; the .bin only for repos without one (gpt2 ships both: don't fetch twice)
        path = snapshot_download(name_or_path, allow_patterns=["config.json", "model*.safetensors", "model.safetensors.index.json"])
        if not any(f.endswith(".safetensors") for f in os.listdir(path)):
            path = snapshot_download(name_or_path, allow_patterns=["config.json", "pytorch_model.bin"])
    except Exception as e:  # not found, gated, offline, no network: all mean the same to the user
        raise OSError(
            f"could not load {name_or_path!r}: there is no folder of that name here, and it could not be fetched from the "
            f"Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Pass a local directory "
            f"with config.json and model.safetensors, or download the model once with network access and then "
            f"set HF_HUB_OFFLINE=1 to load it from the hub cache.") from e
    return path


def _read_weights(path):
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
    return sd


def _load_hf_state_dict(model, sd):
    """Copy a Hugging Face GPT-2 state dict into model, checking every tensor. HF stores the
    linear layers as Conv1D, weight (in, out): the transpose of nn.Linear's (out, in)."""
    ours = model.state_dict()
    seen = set()
    for key, t in sd.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers of old checkpoints
        name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
        if name == "lm_head.weight":  # tied to wte; only accept a copy of it
            if not torch.equal(t, sd.get("transformer.wte.weight", sd.get("wte.weight"))):
                raise ValueError("lm_head.weight differs from wte.weight: untied GPT-2 heads are not supported")
            continue
        if name not in ours:
            raise ValueError(f"unexpected key {key!r} in the checkpoint: not a GPT-2 parameter")
        if name.endswith(CONV1D_WEIGHTS):
            t = t.t()
        if t.shape != ours[name].shape:
            raise ValueError(f"shape mismatch for {key!r}: checkpoint has {tuple(t.shape)}, "
                             f"config.json implies {tuple(ours[name].shape)}")
        with torch.no_grad():
            ours[name].copy_(t)
        seen.add(name)
    missing = sorted(set(ours) - seen - {"lm_head.weight"})
    if missing:
        raise ValueError(f"the checkpoint is missing {len(missing)} tensor(s), e.g. {missing[0]!r}")
