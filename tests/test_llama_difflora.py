"""DiffLoRA and the LoRA baseline on Llama-family attention (RoPE on both maps, grouped-query
keys) against the equations, and train.py / sample.py end to end on a tiny Llama base; on the
real SmolLM2 GGUF, the preserving init and a short run."""

import json
import math
import os
import sys

import pytest
import torch

from conftest import FAST, ROOT, make_llama, needs_smollm2, run, train
from analysis.attention_maps import attention_maps
from difflora import (DiffLoRAConfig, LoRAConfig, apply_difflora, apply_lora, merge, param_counts, set_attention_path,
                      unmerge)
from runs import load_adapter, save_adapter
from model import GPT, GPTConfig, LLAMA, flops_per_token, rope_cos_sin
from test_difflora import VARIANT_CONFIGS, perturb, train_steps  # its batches' ids (< 101) fit this vocabulary too

V = 384  # the tiny Llama's vocabulary


def batch(T=20, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def adapted(path, seed=0, **kw):
    torch.manual_seed(seed)
    return apply_difflora(GPT.from_pretrained(path), DiffLoRAConfig(**{"dropout": 0.0, "r": 4, "alpha": 8, **kw}))


def rotate(x, pos, theta):
    """RoPE written out: the pair (x_i, x_{i+d/2}) of each row t turned by t * theta^(-2i/d)."""
    d = x.size(-1)
    out = x.clone()
    for t in range(x.size(-2)):
        for i in range(d // 2):
            a = pos[t] * theta ** (-2 * i / d)
            x1, x2 = x[..., t, i], x[..., t, i + d // 2]
            out[..., t, i], out[..., t, i + d // 2] = x1 * math.cos(a) - x2 * math.sin(a), x2 * math.cos(a) + x1 * math.sin(a)
    return out


def test_layer_matches_naive_equations_with_rope_and_gqa(llama_tiny):
    """One layer, every adapter on, against the equations: Q1 = x W_Q + s x A B (and K1 with
    n_kv_head * head_dim outputs), Q2 and K2 from adapters alone, all four rotated by RoPE, each
    key/value head serving its 2 query heads in both maps, (A1 - lambda A2) V, W_O plus its LoRA."""
    m = perturb(adapted(llama_tiny[0], lora_v=True, lora_o=True)).eval()
    attn = m.transformer.h[1].attn
    assert (attn.n_head, attn.n_kv_head, attn.head_dim) == (4, 2, 16)
    assert attn.lora_k2.B.out_features == attn.lora_k1.B.out_features == 32 and attn.lora_q2.B.out_features == 64
    T, C, H, hd, theta = 9, 64, 4, 16, m.config.rope_theta
    x = torch.randn(2, T, C)
    W = attn.c_attn.weight  # (C + 2 * 32, C), no bias
    delta = lambda lora, x: lora.scale * x @ lora.A.weight.T @ lora.B.weight.T
    q1 = x @ W[:64].T + delta(attn.lora_q1, x)
    k1 = x @ W[64:96].T + delta(attn.lora_k1, x)
    v = x @ W[96:].T + delta(attn.lora_v, x)
    q2, k2 = delta(attn.lora_q2, x), delta(attn.lora_k2, x)
    lam = (attn.lambda_q1 @ attn.lambda_k1).exp() - (attn.lambda_q2 @ attn.lambda_k2).exp() + attn.lambda_init
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    pos = list(range(T))
    y = torch.zeros(2, T, C)
    for h in range(H):
        g = h // 2  # the key/value head of query head h
        qs, ks = slice(h * hd, (h + 1) * hd), slice(g * hd, (g + 1) * hd)
        Q1, K1, Q2, K2 = (rotate(t, pos, theta) for t in (q1[..., qs], k1[..., ks], q2[..., qs], k2[..., ks]))
        a1 = (Q1 @ K1.transpose(1, 2) / math.sqrt(hd)).masked_fill(~mask, -math.inf).softmax(-1)
        a2 = (Q2 @ K2.transpose(1, 2) / math.sqrt(hd)).masked_fill(~mask, -math.inf).softmax(-1)
        y[..., qs] = (a1 - lam * a2) @ v[..., ks]
    ref = attn.c_proj(y) + delta(attn.lora_o, y)
    rope = rope_cos_sin(m.rope_inv_freq, torch.arange(T))
    with torch.no_grad():
        for explicit in (False, True):
            attn.explicit = explicit
            torch.testing.assert_close(attn(x, None, rope), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, groupnorm", [(n, g) for n in VARIANT_CONFIGS for g in (False, True)
                                             if not (g and n == "preserve")])  # preserve needs GroupNorm off
def test_fused_and_explicit_paths_agree(llama_tiny, name, groupnorm):
    kw = dict(VARIANT_CONFIGS[name])
    m = perturb(adapted(llama_tiny[0], groupnorm=groupnorm, **kw)).train()
    x, y = batch()
    results = []
    for explicit in (False, True):
        set_attention_path(m, explicit)
        m.zero_grad()
        logits, loss = m(x, y)
        loss.backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    for n in results[0][1]:
        torch.testing.assert_close(results[0][1][n], results[1][1][n], atol=1e-4, rtol=0, msg=n)


def test_preserve_init_equals_base(llama_tiny):
    base = GPT.from_pretrained(llama_tiny[0]).eval()
    m = adapted(llama_tiny[0], init="preserve").eval()
    x, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], base(x)[0], atol=1e-5, rtol=0)
    prompt = x[:1, :6]
    assert m.generate(prompt, 20, temperature=0).tolist() == base.generate(prompt, 20, temperature=0).tolist()


@pytest.mark.parametrize("method", ["difflora", "difflora-shared", "lora"])
def test_kv_cache_generation_equals_uncached(llama_tiny, method):
    torch.manual_seed(0)
    base = GPT.from_pretrained(llama_tiny[0])
    m = apply_lora(base, LoRAConfig(r=4, dropout=0.0)) if method == "lora" else \
        apply_difflora(base, DiffLoRAConfig(r=4, dropout=0.0, variant="shared" if "shared" in method else "both"))
    m = perturb(m).eval()
    prompt = batch(T=7)[0]
    assert m.generate(prompt, 25, temperature=0).tolist() == m.generate(prompt, 25, temperature=0, use_cache=False).tolist()


@pytest.mark.parametrize("name", ["both", "negative", "shared", "both+v+o", "fixed-lambda", "groupnorm", "lora-all", "lora-qk"])
def test_frozen_stay_identical_and_every_trainable_moves(llama_tiny, name):
    torch.manual_seed(0)
    base = GPT.from_pretrained(llama_tiny[0])
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    if name.startswith("lora"):
        m = apply_lora(base, LoRAConfig(r=4, dropout=0.1, targets=("all",) if name == "lora-all" else ("q", "k")))
    else:
        kw = dict(groupnorm=True) if name == "groupnorm" else VARIANT_CONFIGS.get(name, {})
        m = apply_difflora(base, DiffLoRAConfig(r=4, dropout=0.1, **kw))
    trainable = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    train_steps(m)
    now = dict(m.named_parameters())
    frozen = 0
    for n, p in now.items():
        if p.requires_grad:
            assert not torch.equal(p, trainable[n]), f"{n} did not move"
        else:
            assert torch.equal(p, before[n.replace(".base.", ".")]), n
            frozen += 1
    assert frozen == len(before)
    if name == "lora-all":
        assert {n.split(".lora.")[1].split(".")[0] for n in trainable} == {"q", "k", "v", "o", "gate", "up", "down"}


def test_adapter_round_trip_and_wrong_base(llama_tiny, tmp_path):
    m = perturb(adapted(llama_tiny[0], lora_v=True))
    save_adapter(m, str(tmp_path / "a.safetensors"))
    again = load_adapter(GPT.from_pretrained(llama_tiny[0]), str(tmp_path / "a.safetensors"))
    for (n, p), (n2, p2) in zip(m.named_parameters(), again.named_parameters()):
        assert n == n2 and torch.equal(p, p2), n
    make_llama(seed=1, vocab_size=V, num_key_value_heads=4).save_pretrained(tmp_path / "mha")
    with pytest.raises(ValueError, match="n_kv_head=2.*this model has n_kv_head=4"):
        load_adapter(GPT.from_pretrained(str(tmp_path / "mha")), str(tmp_path / "a.safetensors"))
    from conftest import make_hf_model
    make_hf_model(vocab_size=V, n_embd=64, n_head=4).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="(n_kv_head|family)"):
        load_adapter(GPT.from_pretrained(str(tmp_path / "gpt2")), str(tmp_path / "a.safetensors"))


