"""difflora.py against the DiffLoRA equations (README, "How it works") and naive computations."""

import math
import os

import pytest
import torch
from torch.nn import functional as F

from analysis.attention_maps import attention_maps
from difflora import (LoRA, DiffLoRAAttention, DiffLoRAConfig, LoRAConfig, apply_difflora, apply_lora, causal_softmax,
                      explicit_differential_attention, lambda_init_schedule, merge, param_counts, param_report,
                      set_attention_path, set_lambda_ramp, unmerge)
from model import GPT, GPTConfig
from runs import load_adapter, save_adapter
from speedups import adapter_deltas, dropout_keep, lora_deltas

SPEC_LAMBDA_INIT = [0.200000, 0.355509, 0.470713, 0.556058, 0.619283, 0.666122,
                    0.700821, 0.726526, 0.745569, 0.759677, 0.770128, 0.777870]
VARIANT_CONFIGS = {
    "both": dict(variant="both"),
    "negative": dict(variant="negative"),
    "shared": dict(variant="shared"),
    "both+v+o": dict(variant="both", lora_v=True, lora_o=True),
    "fixed-lambda": dict(variant="both", learn_lambda=False, lambda_init=0.1),
    "preserve": dict(variant="both", init="preserve"),
}


def batch(T=20, B=2, vocab=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g), torch.randint(0, vocab, (B, T), generator=g)


def perturb(model, scale=0.1, seed=0):
    """Move every trainable tensor off its init (B != 0, lambda != lambda_init): a harder test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def adapted(path, seed=0, **kw):
    torch.manual_seed(seed)
    return apply_difflora(GPT.from_pretrained(path), DiffLoRAConfig(**{"dropout": 0.0, "r": 4, "alpha": 8, **kw}))


def layers(model):
    return [b.attn for b in model.transformer.h]


def head_outputs(model, idx):
    """Each layer's attention output before W_O, (B, T, H, hd), caught at c_proj's input."""
    outs = []
    hooks = [b.attn.c_proj.register_forward_pre_hook(lambda m, a: outs.append(a[0])) for b in model.transformer.h]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    H = model.config.n_head
    return [o.view(*o.shape[:2], H, -1) for o in outs]


def train_steps(model, n=3, lr=1e-2):
    """n AdamW steps on random data; returns the gradients of the last step by name."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    for step in range(n):
        x, y = batch(seed=step)
        opt.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        grads = {name: p.grad.clone() if p.grad is not None else None for name, p in model.named_parameters()}
        opt.step()
    return grads


# ----------------------------------------------------------------------------- lambda

def test_lambda_init_schedule_matches_spec():
    for depth, value in enumerate(SPEC_LAMBDA_INIT):
        assert abs(lambda_init_schedule(depth) - value) < 1e-6


def test_layers_get_their_depth_and_lambda_cancels(hf_tiny):
    m = adapted(hf_tiny[0])
    for depth, attn in enumerate(layers(m)):
        assert attn.lambda_init == pytest.approx(lambda_init_schedule(depth))
        with torch.no_grad():
            attn.lambda_q2.copy_(attn.lambda_q1)
            attn.lambda_k2.copy_(attn.lambda_k1)
        assert attn.lam().item() == pytest.approx(attn.lambda_init, abs=1e-7)  # float32
    m2 = adapted(hf_tiny[0], lambda_init=0.25)
    assert [a.lambda_init for a in layers(m2)] == [0.25, 0.25]
    a = layers(m2)[0]
    expected = math.exp((a.lambda_q1 @ a.lambda_k1).item()) - math.exp((a.lambda_q2 @ a.lambda_k2).item()) + 0.25
    assert a.lam().item() == pytest.approx(expected, abs=1e-6)


# ----------------------------------------------------------------------------- against the equations

