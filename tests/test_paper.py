"""The paper's recipe (#18): Tulu-format chats prepared for a Llama-style base (checked against
transformers' apply_chat_template), their mask and truncation, variable-length batches in
train.py, each config/paper variant for 2 steps with the README's parameter formula, the linear
schedule and gradient checkpointing."""

import json
import os
import runpy
import sys

import numpy as np
import pytest
import torch

from conftest import LLAMA32_CHAT, ROOT, make_llama, make_tokenizer, train
from model import GPT, LLAMA, GPTConfig

PREPARE = os.path.join(ROOT, "data", "tulu2", "prepare.py")
PAPER = os.path.join(ROOT, "config", "paper")
MAX_TOKENS = 200
LONG = " ".join(["word"] * 300)  # far past MAX_TOKENS in any tiny tokenizer
CONVERSATIONS = [  # Tulu's format: each row's messages is a list of {role, content}
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 12 + 30?"},
     {"role": "assistant", "content": "42."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": " Blue, like the sea.\n"},
     {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."}],
    [{"role": "user", "content": "Say many words."}, {"role": "assistant", "content": LONG}],  # cut inside the answer
    [{"role": "user", "content": LONG}, {"role": "assistant", "content": "Too late."}],  # cut before the answer: dropped
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there, friend."}],
]


def write_parquet(path, rows, column="messages"):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"dataset": ["test"] * len(rows), "id": [f"t{i}" for i in range(len(rows))], column: rows}), path)


def prepare(*args):
    """Run data/tulu2/prepare.py in this process (SystemExit propagates)."""
    argv, sys.argv = sys.argv, [PREPARE, *args]
    try:
        runpy.run_path(PREPARE, run_name="__main__")
    finally:
        sys.argv = argv


@pytest.fixture(scope="module")
def tulu(tmp_path_factory):
    """(a tiny random Llama with a Llama 3.2-style tokenizer and chat template, the tulu folder
    prepare.py wrote for it from a parquet file of CONVERSATIONS)."""
    base = tmp_path_factory.mktemp("llama32")
    vocab = make_tokenizer(base, "llama3", chat_template=LLAMA32_CHAT)
    make_llama(vocab_size=vocab, max_position_embeddings=512).save_pretrained(base)
    root = tmp_path_factory.mktemp("tulu")
    write_parquet(root / "train-0.parquet", CONVERSATIONS[:3])
    write_parquet(root / "train-1.parquet", CONVERSATIONS[3:])
    prepare(f"--input={root}/train-*.parquet", f"--tokenizer={base}", f"--max_tokens={MAX_TOKENS}", "--n_val=1",
            f"--source_dir={root}/source",
            f"--out_dir={root}/data")
    return str(base), str(root / "data")