@pytest.mark.parametrize("method", ["difflora", "lora"])
def test_merge_keeps_the_logits(llama_tiny, method):
    torch.manual_seed(0)
    base = GPT.from_pretrained(llama_tiny[0])
    m = apply_lora(base, LoRAConfig(r=4, dropout=0.0)) if method == "lora" else \
        apply_difflora(base, DiffLoRAConfig(r=4, dropout=0.0, lora_v=True, lora_o=True))
    m = perturb(m).eval()
    x, _ = batch()
    w = m.transformer.h[0].attn.c_attn
    w = (w.base if method == "lora" else w).weight.clone()
    with torch.no_grad():
        ref = m(x)[0]
        merge(m)
        torch.testing.assert_close(m(x)[0], ref, atol=1e-4, rtol=0)  # fp32 rounding of W + s B A, on logits of size ~1
        unmerge(m)
        torch.testing.assert_close(m(x)[0], ref, atol=1e-4, rtol=0)
    after = m.transformer.h[0].attn.c_attn
    torch.testing.assert_close((after.base if method == "lora" else after).weight, w, atol=1e-6, rtol=0)


def shape_of(n_layer, n_embd, n_head, n_kv_head, n_inner, vocab):
    with torch.device("meta"):  # counting needs no memory
        return GPT(GPTConfig(**LLAMA, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_kv_head, n_inner=n_inner,
                             vocab_size=vocab, block_size=64))