def test_difflora_layer_matches_naive_equations(hf_tiny):
    m = perturb(adapted(hf_tiny[0], lora_v=True, lora_o=True)).eval()
    attn = layers(m)[1]
    x = torch.randn(2, 9, 32)
    C, H, hd = 32, 2, 16
    W, b = attn.c_attn.weight, attn.c_attn.bias  # nn.Linear layout (3C, C)
    delta = lambda lora, x: lora.scale * x @ lora.A.weight.T @ lora.B.weight.T
    q1 = x @ W[:C].T + b[:C] + delta(attn.lora_q1, x)
    k1 = x @ W[C:2 * C].T + b[C:2 * C] + delta(attn.lora_k1, x)
    q2, k2 = delta(attn.lora_q2, x), delta(attn.lora_k2, x)
    v = x @ W[2 * C:].T + b[2 * C:] + delta(attn.lora_v, x)
    lam = (attn.lambda_q1 @ attn.lambda_k1).exp() - (attn.lambda_q2 @ attn.lambda_k2).exp() + attn.lambda_init
    mask = torch.tril(torch.ones(9, 9, dtype=torch.bool))
    y = torch.zeros(2, 9, C)
    for h in range(H):
        s = slice(h * hd, (h + 1) * hd)
        a1 = (q1[..., s] @ k1[..., s].transpose(1, 2) / math.sqrt(hd)).masked_fill(~mask, -math.inf).softmax(-1)
        a2 = (q2[..., s] @ k2[..., s].transpose(1, 2) / math.sqrt(hd)).masked_fill(~mask, -math.inf).softmax(-1)
        y[..., s] = (a1 - lam * a2) @ v[..., s]
    ref = attn.c_proj(y) + delta(attn.lora_o, y)
    with torch.no_grad():
        for explicit in (False, True):
            attn.explicit = explicit
            torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=0)


def test_lora_linear_matches_naive(hf_tiny):
    torch.manual_seed(0)
    m = perturb(apply_lora(GPT.from_pretrained(hf_tiny[0]), LoRAConfig(r=4, alpha=8, dropout=0.0, targets=("q", "k"))))
    lin = m.transformer.h[0].attn.c_attn
    x = torch.randn(3, 32)
    ref = x @ lin.base.weight.T + lin.base.bias
    for i, p in enumerate(("q", "k")):
        ref[:, i * 32:(i + 1) * 32] += 2.0 * x @ lin.lora[p].A.weight.T @ lin.lora[p].B.weight.T
    torch.testing.assert_close(lin(x), ref, atol=1e-5, rtol=0)
    assert "v" not in lin.lora


# ----------------------------------------------------------------------------- fused vs explicit