def examples(folder, split):
    meta = json.load(open(os.path.join(folder, "meta.json")))
    tokens = np.fromfile(os.path.join(folder, f"{split}.bin"), dtype=meta["dtype"])
    mask = np.fromfile(os.path.join(folder, f"{split}_mask.bin"), dtype=np.uint8)
    offsets = np.fromfile(os.path.join(folder, f"{split}_offsets.bin"), dtype=np.int64)
    assert offsets[0] == 0 and offsets[-1] == len(tokens) == len(mask)
    return [(tokens[a:b].tolist(), mask[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


def test_prepare_equals_apply_chat_template(tulu):
    """Every kept conversation's tokens are transformers' apply_chat_template tokens (cut to
    max_tokens), its mask covers exactly the assistant turns and their <|eot_id|>; the overlong
    answer is cut at max_tokens and the conversation cut before its answer is dropped."""
    from transformers import PreTrainedTokenizerFast
    base, folder = tulu
    ref = PreTrainedTokenizerFast.from_pretrained(base)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert (meta["read"], meta["truncated"], meta["dropped"]) == (5, 2, 1)
    assert meta["train"]["examples"] == 3 and meta["val"]["examples"] == 1 and meta["dtype"] == "uint16"
    got = examples(folder, "train") + examples(folder, "val")
    assert meta["train"]["tokens"] + meta["val"]["tokens"] == sum(len(t) for t, _ in got)
    rendered = {}
    for i, messages in enumerate(CONVERSATIONS):
        text = ref.apply_chat_template(messages, tokenize=False, date_string="26 Jul 2024")
        rendered[i] = (text, ref.encode(text, add_special_tokens=False))
    found = []
    for tokens, mask in got:
        i = next(i for i, (_, ids) in rendered.items() if ids[:MAX_TOKENS] == tokens)  # each one is a rendered chat
        found.append(i)
        text, ids = rendered[i]
        answers = "".join(m["content"].strip() + "<|eot_id|>" for m in CONVERSATIONS[i] if m["role"] == "assistant")
        counted = ref.decode([t for t, m in zip(tokens, mask) if m])
        if len(ids) <= MAX_TOKENS:
            assert ref.decode(tokens) == text and counted == answers
        else:  # cut inside the answer: it counts up to the cut, with no end token
            assert len(tokens) == MAX_TOKENS and answers.startswith(counted) and "<|eot_id|>" not in counted
            assert counted.startswith("word word") and mask[-1] == 1
    assert sorted(found) == [0, 1, 2, 4]


def test_kept_parquet_files_serve_a_second_tokenizer_offline(tulu, tmp_path, monkeypatch):
    """The parquet files given once with --input are kept in the source folder: preparing the chats
    for a base with another tokenizer reads them, with neither --input nor the hub."""
    from conftest import CHATML
    base, folder = tulu
    root = os.path.dirname(folder)
    assert sorted(os.listdir(os.path.join(root, "source"))) == ["00000-train-0.parquet", "00001-train-1.parquet"]
    other = tmp_path / "chatml"
    make_tokenizer(other, "smollm2", chat_template=CHATML)
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    prepare(f"--tokenizer={other}", f"--max_tokens={MAX_TOKENS}", "--n_val=1", f"--source_dir={root}/source",
            f"--out_dir={tmp_path}/data")
    meta = json.load(open(tmp_path / "data" / "meta.json"))
    assert meta["read"] == len(CONVERSATIONS) and meta["source"] == ["00000-train-0.parquet", "00001-train-1.parquet"]
    assert meta["tokenizer"] != json.load(open(os.path.join(folder, "meta.json")))["tokenizer"]


def test_prepare_errors(tulu, tmp_path, monkeypatch, capsys):
    """One line each: pyarrow missing, a parquet file without messages, a base with no chat format."""
    base, _ = tulu
    write_parquet(tmp_path / "ok.parquet", CONVERSATIONS[:2])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(SystemExit, match=r"^error: reading the parquet files needs pyarrow.*pip install pyarrow$"):
        prepare(f"--input={tmp_path}/ok.parquet", f"--tokenizer={base}", f"--out_dir={tmp_path}/out", f"--source_dir={tmp_path}/source")
    monkeypatch.undo()
    write_parquet(tmp_path / "bad.parquet", [json.dumps(c) for c in CONVERSATIONS[:2]], column="conversation")
    with pytest.raises(SystemExit, match=r"^error: .*bad.parquet has no 'messages' column \(its columns: dataset, id, "
                                         r"conversation\)"):
        prepare(f"--input={tmp_path}/bad.parquet", f"--tokenizer={base}", f"--out_dir={tmp_path}/out", f"--source_dir={tmp_path}/source")
    plain = tmp_path / "plain"
    make_tokenizer(plain, "llama3", chat_template="")
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SystemExit, match=r"^error: the base .*plain has no chat format"):
        prepare(f"--input={tmp_path}/ok.parquet", f"--tokenizer={plain}", f"--out_dir={tmp_path}/out", f"--source_dir={tmp_path}/source")
    with pytest.raises(SystemExit, match=r"^error: --input .*nothing-\*.parquet matches no file$"):
        prepare(f"--input={tmp_path}/nothing-*.parquet", f"--tokenizer={base}", f"--source_dir={tmp_path}/source")
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no --input: the hub, unreachable here
    with pytest.raises(SystemExit, match=r"^error: could not download allenai/tulu-v2-sft-mixture .*pass its parquet "
                                         r"files with --input$"):
        prepare(f"--tokenizer={base}", f"--out_dir={tmp_path}/out", f"--source_dir={tmp_path}/source")
    assert not os.path.exists(tmp_path / "out")


def adapter_formula(c, method, variant="both", r=8, learn_lambda=True, groupnorm=False):
    """The README's trainable-parameter formula: C = n_embd, K = n_kv_head * head_dim (keys' and
    values' width), I = the MLP's inner width, per layer:
      DiffLoRA, both terms:  r (6C + 2K)  (Q1, Q2: r (C + C); K1, K2: r (C + K))
      DiffLoRA, negative:    r (3C + K)   (Q2 and K2 only)
      + 4 head_dim for a learned lambda, + head_dim for GroupNorm's gain
      LoRA on all 7 maps:    r (9C + 2K + 3I)."""
    C, K, I = c.n_embd, c.n_kv_head * c.head_dim, c.n_inner
    if method == "lora":
        return c.n_layer * r * (9 * C + 2 * K + 3 * I)
    per = r * (6 * C + 2 * K if variant == "both" else 3 * C + K) + 4 * c.head_dim * learn_lambda + c.head_dim * groupnorm
    return c.n_layer * per


VARIANTS = {  # config file -> its adapter, and its trainable parameters on Llama-3.2-1B (the README's table)
    "difflora32.py": (dict(method="difflora", r=32), 6_819_840),
    "difflora64_negative.py": (dict(method="difflora", variant="negative", r=64), 6_819_840),
    "difflora64_lambda01.py": (dict(method="difflora", variant="negative", r=64, learn_lambda=False), 6_815_744),
    "difflora32_groupnorm.py": (dict(method="difflora", r=32, groupnorm=True), 6_820_864),
    "lora8.py": (dict(method="lora", r=8), 5_636_096),
}


def test_formula_on_llama_3_2_1b_shapes():
    """The README's table: the formula on Llama-3.2-1B's shape (C 2,048, 8 kv heads of 64, MLP
    8,192, 16 layers) equals what difflora.py builds, counted on the meta device."""
    from difflora import DiffLoRAConfig, LoRAConfig, apply_difflora, apply_lora
    for name, (kw, want) in VARIANTS.items():
        config = GPTConfig(**{**LLAMA, "n_layer": 16, "n_head": 32, "n_kv_head": 8, "n_embd": 2048, "n_inner": 8192,
                              "vocab_size": 128256, "block_size": 64})
        with torch.device("meta"):
            model = GPT(config)
            if kw["method"] == "lora":
                apply_lora(model, LoRAConfig(r=8, alpha=16, targets=["all"]))
            else:
                apply_difflora(model, DiffLoRAConfig(r=kw["r"], alpha=2 * kw["r"], variant=kw.get("variant", "both"),
                                                     learn_lambda=kw.get("learn_lambda", True), lambda_init=None if
                                                     kw.get("learn_lambda", True) else 0.1, groupnorm=kw.get("groupnorm", False)))
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert n == want == adapter_formula(config, **kw), name


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.slow
def test_paper_config_runs(name, tulu, tmp_path):
    """train.py with each config/paper file runs 2 steps on the tiny Llama and the prepared chats
    (padded micro-batches), training the formula's number of parameters."""
    base, data = tulu
    g = train(os.path.join(PAPER, name), f"--init_from={base}", f"--dataset={data}", f"--out_dir={tmp_path}",
              "--block_size=256", "--max_iters=2", "--gradient_accumulation_steps=2", "--warmup_iters=1",
              "--eval_interval=2", "--eval_iters=1", "--log_interval=1", "--dtype=float32", "--device=cpu")
    model = g["raw_model"]
    assert model.gradient_checkpointing and model.loss_chunk == 1024 and g["lr_schedule"] == "linear" and g["batch_size"] == 2
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == adapter_formula(model.config, **VARIANTS[name][0])
    assert [r["iter"] for r in g["metrics"]["eval"]] == [0, 2] and all(np.isfinite(r["val"]) for r in g["metrics"]["eval"])
    assert os.path.exists(tmp_path / "adapter.safetensors")


@pytest.mark.slow
def test_padded_batches_equal_examples_alone(tulu, tmp_path):
    """A micro-batch of variable-length examples padded on the right gives, example by example,
    the logits and loss that each example gives alone (no attention mask needed under the causal
    one); iterations read the file's examples in order, each once per epoch; the linear schedule
    warms up, then falls to min_lr at max_iters."""
    base, data = tulu
    g = train(f"--init_from={base}", f"--dataset={data}", f"--out_dir={tmp_path}", "--method=difflora", "--init=preserve",
              "--block_size=256", "--batch_size=3", "--gradient_accumulation_steps=2", "--max_iters=0", "--lr_decay_iters=10",
              "--lr_schedule=linear", "--warmup_iters=2",
              "--learning_rate=1.0", "--min_lr=0.0", "--lora_dropout=0.0")
    model, get_batch = g["raw_model"].eval(), g["data"].get
    x, y = get_batch("train", [0, 1, 2])
    lengths = (np.diff(g["data"].offsets["train"]) - 1).tolist()
    assert x.shape == (3, max(lengths)) and len(set(lengths)) > 1
    with torch.no_grad():
        logits, loss = model(x, y)
        rows = [model(x[i:i + 1, :n], y[i:i + 1, :n]) for i, n in enumerate(lengths)]
    torch.testing.assert_close(logits, torch.cat([r[0] for r in rows]), atol=1e-5, rtol=0)
    counts = [(y[i] != -1).sum().item() for i in range(3)]
    torch.testing.assert_close(loss, sum(c * r[1] for c, r in zip(counts, rows)) / sum(counts), atol=1e-6, rtol=0)
    for i, n in enumerate(lengths):
        assert (y[i, n:] == -1).all() and (y[i, :n] != -1).any()
    seen = np.concatenate([g["train_examples"](it, m) for it in range(2) for m in range(2)])  # 12 draws of 3 examples
    assert sorted(seen.tolist()) == sorted(list(range(3)) * 4)
    assert [g["get_lr"](it) for it in (0, 1, 2, 6, 10)] == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5, 0.0], abs=1e-12)


