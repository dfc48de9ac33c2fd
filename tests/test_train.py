"""train.py, sample.py, data/ and configurator.py, end to end on tiny checkpoints and token files."""

import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST, ROOT, SHARED_DATA, make_hf_model, run, train
from configurator import configure
from model import GPT

SHAKESPEARE = os.path.join(SHARED_DATA, "tinyshakespeare", "input.txt")


def frozen_unchanged(model, base_path):
    """Every frozen tensor of the trained model equals the base checkpoint's, byte for byte."""
    base = GPT.from_pretrained(base_path, block_size=model.config.block_size).state_dict()
    checked = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            key = name.replace(".base.", ".")  # LoRALinear wraps the original nn.Linear as .base
            assert torch.equal(p.detach().cpu(), base[key]), name
            checked += 1
    return checked


# ----------------------------------------------------------------------------- data

@pytest.mark.slow
def test_prepare_shakespeare(tmp_path):
    if not os.path.exists(SHAKESPEARE):
        pytest.skip("../shared/data/tinyshakespeare is not here")
    out = run(sys.executable, "data/shakespeare/prepare.py", "--input", SHAKESPEARE, "--out_dir", str(tmp_path),
              f"--source_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    meta = json.load(open(tmp_path / "meta.json"))
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)
    assert os.path.getsize(tmp_path / "train.bin") == 2 * 301_966
    assert meta["source_sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    import tiktoken
    ids = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)[:3].tolist()
    assert tiktoken.get_encoding("gpt2").decode(ids) == "First Citizen:"


@pytest.mark.slow
def test_prepare_failed_download_says_what_to_do(tmp_path):
    # a proxy nobody listens on stands for a machine without network
    out = run(sys.executable, "data/shakespeare/prepare.py", "--out_dir", str(tmp_path), f"--source_dir={tmp_path}",
              https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    assert out.returncode != 0
    assert "could not download tiny-shakespeare" in out.stderr and "--input PATH" in out.stderr


@pytest.mark.slow
def test_answer_mask_turns_targets_into_minus_one(tiny101, chain, tmp_path):
    data = tmp_path / "masked"
    data.mkdir()
    for split in ("train", "val"):
        tokens = np.fromfile(os.path.join(chain, f"{split}.bin"), dtype=np.uint16)
        tokens.tofile(data / f"{split}.bin")
        (np.arange(len(tokens)) % 4 == 0).astype(np.uint8).tofile(data / f"{split}_mask.bin")  # every 4th counts
    g = train(f"--init_from={tiny101}", f"--dataset={data}", f"--out_dir={tmp_path / 'out'}", "--max_iters=0")
    x, y = g["data"].get("train", torch.tensor([0, 5]))
    tokens = torch.from_numpy(np.fromfile(data / "train.bin", dtype=np.uint16).astype(np.int64))
    for row, start in enumerate((0, 5)):
        assert torch.equal(x[row], tokens[start:start + 32])
        for j in range(32):
            target_pos = start + 1 + j
            assert y[row, j].item() == (tokens[target_pos].item() if target_pos % 4 == 0 else -1)


@pytest.mark.slow
def test_val_exact_counts_examples_whose_every_answer_token_is_the_argmax(tiny101, chain, tmp_path):
    """On data of whole examples (meta.json example_tokens) with a mask, train.py's val_exact is
    the fraction of the fixed val examples that greedy decoding answers right: recomputed here
    from full logits, example by example."""
    data = tmp_path / "examples"
    data.mkdir()
    for split in ("train", "val"):
        tokens = np.fromfile(os.path.join(chain, f"{split}.bin"), dtype=np.uint16)[:33 * 100]
        tokens.tofile(data / f"{split}.bin")
        (np.arange(len(tokens)) % 33 >= 29).astype(np.uint8).tofile(data / f"{split}_mask.bin")  # a 4-token "answer"
    json.dump({"example_tokens": 33}, open(data / "meta.json", "w"))
    g = train(f"--init_from={tiny101}", f"--dataset={data}", f"--out_dir={tmp_path / 'out'}", "--max_iters=150",
              "--eval_interval=150", "--method=full", "--batch_size=8", "--log_interval=50")
    ev = g["metrics"]["eval"][-1]
    model = g["raw_model"].eval()
    tokens = torch.from_numpy(np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64))
    hits = []
    for start in g["eval_ix"]["val"].flatten().tolist():
        assert start % 33 == 0  # windows start at example boundaries
        with torch.no_grad():
            logits, _ = model(tokens[start:start + 32][None])  # (1, 32, vocab)
        hits.append(bool((logits[0, 28:].argmax(-1) == tokens[start + 29:start + 33]).all()))
    assert ev["val_exact"] == sum(hits) / len(hits)
    assert 0 < sum(hits) < len(hits)  # neither all nor none: the count means something


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("method", ["difflora", "difflora+v+o", "lora", "full"])
@pytest.mark.slow
def test_training_lowers_loss_and_keeps_base_frozen(tiny101, chain, tmp_path, method):
    extra = ["--lora_v=True", "--lora_o=True"] if method == "difflora+v+o" else []
    g = train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", f"--method={method.split('+')[0]}",
              "--max_iters=50", "--eval_interval=25", "--lora_dropout=0.0", *extra)
    ev = g["metrics"]["eval"]
    assert [r["iter"] for r in ev] == [0, 25, 50]
    assert ev[-1]["train"] < 0.95 * ev[0]["train"] and ev[-1]["val"] < 0.95 * ev[0]["val"]
    if method != "full":
        assert frozen_unchanged(g["raw_model"], tiny101) > 0
    assert os.path.exists(tmp_path / "curves.png") and os.path.exists(tmp_path / "train_config.json")
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["eval"] == ev and len(saved["log"]) == 10
    if method.startswith("difflora"):
        assert len(ev[-1]["lambda"]) == 2 and ev[-1]["lambda"] != ev[0]["lambda"]