def adapter_params(model):
    return sum(t for k, (t, _) in param_counts(model).items() if k.startswith("LoRA"))


@pytest.mark.parametrize("shape, per_layer, r", [((30, 576, 9, 3, 1536, 49152), 3840, 16),   # SmolLM2-135M
                                                 ((16, 2048, 32, 8, 8192, 128256), 13312, 32)])  # Llama-3.2-1B
def test_parameter_counts_on_gqa_shapes(shape, per_layer, r):
    """Both terms at rank r: 2 [r (C + C) + r (C + C_kv)] per layer, C_kv = n_kv_head head_dim: the
    K adapters are narrower. LoRA on Q, K at rank 2r, and the negative term alone at 2r, have the
    same count: the matched budget survives grouped-query attention."""
    n_layer, C, H, Hkv, _, _ = shape
    C_kv = Hkv * C // H
    assert per_layer == 2 * (2 * C + C + C_kv)  # Q1, Q2: r (C + C) each; K1, K2: r (C + C_kv) each
    both = adapter_params(apply_difflora(shape_of(*shape), DiffLoRAConfig(r=r)))
    assert both == per_layer * r * n_layer
    assert adapter_params(apply_lora(shape_of(*shape), LoRAConfig(r=2 * r, targets=("q", "k")))) == both
    assert adapter_params(apply_difflora(shape_of(*shape), DiffLoRAConfig(r=2 * r, variant="negative"))) == both
    counts = param_counts(apply_difflora(shape_of(*shape), DiffLoRAConfig(r=r, groupnorm=True)))
    assert counts["lambda"][0] == 4 * 64 * n_layer and counts["GroupNorm gain"][0] == 64 * n_layer
    if n_layer == 16:  # the official quickstart's printout for Llama-3.2-1B at r = 32, with GroupNorm
        assert both == 6_815_744 and both + counts["GroupNorm gain"][0] == 6_816_768


def test_flops_count_grouped_query_and_swiglu():
    m = shape_of(30, 576, 9, 3, 1536, 49152)
    n = 30 * (576 * (576 + 2 * 192) + 576 * 576 + 3 * 576 * 1536) + 49152 * 576  # matmul weights (lm_head tied)
    assert flops_per_token(m, 256) == 6 * n + 3 * 30 * 4 * 576 * 256  # nothing frozen: 6 N + attention
    d = apply_difflora(shape_of(30, 576, 9, 3, 1536, 49152), DiffLoRAConfig(r=16))
    lora = 3840 * 16 * 30
    assert flops_per_token(d, 256) == 4 * (n + lora) + 2 * lora + 3 * 30 * 2 * 4 * 576 * 256