FAMILIES = {"llama": {**LLAMA, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64, "n_inner": 96, "vocab_size": 101,
                      "block_size": 32},
            "gpt2": {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 101, "block_size": 32}}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradient_checkpointing_same_gradients(family):
    """Checkpointed blocks give the same loss and gradients as stored activations, dropout included
    (the recomputation replays the same masks)."""
    from difflora import DiffLoRAConfig, apply_difflora
    torch.manual_seed(0)
    model = GPT(GPTConfig(**FAMILIES[family]))
    apply_difflora(model, DiffLoRAConfig(r=4, alpha=8, dropout=0.1))
    x = torch.randint(0, 101, (2, 32))
    calls = []
    model.transformer.h[0].register_forward_pre_hook(lambda *_: calls.append(1))
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(1)
        loss = model(x, x)[1]
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        calls.append(0)
    assert calls == [1, 0, 1, 1, 0]  # checkpointed, the block ran again in the backward pass
    assert grads[0][0] == grads[1][0]
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_merged_lora_loads_in_transformers(tmp_path):
    """The paper's LoRA baseline (r=8, every linear map) merged with merged_model and written by
    save_pretrained is a plain Llama checkpoint: transformers' logits equal the adapted model's.
    DiffLoRA refuses, in one sentence."""
    from transformers import LlamaForCausalLM
    from difflora import DiffLoRAConfig, LoRAConfig, apply_difflora, apply_lora, merged_model
    base = tmp_path / "base"
    make_llama(vocab_size=101).save_pretrained(base)
    model = apply_lora(GPT.from_pretrained(str(base)), LoRAConfig(r=8, alpha=16, dropout=0.0, targets=["all"])).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)  # B is zero at init: give every adapter a delta
    x = torch.randint(0, 101, (2, 24))
    with torch.no_grad():
        want = model(x)[0]
        merged_model(model).save_pretrained(tmp_path / "merged")
    assert model.adapter is None and "lora" not in " ".join(n for n, _ in model.named_parameters())
    got = LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()(x).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="only a LoRA model merges into a plain checkpoint"):
        merged_model(apply_difflora(GPT.from_pretrained(str(base)), DiffLoRAConfig(r=4, alpha=8)))