@pytest.mark.slow
def test_adapter_checkpoint_holds_only_trained_tensors(tiny101, chain, tmp_path):
    g = train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=5", "--eval_interval=5")
    trained = {n: p for n, p in g["raw_model"].named_parameters() if p.requires_grad}
    nbytes = sum(p.numel() * 4 for p in trained.values())
    adapter = load_file(tmp_path / "adapter.safetensors")
    assert set(adapter) == set(trained)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert set(ckpt["trainable"]) == set(trained)
    assert os.path.getsize(tmp_path / "adapter.safetensors") < nbytes + 16_384
    assert os.path.getsize(tmp_path / "ckpt.pt") < 3 * nbytes + 65_536  # tensors + AdamW's two moments
    base_bytes = os.path.getsize(os.path.join(tiny101, "model.safetensors"))
    assert os.path.getsize(tmp_path / "ckpt.pt") < base_bytes / 2
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.slow
def test_full_finetune_writes_a_hugging_face_checkpoint(tiny101, chain, tmp_path):
    g = train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--method=full",
              "--max_iters=5", "--eval_interval=5")
    from transformers import GPT2LMHeadModel
    idx = torch.randint(0, 101, (2, 16))
    ours = g["raw_model"].eval()(idx)[0]
    torch.testing.assert_close(GPT.from_pretrained(str(tmp_path)).eval()(idx)[0], ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(GPT2LMHeadModel.from_pretrained(tmp_path).eval()(idx).logits, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["difflora-ramp", "lora"])  # DiffLoRA without a ramp: test_llama_difflora.py
@pytest.mark.slow
def test_resume_replays_exactly(tiny101, chain, tmp_path, method):
    common = [f"--init_from={tiny101}", f"--dataset={chain}", f"--method={method.split('-')[0]}", "--lr_decay_iters=20",
              "--eval_interval=5", "--lora_dropout=0.1", "--gradient_accumulation_steps=2"]
    if method == "difflora-ramp":  # stopped and resumed in the middle of the ramp
        common.append("--lambda_ramp=15")
    straight = train(*common, f"--out_dir={tmp_path / 'a'}", "--max_iters=20")
    first = train(*common, f"--out_dir={tmp_path / 'b'}", "--max_iters=10")
    assert first["iter_num"] == 10
    # the model settings come from the checkpoint, whatever the command line says
    resumed = train(*common, f"--out_dir={tmp_path / 'b'}", "--max_iters=20", "--init_from=resume", "--block_size=16")
    assert resumed["iter_num"] == 20 and resumed["start_iter"] == 10
    assert resumed["block_size"] == 32 and resumed["examples_per_iter"] == straight["examples_per_iter"]
    a = dict(straight["raw_model"].named_parameters())
    b = dict(resumed["raw_model"].named_parameters())
    for name, p in a.items():
        if p.requires_grad:
            assert torch.equal(p, b[name]), name
    assert straight["lossf"] == resumed["lossf"]
    assert straight["metrics"]["eval"] == resumed["metrics"]["eval"]
    assert straight["metrics"]["eval"][-1]["val"] == resumed["metrics"]["eval"][-1]["val"]
    if method == "difflora-ramp":
        lams = {r["iter"]: r["lambda"] for r in straight["metrics"]["eval"]}
        assert all(v == 0 for v in lams[0]) and all(v != 0 for v in lams[5])  # step 0: the base; the ramp opens


@pytest.mark.slow
def test_two_process_torchrun(tiny101, chain, tmp_path):
    for attempt in range(2):
        out = run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *FAST,
                  f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path / str(attempt)}", "--max_iters=6",
                  "--eval_interval=3", "--gradient_accumulation_steps=2", "--lora_dropout=0.1")
        # now and then a gloo thread aborts a process in its teardown, after the training (a PyTorch
        # bug seen in CI even with train.py's ordered teardown): that one failure gets one retry
        if not (out.returncode and "terminate called without an active exception" in out.stderr):
            break
    assert out.returncode == 0, out.stderr[-3000:]
    assert "all 2 ranks hold identical trainable tensors: True" in out.stdout
    assert os.path.exists(tmp_path / str(attempt) / "adapter.safetensors")