@pytest.mark.parametrize("groupnorm", [False, True])
@pytest.mark.parametrize("name", ["both", "negative", "shared", "both+v+o", "fixed-lambda"])
def test_fused_and_explicit_paths_agree(hf_tiny, name, groupnorm):
    kw = VARIANT_CONFIGS[name]
    results = []
    for explicit in (False, True):
        m = perturb(adapted(hf_tiny[0], groupnorm=groupnorm, **kw)).train()  # dropout is 0: deterministic
        set_attention_path(m, explicit)
        x, y = batch()
        logits, loss = m(x, y)
        loss.backward()
        results.append((logits, {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    (l_fused, g_fused), (l_explicit, g_explicit) = results
    torch.testing.assert_close(l_fused, l_explicit, atol=1e-5, rtol=0)
    assert g_fused.keys() == g_explicit.keys()
    for n in g_fused:
        torch.testing.assert_close(g_fused[n], g_explicit[n], atol=1e-4, rtol=0, msg=n)


# ----------------------------------------------------------------------------- GroupNorm, shared base

def test_groupnorm_head_rms_is_one_minus_lambda_init(hf_tiny):
    m = perturb(adapted(hf_tiny[0], groupnorm=True)).eval()
    x = torch.randn(2, 10, 32)
    for attn in layers(m):
        with torch.no_grad():
            attn.gn_gain.fill_(1.0)
            out = attn.c_proj.register_forward_pre_hook(lambda mod, a: setattr(mod, "seen", a[0]))
            attn(x)
            normed = attn.c_proj.seen.view(2, 10, 2, 16)
            attn.gn_gain, gain = None, attn.gn_gain  # the same layer without the norm: its input
            attn(x)
            raw = attn.c_proj.seen.view(2, 10, 2, 16)
            attn.gn_gain = gain
            out.remove()
        ms = raw.pow(2).mean(-1)  # (B, T, H)
        rms = normed.pow(2).mean(-1).sqrt()
        li = attn.lambda_init
        torch.testing.assert_close(rms, (1 - li) * (ms / (ms + 1e-5)).sqrt(), atol=1e-6, rtol=0)  # RMSNorm, eps 1e-5
        torch.testing.assert_close(rms, torch.full_like(rms, 1 - li), atol=2e-3, rtol=0)  # i.e. (1 - lambda_init) up to eps


def test_shared_base_with_zero_b_scales_heads_by_one_minus_lambda(hf_tiny):
    base = GPT.from_pretrained(hf_tiny[0]).eval()
    m = adapted(hf_tiny[0], variant="shared", learn_lambda=False, lambda_init=0.3).eval()
    assert all(a.lora_q2.B.weight.abs().sum().item() == 0 for a in layers(m))
    idx = batch()[0]
    # layer 0 sees the same input in both models; later layers see the rescaled residual stream
    ours, ref = head_outputs(m, idx)[0], head_outputs(base, idx)[0]
    torch.testing.assert_close(ours, 0.7 * ref, atol=1e-5, rtol=0)


def test_step0_of_paper_init_differs_from_base(hf_tiny):
    base = GPT.from_pretrained(hf_tiny[0]).eval()
    m = adapted(hf_tiny[0]).eval()
    idx = batch()[0]
    assert not torch.allclose(m(idx)[0], base(idx)[0], atol=1e-3)


# ----------------------------------------------------------------------------- function-preserving init

def test_preserve_init_equals_base_then_learns(hf_tiny):
    base = GPT.from_pretrained(hf_tiny[0]).eval()
    m = adapted(hf_tiny[0], init="preserve").eval()
    assert all(a.lam().item() == 0.0 for a in layers(m))
    idx = batch()[0]
    with torch.no_grad():
        torch.testing.assert_close(m(idx)[0], base(idx)[0], atol=1e-5, rtol=0)
    prompt = idx[:1, :5]
    assert m.generate(prompt, 20, temperature=0).tolist() == base.generate(prompt, 20, temperature=0).tolist()
    before = {n: p.clone() for n, p in m.named_parameters() if p.requires_grad}
    train_steps(m)
    assert all(not torch.equal(before[n], p) for n, p in m.named_parameters() if p.requires_grad)
    assert all(a.lam().item() != 0.0 for a in layers(m))


# ----------------------------------------------------------------------------- the lambda ramp

@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("explicit", [False, True], ids=["fused", "explicit"])
def test_lambda_ramp_starts_at_the_base_and_reaches_the_paper(request, family, explicit):
    """lambda_ramp=N: the lambda a layer uses is min(1, step / N) times the paper's, so step 0 is
    the base model and from step N on the model is the paper's form with the same parameters."""
    path = request.getfixturevalue("hf_tiny" if family == "gpt2" else "llama_tiny")[0]
    base = GPT.from_pretrained(path).eval()
    ramped, paper = adapted(path, lambda_ramp=4).eval(), adapted(path).eval()  # one seed: the same adapters
    for m in (ramped, paper):
        set_attention_path(m, explicit)
    idx = batch()[0]
    with torch.no_grad():
        assert all(a.lam().item() == 0.0 for a in layers(ramped))
        torch.testing.assert_close(ramped(idx)[0], base(idx)[0], atol=1e-5, rtol=0)
        assert (ramped(idx)[0] - paper(idx)[0]).abs().max() > 1e-3  # the paper's init is not the base
    prompt = idx[:1, :5]
    assert ramped.generate(prompt, 20, temperature=0).tolist() == base.generate(prompt, 20, temperature=0).tolist()
    for step, share in ((1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (9, 1.0)):
        set_lambda_ramp(ramped, step)
        for a, p in zip(layers(ramped), layers(paper)):
            torch.testing.assert_close(a.lam(), share * p.lam(), atol=1e-7, rtol=0,
                                       msg=f"step {step}: lambda must be {share} times the paper's")
    with torch.no_grad():
        assert torch.equal(ramped(idx)[0], paper(idx)[0])  # from step N on: the paper's form exactly


def test_lambda_ramp_opens_the_negative_term_after_step_0(hf_tiny):
    m = adapted(hf_tiny[0], lambda_ramp=2)
    with pytest.raises(ValueError, match="call difflora.set_lambda_ramp"):  # training it without the step: refused
        train_steps(m, n=1)
    set_lambda_ramp(m, 0)
    grads = train_steps(m, n=1)  # step 0: lambda is 0, so neither lambda nor the negative term gets a gradient
    closed = [n for n in grads if "lambda_" in n or "lora_q2" in n or "lora_k2" in n]
    assert closed and all(grads[n] is None or grads[n].abs().sum() == 0 for n in closed)
    assert any(grads[n].abs().sum() > 0 for n in grads if "lora_q1.B" in n)  # the positive LoRA learns from step 0
    set_lambda_ramp(m, 1)
    grads = train_steps(m, n=1)
    assert all(grads[n].abs().sum() > 0 for n in closed), "from step 1 lambda and the negative term learn"


def test_lambda_ramp_rejects_what_it_cannot_start():
    with pytest.raises(ValueError, match="cannot with groupnorm=True"):
        DiffLoRAConfig(lambda_ramp=10, groupnorm=True)
    with pytest.raises(ValueError, match="not needed with init='preserve'"):
        DiffLoRAConfig(lambda_ramp=10, init="preserve")
    with pytest.raises(ValueError, match="lambda_ramp must be an integer >= 0"):
        DiffLoRAConfig(lambda_ramp=-1)
    assert DiffLoRAConfig(lambda_ramp=10, learn_lambda=False, lambda_init=0.1).lambda_ramp == 10


def test_preserve_init_rejects_what_would_break_it():
    with pytest.raises(ValueError, match="init='preserve'"):
        DiffLoRAConfig(init="preserve", groupnorm=True)
    with pytest.raises(ValueError, match="init='preserve'"):
        DiffLoRAConfig(init="preserve", learn_lambda=False)
    with pytest.raises(ValueError, match="variant must be one of"):
        DiffLoRAConfig(variant="left")


# ----------------------------------------------------------------------------- gradients reach every adapter

def assert_live(model, frozen_before):
    before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    grads = train_steps(model)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(before[n], p), f"{n} did not change"
            assert grads[n] is not None and grads[n].abs().sum() > 0, f"{n} has no gradient"
        else:
            assert grads[n] is None, f"frozen {n} got a gradient"
    for n, t in model.state_dict().items():  # frozen tensors, byte for byte
        if n in frozen_before:
            assert torch.equal(frozen_before[n], t), f"frozen {n} changed"


@pytest.mark.parametrize("name", list(VARIANT_CONFIGS) + ["groupnorm"])
def test_gradient_liveness_difflora(hf_tiny, name):
    kw = VARIANT_CONFIGS.get(name, dict(groupnorm=True))
    m = adapted(hf_tiny[0], **kw)
    frozen = {n: t.clone() for n, t in m.state_dict().items() if "lora_" not in n and "lambda_" not in n and "gn_gain" not in n}
    assert_live(m, frozen)


@pytest.mark.parametrize("targets", [("q", "k"), ("q", "k", "v", "attn_out", "mlp_in", "mlp_out")])
def test_gradient_liveness_lora(hf_tiny, targets):
    torch.manual_seed(0)
    m = apply_lora(GPT.from_pretrained(hf_tiny[0]), LoRAConfig(r=4, alpha=8, dropout=0.0, targets=targets))
    frozen = {n: t.clone() for n, t in m.state_dict().items() if ".lora." not in n}
    assert_live(m, frozen)


def test_negative_term_with_zero_b_never_learns(hf_tiny):
    # the reason for the spec's init: with B = 0 in the LoRA-only negative term, Q2 = K2 = 0 forever
    m = adapted(hf_tiny[0])
    with torch.no_grad():
        for a in layers(m):
            a.lora_q2.B.weight.zero_()
            a.lora_k2.B.weight.zero_()
    with pytest.raises(AssertionError, match="lora_.2.* did not change"):
        assert_live(m, {})
    for a in layers(m):  # and indeed: neither half of the negative term ever moved
        assert a.lora_q2.B.weight.abs().sum() == 0 and a.lora_k2.B.weight.abs().sum() == 0


# ----------------------------------------------------------------------------- parameter counts, GPT-2 small

def small(apply, config):
    with torch.device("meta"):  # shapes only: no memory, no init time
        return apply(GPT(GPTConfig()), config)


@pytest.mark.parametrize("r", [8, 32])
def test_parameter_counts_gpt2_small(r):
    def adapters(counts):
        return sum(t for k, (t, f) in counts.items() if k.startswith("LoRA"))
    diff = param_counts(small(apply_difflora, DiffLoRAConfig(r=r)))
    assert adapters(diff) == 6144 * r * 12 == 73_728 * r
    assert diff["lambda"] == (256 * 12, 0)
    qk = param_counts(small(apply_lora, LoRAConfig(r=2 * r, targets=("q", "k"))))
    assert adapters(qk) == adapters(diff) and "lambda" not in qk
    neg = param_counts(small(apply_difflora, DiffLoRAConfig(r=2 * r, variant="negative")))
    assert adapters(neg) == adapters(diff)
    gn = param_counts(small(apply_difflora, DiffLoRAConfig(r=r, groupnorm=True)))
    assert gn["GroupNorm gain"] == (64 * 12, 0)
    assert diff["base model"] == (0, 124_439_808)  # all of GPT-2 small, frozen
    assert "trainable" in param_report(small(apply_difflora, DiffLoRAConfig(r=r)))


def test_init_bounds_gpt2_small():
    torch.manual_seed(0)
    a = DiffLoRAAttention(GPT(GPTConfig(n_layer=1)).transformer.h[0].attn, 0, DiffLoRAConfig(r=32))
    bound_a, bound_b = 1 / math.sqrt(768), 1 / math.sqrt(32)  # U(+-1/sqrt(fan_in)): 0.036084 and 0.1768
    assert abs(bound_a - 0.036084) < 1e-6 and abs(bound_b - 0.1768) < 1e-4
    for lora in (a.lora_q1, a.lora_k1, a.lora_q2, a.lora_k2):
        assert 0.99 * bound_a < lora.A.weight.abs().max() <= bound_a
    assert a.lora_q1.B.weight.abs().max() == 0 and a.lora_k1.B.weight.abs().max() == 0
    assert 0.99 * bound_b < a.lora_q2.B.weight.abs().max() <= bound_b


# ----------------------------------------------------------------------------- generation with a KV cache

@pytest.mark.parametrize("name", list(VARIANT_CONFIGS))
def test_kv_cache_generation_equals_uncached(hf_tiny, name):
    m = perturb(adapted(hf_tiny[0], **VARIANT_CONFIGS[name])).eval()
    m.crop_block_size(16)  # also crosses block_size
    prompt = batch(T=6)[0]
    assert m.generate(prompt, 20, temperature=0).tolist() == m.generate(prompt, 20, temperature=0, use_cache=False).tolist()


# ----------------------------------------------------------------------------- adapter files

@pytest.mark.parametrize("method", ["difflora", "difflora-ramp", "lora"])
def test_adapter_round_trip(hf_tiny, tmp_path, method):
    if method == "difflora":
        m = perturb(adapted(hf_tiny[0], groupnorm=True, lora_v=True)).eval()
    elif method == "difflora-ramp":  # saved in the middle of its ramp: loaded with the lambda it had then
        m = perturb(adapted(hf_tiny[0], lambda_ramp=4)).eval()
        set_lambda_ramp(m, 3)
    else:
        m = perturb(apply_lora(GPT.from_pretrained(hf_tiny[0]), LoRAConfig(r=4, alpha=8))).eval()
    path = str(tmp_path / "adapter.safetensors")
    save_adapter(m, path, step=3)
    if method == "difflora-ramp":
        with pytest.warns(UserWarning, match="saved at step 3 of its 4-step lambda ramp"):
            fresh = load_adapter(GPT.from_pretrained(hf_tiny[0]), path).eval()
    else:
        fresh = load_adapter(GPT.from_pretrained(hf_tiny[0]), path).eval()
    idx = batch()[0]
    assert torch.equal(m(idx)[0], fresh(idx)[0])
    if method == "difflora-ramp":
        assert all(a.ramp.item() == 0.75 for a in layers(fresh))
        save_adapter(m, path)
        with pytest.raises(ValueError, match="records no training step"):
            load_adapter(GPT.from_pretrained(hf_tiny[0]), path)
    trained_bytes = sum(p.numel() * 4 for p in m.parameters() if p.requires_grad)
    assert trained_bytes < os.path.getsize(path) < trained_bytes + 8192  # adapter tensors and a header only
    assert not os.path.exists(path + ".tmp")


def test_adapter_mismatches_fail_clearly(hf_tiny, tmp_path):
    from conftest import make_hf_model
    path = str(tmp_path / "adapter.safetensors")
    save_adapter(adapted(hf_tiny[0]), path)
    other = tmp_path / "wide"
    make_hf_model(n_embd=48, n_head=3).save_pretrained(other)
    with pytest.raises(ValueError, match="n_embd=32 .* this model has n_embd=48"):
        load_adapter(GPT.from_pretrained(str(other)), path)
    lora_model = apply_lora(GPT.from_pretrained(hf_tiny[0]), LoRAConfig())
    with pytest.raises(ValueError, match="holds a difflora adapter, but this model has a lora adapter"):
        load_adapter(lora_model, path)
    with pytest.raises(ValueError, match="already has a lora adapter"):
        apply_difflora(lora_model, DiffLoRAConfig())
    with pytest.raises(ValueError, match="was saved with"):
        load_adapter(adapted(hf_tiny[0], r=8), path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_adapter(GPT.from_pretrained(hf_tiny[0]), path)


# ----------------------------------------------------------------------------- merging

def test_lora_merge_and_unmerge(hf_tiny):
    m = perturb(apply_lora(GPT.from_pretrained(hf_tiny[0]), LoRAConfig(r=4, alpha=8))).eval()
    idx = batch()[0]
    ref = m(idx)[0]
    merge(m)
    torch.testing.assert_close(m(idx)[0], ref, atol=1e-5, rtol=0)
    unmerge(m)
    torch.testing.assert_close(m(idx)[0], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["both+v+o", "negative"])
def test_difflora_merge_keeps_negative_branch(hf_tiny, name):
    m = perturb(adapted(hf_tiny[0], **VARIANT_CONFIGS[name])).eval()
    idx = batch()[0]
    ref = m(idx)[0]
    w = m.transformer.h[0].attn.c_attn.weight.clone()
    merge(m)
    assert name == "negative" or not torch.equal(w, m.transformer.h[0].attn.c_attn.weight)
    torch.testing.assert_close(m(idx)[0], ref, atol=1e-5, rtol=0)
    unmerge(m)
    torch.testing.assert_close(m.transformer.h[0].attn.c_attn.weight, w, atol=1e-6, rtol=0)


def test_shared_base_cannot_merge(hf_tiny):
    with pytest.raises(ValueError, match="shared-base variant cannot be merged"):
        merge(adapted(hf_tiny[0], variant="shared"))


# ----------------------------------------------------------------------------- maps for analysis

def test_attention_maps_rows(hf_tiny):
    m = perturb(adapted(hf_tiny[0])).eval()
    maps = attention_maps(m, batch(T=12)[0])
    assert len(maps) == 2
    for a1, neg, lam in maps:
        assert a1.shape == (2, 2, 12, 12)
        torch.testing.assert_close(a1.sum(-1), torch.ones(2, 2, 12), atol=1e-5, rtol=0)
        torch.testing.assert_close((a1 - neg).sum(-1), torch.full((2, 2, 12), 1 - lam), atol=1e-5, rtol=0)
        assert torch.all(a1.triu(1) == 0) and torch.all(neg.triu(1) == 0)
    assert not layers(m)[0].explicit and layers(m)[0].maps is None


@pytest.mark.parametrize("explicit", [False, True])
def test_bf16_autocast_close_to_fp32(hf_tiny, explicit):
    # what train.py does on a GPU, here on CPU: bf16 autocast, fp32 master weights
    m = perturb(adapted(hf_tiny[0], learn_lambda=False, lambda_init=0.3, groupnorm=True, lora_v=True, lora_o=True)).train()
    set_attention_path(m, explicit)
    x, y = batch()
    ref, ref_loss = m(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = m(x, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(logits.float(), ref, atol=0.05, rtol=0.05)
    assert abs(loss.item() - ref_loss.item()) < 0.02
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- fused adapters, dropout, memory

def test_lora_deltas_equal_each_adapter_on_its_own():
    """The batched computation equals s B(A(x)) per adapter, values and gradients, without dropout."""
    torch.manual_seed(0)
    loras = [LoRA(32, 24, r, 2.0 * r, random_b=True) for r in (4, 4, 4)]
    x = torch.randn(2, 5, 32, requires_grad=True)
    fused = lora_deltas(x, loras)  # (3, 2, 5, 24)
    naive = torch.stack([lo.scale * x @ lo.A.weight.T @ lo.B.weight.T for lo in loras])
    torch.testing.assert_close(fused, naive, atol=1e-6, rtol=0)
    g = torch.randn_like(naive)
    grads = [torch.autograd.grad(out, [x] + [w for lo in loras for w in (lo.A.weight, lo.B.weight)], g)
             for out in (fused, naive)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_adapter_deltas_equal_the_plain_lora_forward():
    """adapter_deltas (what the layers call) gives each adapter what LoRA.forward, the plain
    s · dropout(x) A B, gives: equal values without dropout (adapters of two widths, as Q and a
    grouped-query K), and in training a delta that dropout made differ from the eval one, in
    expectation equal to it."""
    torch.manual_seed(0)
    loras = [LoRA(32, w, 4, 8.0, dropout=0.25, random_b=True) for w in (24, 8, 24)]
    x = torch.randn(2, 5, 32)
    for lo in loras:
        lo.eval()
    for lo, delta in adapter_deltas(x, loras).items():
        torch.testing.assert_close(delta, lo(x), atol=1e-6, rtol=0, msg=lambda m: "eval: adapter_deltas != LoRA.forward\n" + m)
    for lo in loras:
        lo.train()
    plain = loras[0](x)
    mean = sum(adapter_deltas(x, loras)[loras[0]] for _ in range(4000)) / 4000
    assert not torch.allclose(plain, loras[0].eval()(x)), "dropout in training changed nothing"
    torch.testing.assert_close(mean, loras[0](x), atol=0.05, rtol=0, msg=lambda m: "training: the mean delta is not the eval delta\n" + m)


def test_lora_deltas_dropout_gives_each_adapter_its_own_mask():
    """In training, adapter i sees x * mask_i * scale with the masks of dropout_keep: its value and
    gradients equal that naive computation, and the masks differ between adapters."""
    loras = [LoRA(32, 32, 4, 8.0, dropout=0.3, random_b=True) for _ in range(4)]
    x = torch.randn(3, 7, 32, requires_grad=True)
    torch.manual_seed(1)
    fused = lora_deltas(x, loras)
    torch.manual_seed(1)
    keep, scale = dropout_keep(4, x.reshape(-1, 32), 0.3)
    xs = keep.view(4, 3, 7, 32) * x * scale
    naive = torch.stack([lo.scale * xi @ lo.A.weight.T @ lo.B.weight.T for lo, xi in zip(loras, xs)])
    torch.testing.assert_close(fused, naive, atol=1e-6, rtol=0)
    (gf,), (gn,) = torch.autograd.grad(fused.sum(), [x]), torch.autograd.grad(naive.sum(), [x])
    torch.testing.assert_close(gf, gn, atol=1e-5, rtol=0)
    assert not torch.equal(keep[0], keep[1])
    loras[0].eval()  # eval: no dropout, the plain adapters
    torch.testing.assert_close(lora_deltas(x, loras)[1], loras[1].scale * x @ loras[1].A.weight.T @ loras[1].B.weight.T,
                               atol=1e-6, rtol=0)


def test_dropout_keep_rate_scale_and_independence():
    """Each element is kept with probability 1 - p (p rounded to 2^-16), masks are independent
    of each other (two of them agree on both-kept in (1 - p)^2 of the places), and the scale
    makes the expected multiplier exactly 1."""
    torch.manual_seed(0)
    x = torch.empty(1000, 500)
    for p in (0.1, 0.5):
        keep, scale = dropout_keep(2, x, p)
        kept = 1 - round(p * 2**16) / 2**16
        assert scale * kept == pytest.approx(1.0, abs=1e-12)
        rate = keep.float().mean().item()
        assert abs(rate - (1 - p)) < 0.003  # 1e6 draws: the standard error is ~0.0005
        both = (keep[0] & keep[1]).float().mean().item()
        assert abs(both - (1 - p) ** 2) < 0.003
    keep, _ = dropout_keep(1, torch.empty(7), 0.0)
    assert keep.all()


def test_explicit_path_keeps_two_maps_for_backward(hf_tiny):
    """A1 V - lambda (A2 V): gradients equal those of the three-map form ((A1 - lambda A2) V),
    and backward keeps exactly two T x T maps per layer (A1 and A2), not a third."""
    attn = layers(perturb(adapted(hf_tiny[0])).train())[1]
    q1, k1, q2, k2, v = (torch.randn(2, 2, 12, 16, requires_grad=True) for _ in range(5))
    lam = attn.lam()

    def three_maps():
        a1, a2 = causal_softmax(q1, k1), causal_softmax(q2, k2)
        return (a1 - lam * a2) @ v

    def maps_kept(f):
        """The distinct float T x T maps that autograd saves while f runs (matmul saves them as (B*H, T, T))."""
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = f()
        return out, len({t.untyped_storage().data_ptr() for t in saved if t.shape[-2:] == (12, 12) and t.is_floating_point()})

    y, kept = maps_kept(lambda: explicit_differential_attention(q1, k1, q2, k2, v, lam, 0.0)[0])
    assert kept == 2 and maps_kept(three_maps)[1] == 3
    inputs = [q1, k1, q2, k2, v, attn.lambda_q1, attn.lambda_k2]
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, inputs, g, retain_graph=True), torch.autograd.grad(three_maps(), inputs, g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