def test_plain_attention_maps_equal_transformers(llama_tiny):
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(llama_tiny[0], attn_implementation="eager").eval()
    x, _ = batch(T=12)
    with torch.no_grad():
        ref = hf(x, output_attentions=True).attentions
    ours = attention_maps(GPT.from_pretrained(llama_tiny[0]).eval(), x)
    for (a, neg, lam), r in zip(ours, ref):
        assert neg is None and lam == 0.0
        torch.testing.assert_close(a, r, atol=1e-5, rtol=0)
    for a1, neg, lam in attention_maps(perturb(adapted(llama_tiny[0])).eval(), x):
        torch.testing.assert_close(a1.sum(-1), torch.ones_like(a1.sum(-1)), atol=1e-5, rtol=0)
        torch.testing.assert_close((a1 - neg).sum(-1), torch.full_like(a1.sum(-1), 1 - lam), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the scripts on a tiny Llama

@pytest.mark.parametrize("method", ["difflora", "lora", "full"])
@pytest.mark.slow
def test_training_on_a_llama_base(llama_tiny, chain, tmp_path, method):
    g = train(f"--init_from={llama_tiny[0]}", f"--dataset={chain}", f"--out_dir={tmp_path}", f"--method={method}",
              "--max_iters=30", "--eval_interval=15", "--lora_dropout=0.0")
    ev = g["metrics"]["eval"]
    assert ev[-1]["train"] < 0.95 * ev[0]["train"] and ev[-1]["val"] < 0.95 * ev[0]["val"]
    if method == "full":  # a Hugging Face Llama checkpoint that transformers reads
        from transformers import LlamaForCausalLM
        idx = batch()[0]
        ours = g["raw_model"].eval()(idx)[0]
        torch.testing.assert_close(LlamaForCausalLM.from_pretrained(tmp_path).eval()(idx).logits, ours, atol=1e-4, rtol=0)
    out = run(sys.executable, "sample.py", f"--out_dir={tmp_path}", "--temperature=0", "--start=The secret code",
              "--max_new_tokens=8", "--num_samples=1", "--device=cpu")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The secret code")


@pytest.mark.parametrize("configs", [["config/lab/train.py"], ["config/lab/train.py", "config/lab/negative.py"],
                                     ["config/lab/train.py", "config/train_lora.py"],
                                     ["config/lab/train.py", "config/lab/gpu.py", "config/lab/negative.py"]])
@pytest.mark.slow
def test_lab_configs_train_the_methods_at_one_budget(llama_tiny, chain, tmp_path, configs):
    """The lab's config stacks run (on a tiny Llama, the sizes overridden) and train what they
    say: DiffLoRA both terms at r, its negative term alone at 2r, LoRA on Q, K at 2r, each the
    same number of adapter parameters (lambda vectors aside)."""
    g = train(*configs, f"--init_from={llama_tiny[0]}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=2",
              "--eval_interval=2", "--eval_iters=1", "--block_size=32", "--batch_size=2", "--gradient_accumulation_steps=1",
              "--lora_rank=4" if configs == ["config/lab/train.py"] else "--lora_rank=8")
    adapters = sum(p.numel() for n, p in g["raw_model"].named_parameters() if p.requires_grad and "lambda" not in n)
    c = g["raw_model"].config
    q, kv = c.n_head * c.head_dim, c.n_kv_head * c.head_dim  # the widths of Q and K
    assert adapters == c.n_layer * 8 * ((c.n_embd + q) + (c.n_embd + kv))  # rank 8 on Q and K, or 4 on Q1, K1, Q2, K2
    assert g["config"]["variant"] == ("negative" if "config/lab/negative.py" in configs else "both")
    assert g["method"] == ("lora" if "config/train_lora.py" in configs else "difflora")


@pytest.mark.parametrize("method", ["difflora", "lora"])
@pytest.mark.slow
def test_resume_on_a_llama_base_replays_exactly(llama_tiny, chain, tmp_path, method):
    common = [f"--init_from={llama_tiny[0]}", f"--dataset={chain}", f"--method={method}", "--lr_decay_iters=12",
              "--eval_interval=6", "--lora_dropout=0.1"]
    straight = train(*common, f"--out_dir={tmp_path / 'a'}", "--max_iters=12")
    train(*common, f"--out_dir={tmp_path / 'b'}", "--max_iters=6")
    resumed = train(*common, f"--out_dir={tmp_path / 'b'}", "--max_iters=12", "--init_from=resume")
    b = dict(resumed["raw_model"].named_parameters())
    for name, p in straight["raw_model"].named_parameters():
        if p.requires_grad:
            assert torch.equal(p, b[name]), name
    assert straight["metrics"]["eval"] == resumed["metrics"]["eval"]


@pytest.mark.slow
def test_two_process_torchrun_on_a_llama_base(llama_tiny, chain, tmp_path):
    out = run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *FAST,
              f"--init_from={llama_tiny[0]}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=4",
              "--eval_interval=2", "--gradient_accumulation_steps=2", "--lora_dropout=0.1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "all 2 ranks hold identical trainable tensors: True" in out.stdout


@pytest.mark.slow
def test_needle_data_prepared_for_the_base_and_refused_for_another(llama_tiny, tmp_path):
    """train.py prepares a dataset of this project for the base's tokenizer, in a folder of its
    own, and stops with one line on token files of another tokenizer."""
    g = train(f"--init_from={llama_tiny[0]}", "--dataset=needle", f"--out_dir={tmp_path / 'out'}", "--max_iters=0",
              "--block_size=255")
    from tokenizer import get_tokenizer
    assert g["data_dir"] == os.path.join(ROOT, "data", "needle", get_tokenizer(llama_tiny[0]).name)
    out = run(sys.executable, "data/needle/prepare.py", "--n_train=4", "--n_val=2", f"--out_dir={tmp_path / 'gpt2'}")
    assert out.returncode == 0, out.stderr
    with pytest.raises(SystemExit, match="holds tokens of the tokenizer gpt2.*uses bpe384-"):
        train(f"--init_from={llama_tiny[0]}", f"--dataset={tmp_path / 'gpt2'}", f"--out_dir={tmp_path / 'out2'}",
              "--max_iters=0", "--block_size=255")


@pytest.fixture(scope="module")
def trained_llama(llama_tiny, chain, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama_run")
    train(f"--init_from={llama_tiny[0]}", f"--dataset={chain}", f"--out_dir={out}", "--max_iters=3", "--eval_interval=3")
    return llama_tiny[0], str(out)


@pytest.mark.slow
def test_attention_eval_needle_and_induction_on_a_llama_base(trained_llama, tmp_path):
    base, run_dir = trained_llama
    out = run(sys.executable, "analysis/draw_attention.py", f"--out_dir={run_dir}", f"--out={tmp_path / 'maps.png'}", "--layers=0,1",
              "--head=3", "--device=cpu")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "maps.png").exists() and "A1-lambda*A2" in out.stdout and "base" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.split() and line.split()[0] in ("0", "1")]
    assert len(rows) == 2 and all(abs(sum(float(v) for v in row[2:6]) - 1.0) < 0.02 for row in rows)
    out = run(sys.executable, "analysis/eval_needle.py", f"--models={base},{run_dir}", "--lengths=160,200", "--depths=0,1",
              "--examples=2", "--needles=2", f"--out={tmp_path / 'needle.png'}", "--device=cpu")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("exact match by row and needle depth") == 2
    out = run(sys.executable, "analysis/eval_needle.py", f"--models={run_dir}", "--lengths=300")
    assert out.returncode == 1 and "longer than" in out.stderr and "context of 256" in out.stderr
    out = run(sys.executable, "analysis/induction.py", f"--model={run_dir}", "--dataset=all", "--seq_lens=4,16", "--n_seq=4")
    assert out.returncode == 0, out.stderr
    assert "ln 381 = " in out.stdout  # 384 ids less the 3 special tokens