@pytest.mark.slow
def test_memory_estimate(capsys):
    """bench/memory.py's tensor accounting counts what is alive (a freed tensor leaves the count), its
    extrapolation from 2 and 3 blocks matches a direct measurement with 4, and checkpointing lowers
    every run's estimate."""
    argv, sys.argv = sys.argv, ["bench/memory.py", "--n_layer=4", "--n_head=4", "--n_kv_head=2", "--n_embd=64", "--n_inner=96",
                                "--vocab_size=300", "--block_size=1024"]
    try:
        g = runpy.run_path(os.path.join(ROOT, "bench/memory.py"), run_name="__main__")
    finally:
        sys.argv = argv
    with g["LiveTensors"]() as live:
        x = torch.ones(1024)  # 4 KiB
        y = x * 2  # 8 KiB alive
        del x
        z = y + 1  # x is freed: still 8 KiB
        del z
    assert live.peak == 8192
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("config/paper/")]
    assert [r[0] for r in rows[::2]] == [f"config/paper/{n}" for n in ("difflora32.py", "difflora64_negative.py",
                                                                        "difflora64_lambda01.py", "difflora32_groupnorm.py", "lora8.py")]
    for on, off in zip(rows[::2], rows[1::2]):
        assert on[2] == "on" and off[2] == "off" and float(on[6]) < float(off[6])
    run = g["read_run"](os.path.join(PAPER, "difflora32.py"))
    assert run["loss_chunk"] == 1024 and (run["batch_size"], run["block_size"]) == (2, 4096)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16)
    for checkpointing in (True, False):
        peaks = []
        for layers in (2, 3, 4):
            model = g["build"](run, layers)
            model.gradient_checkpointing = checkpointing
            peaks.append(g["step_peak"](model, 2, 256, ctx))
        assert abs(peaks[0] + 2 * (peaks[1] - peaks[0]) - peaks[2]) < 0.005 * peaks[2]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chunked_loss_same_loss_and_gradients(family):
    """loss_chunk: the training loss over chunks of the targets (each chunk's logits recomputed in
    the backward pass) equals the loss over all of them, and so do the gradients; outside training
    the logits come back as before."""
    from difflora import DiffLoRAConfig, apply_difflora
    torch.manual_seed(0)
    model = GPT(GPTConfig(**FAMILIES[family]))
    apply_difflora(model, DiffLoRAConfig(r=4, alpha=8, dropout=0.0))
    x = torch.randint(0, 101, (2, 32))
    y = x.masked_fill(torch.rand(2, 32) < 0.3, -1)  # 45 counted targets: chunks of 7, the last one short
    results = []
    for chunk in (0, 7):
        model.loss_chunk = chunk
        model.zero_grad()
        logits, loss = model(x, y)
        loss.backward()
        assert (logits is None) == (chunk > 0)
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert model(x, y)[0].shape == ((y != -1).sum().item(), 101)