# ----------------------------------------------------------------------------- sampling

def sample(*args):
    return run(sys.executable, "sample.py", "--max_new_tokens=12", "--num_samples=2", *args)


@pytest.mark.slow
def test_greedy_sampling_is_repeatable(trained_50k):
    first = sample(f"--out_dir={trained_50k[1]}", "--temperature=0", "--start=ROMEO:")
    second = sample(f"--out_dir={trained_50k[1]}", "--temperature=0", "--start=ROMEO:")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout and first.stdout.startswith("ROMEO:")
    texts = first.stdout.split("---------------\n")
    assert texts[0] == texts[1] and len(texts[0]) > len("ROMEO:\n")


@pytest.mark.slow
def test_sampling_with_prompt_file_and_top_p(trained_50k, tmp_path):
    (tmp_path / "prompt.txt").write_text("To be, or not to be")
    out = sample(f"--out_dir={trained_50k[1]}", f"--start=FILE:{tmp_path / 'prompt.txt'}", "--top_p=0.9", "--top_k=50")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("To be, or not to be")


@pytest.mark.slow
def test_sampling_errors(trained_50k, tiny101, tmp_path):
    out = sample(f"--out_dir={tmp_path}")
    assert out.returncode != 0 and "no checkpoint in" in out.stderr and "pass a base model such as gpt2" in out.stderr
    out = sample(f"--out_dir={trained_50k[1]}", f"--base={tiny101}")
    assert out.returncode != 0 and "vocab_size=50257" in out.stderr and "this model has vocab_size=101" in out.stderr
    out = sample(f"--out_dir={trained_50k[1]}", "--start=" + "word " * 100)
    assert out.returncode != 0 and re.search(r"the prompt is 10\d tokens, longer than the model's context of 64", out.stderr)


# ----------------------------------------------------------------------------- settings and errors

def test_configurator_rules(tmp_path):
    settings = dict(max_iters=10, learning_rate=1e-3, compile=False, out_dir="out", lambda_init=None)
    (tmp_path / "cfg.py").write_text("max_iters = 20\nout_dir = 'from-file'\n")
    got = configure(settings, [str(tmp_path / "cfg.py"), "--learning_rate=1", "--out_dir=x-y", "--lambda_init=0.1"])
    assert got == dict(max_iters=20, learning_rate=1.0, compile=False, out_dir="x-y", lambda_init=0.1)
    assert configure(settings, ["--out_dir=123"])["out_dir"] == "123"  # a string setting keeps its text
    assert configure(settings, ["--out_dir=1,2"])["out_dir"] == "1,2"
    assert isinstance(got["learning_rate"], float)
    with pytest.raises(SystemExit, match="unknown setting 'max_iter'.*did you mean max_iters"):
        configure(settings, ["--max_iter=5"])
    with pytest.raises(SystemExit, match="'max_iters'.*must be an int.*got 1.5"):
        configure(settings, ["--max_iters=1.5"])
    with pytest.raises(SystemExit, match="'compile'.*must be a bool"):
        configure(settings, ["--compile=1"])
    (tmp_path / "bad.py").write_text("learning_rat = 3e-4\n")
    with pytest.raises(SystemExit, match="unknown setting 'learning_rat' \\(from .*bad.py\\).*learning_rate"):
        configure(settings, [str(tmp_path / "bad.py")])


@pytest.mark.slow
def test_train_errors(tiny101, chain, tmp_path):
    with pytest.raises(SystemExit, match="unknown setting 'lora_rnak'.*lora_rank"):
        train("--lora_rnak=4")
    with pytest.raises(SystemExit, match="'max_iters'.*must be an int"):
        train("--max_iters=ten")
    with pytest.raises(SystemExit, match="dataset 'no_such_data' not found"):
        train(f"--init_from={tiny101}", "--dataset=no_such_data", f"--out_dir={tmp_path}")
    with pytest.raises(SystemExit, match="setting 'variant' is 'left'; allowed: both | negative | shared"):
        train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--variant=left")
    with pytest.raises(SystemExit, match="no checkpoint at"):
        train(f"--init_from=resume", f"--dataset={chain}", f"--out_dir={tmp_path / 'none'}")


@pytest.mark.slow
def test_corrupt_checkpoint_is_reported(tiny101, chain, tmp_path):
    train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=2", "--eval_interval=2")
    data = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "ckpt.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="could not read checkpoint .*truncated or corrupt"):
        train(f"--init_from=resume", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=4")