@pytest.mark.slow
def test_eval_needle_measures_equal_greedy_decoding_and_full_passes(trained_llama, tmp_path):
    """exact, loss and margin come from one cached pass over the prompt and one per candidate
    (here a DiffLoRA run on a Llama base: RoPE, grouped-query keys, the cache of k1, k2, v):
    recomputed naively, by generate() and by a full uncached pass per candidate."""
    from runs import load_trained
    from tokenizer import get_tokenizer
    sys.path.insert(0, os.path.join(ROOT, "data", "needle"))
    from needle import eval_seed, make_example
    out = run(sys.executable, "analysis/eval_needle.py", f"--models={trained_llama[1]}", "--kinds=single,multikey,multivalue",
              "--needles=3", "--values=2", "--lengths=250", "--depths=0.5", "--examples=3", "--attn_examples=1",
              f"--out={tmp_path / 'n.png'}", "--device=cpu")
    assert out.returncode == 0, out.stderr
    cells = json.load(open(tmp_path / "n.json"))["entries"][trained_llama[1]]["cells"][0]
    assert [c["kind"] for c in cells] == ["single", "multikey", "multivalue"]
    model = load_trained(trained_llama[1]).eval()
    enc = get_tokenizer(model.name_or_path)

    def logprob(prompt, answer):
        with torch.no_grad():
            logits, _ = model(torch.tensor([prompt + answer]))
        lp = logits[0, len(prompt) - 1:-1].log_softmax(-1)  # (A, vocab)
        return lp[torch.arange(len(answer)), torch.tensor(answer)].sum().item()

    for c in cells:
        for i in range(3):
            ex = make_example(enc, eval_seed(1, c["kind"], 3, 250, 0.5, i), 250, 3, 0.5, kind=c["kind"], values=2)
            prompt, answer = ex["tokens"][:ex["answer_start"]], ex["tokens"][ex["answer_start"]:]
            greedy = model.generate(torch.tensor([prompt]), len(answer), temperature=0)[0, len(prompt):].tolist()
            assert c["exact"][i] == float(greedy == answer)
            right = logprob(prompt, answer)
            assert c["loss"][i] == pytest.approx(-right / len(answer), abs=1e-4)
            assert c["margin"][i] == pytest.approx(right - max(logprob(prompt, w) for w in ex["wrong"]), abs=1e-3)


@pytest.mark.slow
def test_bench_on_the_llama_family():
    out = run(sys.executable, "bench/speed.py", "--family=llama", "--n_layer=2", "--n_head=4", "--n_kv_head=2", "--n_embd=64",
              "--n_inner=96", "--vocab_size=100", "--seq_lens=16", "--methods=lora,difflora", "--steps=1", "--gen_tokens=4",
              "--gen_methods=difflora", "--ratio_shapes=1x16", "--pairs=3")
    assert out.returncode == 0, out.stderr
    for label in ("our forward / transformers' forward, B=1 T=16", "DiffLoRA / LoRA step, B=1 T=16",
                  "our LoRA / transformers+PEFT LoRA step, B=1 T=16", "our cached generation"):
        assert any(line.startswith(label) and "over 3 pairs" in line for line in out.stdout.splitlines()), label
    assert "same tokens as transformers: True" in out.stdout and "llama n_layer 2, n_head 4, n_kv_head 2" in out.stdout
    # the paper's comparison (config/bench_paper.py at a tiny shape): LoRA r=4 on every map, checkpointed blocks
    out = run(sys.executable, "bench/speed.py", "config/bench_paper.py", "--n_layer=2", "--n_head=4", "--n_kv_head=2",
              "--n_embd=64", "--n_inner=96", "--vocab_size=100", "--seq_lens=16", "--ratio_shapes=", "--lora_rank=4",
              "--rank=2", "--steps=1", "--device=cpu", "--dtype=float32")
    assert out.returncode == 0, out.stderr
    assert "LoRA rank 4 on all; gradient checkpointing True" in out.stdout
    assert [line.split()[0] for line in out.stdout.splitlines() if line.endswith(tuple("0123456789")) and " 16 " in line] \
        == ["lora", "difflora"]


# ----------------------------------------------------------------------------- the real SmolLM2

@needs_smollm2
@pytest.mark.slow
def test_smollm2_preserve_reproduces_the_base_answer():
    sys.path.insert(0, os.path.join(ROOT, "data", "needle"))
    from needle import make_example
    from tokenizer import get_tokenizer
    enc = get_tokenizer("smollm2")
    ex = make_example(enc, 3, 512, 4, 0.5)
    prompt = torch.tensor([ex["tokens"][:ex["answer_start"]]])
    n = len(ex["tokens"]) - ex["answer_start"]
    base = GPT.from_pretrained("smollm2").eval()
    want = base.generate(prompt, n, temperature=0)
    torch.manual_seed(0)
    m = apply_difflora(base, DiffLoRAConfig(init="preserve")).eval()
    assert m.generate(prompt, n, temperature=0).tolist() == want.tolist()


@needs_smollm2
@pytest.mark.slow
def test_smollm2_difflora_run_finishes(tmp_path):
    g = train("--init_from=smollm2", "--dataset=needle", f"--out_dir={tmp_path}", "--block_size=255", "--batch_size=2",
              "--max_iters=3", "--eval_interval=3", "--eval_iters=1", "--lora_rank=8", "--lora_alpha=16.0")
    assert g["iter_num"] == 3 and os.path.exists(tmp_path / "adapter.safetensors")
    assert len(g["metrics"]["eval"][-1]["lambda"]) == 30
