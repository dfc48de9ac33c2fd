"""Issue 5's tools: the needle generator and its data, attention maps and their regions,
analysis/draw_attention.py, analysis/eval_needle.py and bench/speed.py on tiny models."""

import json
import os
import sys

import numpy as np
import pytest
import tiktoken
import torch

from conftest import ROOT, run, train
from analysis.attention_maps import attention_maps, attention_regions, region_mass
from difflora import DiffLoRAConfig, apply_difflora, apply_lora, LoRAConfig
from model import GPT

sys.path.insert(0, os.path.join(ROOT, "data", "needle"))
from needle import make_example  # noqa: E402

enc = tiktoken.get_encoding("gpt2")


# ----------------------------------------------------------------------------- the needle generator

def test_needle_examples_are_deterministic_and_exact():
    a, b = make_example(enc, 7, 200, 3, 0.4), make_example(enc, 7, 200, 3, 0.4)
    assert a == b and make_example(enc, 8, 200, 3, 0.4) != a
    for n_tokens in (64, 200, 513):
        ex = make_example(enc, 1, n_tokens, 2, 0.5)
        assert len(ex["tokens"]) == n_tokens
        assert enc.decode(ex["tokens"][ex["answer_start"]:]) == f" {ex['value']}"
        s, e = ex["needle"]
        assert enc.decode(ex["tokens"][s:e]) == f" The secret code of {ex['key']} is {ex['value']}."
        q0, q1 = ex["question"]
        assert q1 == ex["answer_start"] and enc.decode(ex["tokens"][q0:q1]).startswith(f"\nQuestion: what is the secret code of {ex['key']}?")
    text = enc.decode(make_example(enc, 3, 300, 4, 0.5)["tokens"])
    assert text.count("The secret code of") == 4 + 1  # four needles and the answer's prefix
    with pytest.raises(ValueError, match="cannot hold"):
        make_example(enc, 0, 20, 3, 0.5)


def test_multikey_and_multivalue_examples():
    ex = make_example(enc, 4, 300, 5, 0.5, kind="multikey")
    text = enc.decode(ex["tokens"])
    adjective, noun = ex["key"].split(" ")
    assert text.count(f" {noun} is ") == 5 + 1  # five confusable needles and the answer's prefix
    assert text.endswith(f"what is the secret code of {ex['key']}?\nAnswer: The secret code of {ex['key']} is {ex['value']}")
    s, e = ex["needle"]
    assert enc.decode(ex["tokens"][s:e]) == f" The secret code of {ex['key']} is {ex['value']}."
    assert len(ex["wrong"]) == 4 and all(enc.decode(w)[1:] != ex["value"] for w in ex["wrong"])
    ex = make_example(enc, 4, 300, 5, 0.5, kind="multivalue", values=3)
    codes = ex["value"].split(", ")
    assert len(codes) == 3 and len(ex["spans"]) == 3 and ex["needle"] in ex["spans"]
    # the answer lists the asked key's codes in the order the needles appear
    assert [enc.decode(ex["tokens"][s:e]) for s, e in ex["spans"]] == [f" The secret code of {ex['key']} is {c}." for c in codes]
    assert enc.decode(ex["tokens"]).endswith(f"codes of {ex['key']}?\nAnswer: The secret codes of {ex['key']} are {ex['value']}")
    assert len(ex["tokens"]) == 300 and enc.decode(ex["tokens"][ex["answer_start"]:]) == " " + ex["value"]
    wrong = [enc.decode(w)[1:].split(", ") for w in ex["wrong"]]
    assert len(wrong) == 3 * 2 and all(sum(a != b for a, b in zip(w, codes)) == 1 for w in wrong)  # one code swapped
    with pytest.raises(ValueError, match="n_needles must be in 3..30 for multivalue"):
        make_example(enc, 0, 300, 2, 0.5, kind="multivalue")
    with pytest.raises(ValueError, match="kind must be one of"):
        make_example(enc, 0, 300, 2, 0.5, kind="multi")


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_goes_where_asked(depth):
    for seed in range(5):
        ex = make_example(enc, seed, 400, 3, depth)
        context = ex["question"][0] - sum(len(enc.encode_ordinary(f" The secret code of x is 1234.")) for _ in range(3))
        # the asked needle starts at depth * filler, give or take a filler sentence (<= 12 tokens) and the other needles
        assert abs(ex["needle"][0] - depth * context) <= 12 + 2 * 12, (seed, ex["needle"], context)
    assert make_example(enc, 0, 400, 1, 0.0)["needle"][0] == 0
    ex = make_example(enc, 0, 400, 1, 1.0)
    assert ex["needle"][1] == ex["question"][0]  # right before the question


@pytest.mark.slow
def test_needle_data_counts_only_answer_tokens(tmp_path):
    out = run(sys.executable, "data/needle/prepare.py", "--tokens=96", "--needles=2", "--n_train=12", "--n_val=4",
              f"--out_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    meta = json.load(open(tmp_path / "meta.json"))
    assert meta["example_tokens"] == 96
    tokens = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    mask = np.fromfile(tmp_path / "train_mask.bin", dtype=np.uint8)
    assert len(tokens) == len(mask) == 12 * 96
    for i in range(12):
        ex_tokens, ex_mask = tokens[i * 96:(i + 1) * 96], mask[i * 96:(i + 1) * 96]
        answer = enc.decode(ex_tokens[ex_mask == 1].tolist())
        assert answer.strip().isdigit() and ex_mask[-1] == 1 and ex_mask[0] == 0
        assert f"is{answer}" in enc.decode(ex_tokens[:96 - int(ex_mask.sum())].tolist())  # the needle holds it
    # train.py's loader: windows at example boundaries, every target but the answer is -1
    base = tmp_path / "base"
    from conftest import make_hf_model
    make_hf_model(vocab_size=50257, n_positions=128).save_pretrained(base)
    g = train(f"--init_from={base}", f"--dataset={tmp_path}", f"--out_dir={tmp_path / 'out'}", "--block_size=95",
              "--max_iters=0")
    torch.manual_seed(0)
    x, y = g["data"].get("train")
    for row in range(x.size(0)):
        kept = y[row][y[row] != -1]
        assert 1 <= len(kept) <= 3 and enc.decode(kept.tolist()).strip().isdigit()
        assert torch.all(y[row][:-len(kept)] == -1)  # only the last targets, the answer, count
    assert all(int(i) % 96 == 0 for i in g["eval_ix"]["val"].flatten())
    with pytest.raises(SystemExit, match="examples of 96 tokens; set --block_size=95"):
        train(f"--init_from={base}", f"--dataset={tmp_path}", f"--out_dir={tmp_path / 'out2'}", "--block_size=64")


# ----------------------------------------------------------------------------- maps and regions

def test_plain_maps_equal_transformers_attentions(hf_tiny):
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(hf_tiny[0], attn_implementation="eager").eval()
    idx = torch.randint(0, 101, (2, 20))
    ref = hf(idx, output_attentions=True).attentions
    for base in (GPT.from_pretrained(hf_tiny[0]), apply_lora(GPT.from_pretrained(hf_tiny[0]), LoRAConfig())):
        maps = attention_maps(base.eval(), idx)  # LoRA starts with B = 0: the same maps
        assert len(maps) == len(ref)
        for (a, neg, lam), r in zip(maps, ref):
            assert neg is None and lam == 0.0
            torch.testing.assert_close(a, r, atol=1e-5, rtol=0)


def test_region_masses_sum_to_one_and_one_minus_lambda(hf_tiny):
    torch.manual_seed(0)
    m = apply_difflora(GPT.from_pretrained(hf_tiny[0]), DiffLoRAConfig(r=4, alpha=8, dropout=0.0)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    T = 16
    regions = attention_regions(T, needle=(5, 9), query=(12, 16))
    assert sum(r.long() for r in regions.values()).eq(1).all()  # disjoint and covering
    assert regions["needle"].nonzero().flatten().tolist() == [5, 6, 7, 8] and regions["first"][0]
    for a1, neg, lam in attention_maps(m, torch.randint(0, 101, (1, T))):
        a2 = neg / lam
        for a, total in ((a1, 1.0), (a2, 1.0), (a1 - neg, 1.0 - lam)):
            masses = region_mass(a, regions)  # (1, H, T) per region
            torch.testing.assert_close(sum(masses.values()), torch.full((1, 2, T), total), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the scripts

@pytest.mark.slow
def test_attention_script_writes_png(trained_50k, tmp_path):
    png = tmp_path / "maps.png"
    out = run(sys.executable, "analysis/draw_attention.py", f"--out_dir={trained_50k[1]}", f"--out={png}", "--layers=0,1", "--head=1",
              "--start=Some text. The code is 42. More text.\nQuestion: the code?", "--needle=The code is 42.")
    assert out.returncode == 0, out.stderr
    assert png.exists() and png.stat().st_size > 10_000
    assert "A1-lambda*A2" in out.stdout and "base" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.split() and line.split()[0] in ("0", "1")]
    assert len(rows) == 2 and len(rows[0]) == 2 + 4 * 4  # layer, lambda, 4 maps x 4 regions
    for row in rows:
        base = [float(v) for v in row[2:6]]
        assert abs(sum(base) - 1.0) < 0.02  # the base map's regions share all of the mass
    out = run(sys.executable, "analysis/draw_attention.py", f"--out_dir={trained_50k[1]}", "--needle=not in the prompt")
    assert out.returncode != 0 and "does not occur in the prompt" in out.stderr


@pytest.mark.slow
def test_eval_needle_runs_and_reports(trained_50k, tmp_path):
    png = tmp_path / "needle.png"
    out = run(sys.executable, "analysis/eval_needle.py", f"--models={trained_50k[0]},{trained_50k[1]}", "--lengths=48,64",
              "--depths=0,1", "--examples=2", "--needles=2", f"--out={png}")
    assert out.returncode == 0, out.stderr
    assert png.exists()
    assert out.stdout.count("exact match by row and needle depth") == 2
    masses = [line for line in out.stdout.splitlines() if line.startswith("attention mass")]
    assert len(masses) == 2
    values = [float(v.split()[-1]) for v in masses[0].split(": ")[1].split(", ")]
    assert abs(sum(values) - 1.0) < 0.01  # the base model's regions cover the whole context
    out = run(sys.executable, "analysis/eval_needle.py", f"--models={trained_50k[0]}", "--lengths=128")
    assert out.returncode != 0 and "longer than" in out.stderr


@pytest.mark.slow
def test_eval_needle_joins_runs_into_mean_and_spread(trained_50k, tmp_path):
    base, adapter = trained_50k
    out = run(sys.executable, "analysis/eval_needle.py", f"--models={base},{adapter},{base}+{adapter}", "--lengths=48,64",
              "--depths=0,1", "--examples=2", "--needles=2", f"--out={tmp_path / 'n.png'}")
    assert out.returncode == 0, out.stderr
    table = open(tmp_path / "n.txt").read()
    assert table.startswith("# python analysis/eval_needle.py --models=") and "(1/2 = 0.50 at 2 needles)" in table
    rows = [line.split() for line in table.splitlines() if line.startswith("single ")]
    single_a, single_b, joined = rows[0:2], rows[2:4], rows[4:6]
    assert "mean of 2 runs" in table and len(joined[0]) == 11  # kind needles length 2 depths exact runs loss runs margin runs
    for a, b, j in zip(single_a, single_b, joined):
        for col_a, col_j in ((3, 3), (4, 4), (5, 5), (6, 7), (7, 9)):  # the depths, exact, loss, margin
            assert float(j[col_j]) == pytest.approx((float(a[col_a]) + float(b[col_a])) / 2, abs=0.006)
        assert j[6] == f"{min(float(a[5]), float(b[5])):.2f}..{max(float(a[5]), float(b[5])):.2f}"
        assert j[8] == f"{min(float(a[6]), float(b[6])):.3f}..{max(float(a[6]), float(b[6])):.3f}"


@pytest.mark.slow
def test_bench_prints_every_column():
    out = run(sys.executable, "bench/speed.py", "--n_layer=2", "--n_head=2", "--n_embd=32", "--vocab_size=100",
              "--seq_lens=16", "--methods=lora,difflora", "--steps=1", "--gen_tokens=4", "--gen_methods=difflora",
              "--ratio_shapes=1x16,2x8", "--pairs=3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = "method T step ms tok/s MFU peak MB step MB".split()
    assert [line.split() for line in lines if line.startswith("method ")][0] == header
    for method in ("lora", "difflora", "difflora-explicit"):
        row = next(line.split() for line in lines if line.split()[:2] == [method, "16"])
        assert len(row) == 7 and float(row[2]) > 0
    assert "explicit / fused step memory" in out.stdout
    for shape in ("B=1 T=16", "B=2 T=8"):  # median (low-high over 3 pairs), and the FLOP ratio
        line = next(line for line in lines if line.startswith("DiffLoRA / LoRA step, " + shape))
        median, spread, floor = float(line.split()[-8]), line.split()[-7], float(line.split()[-1])
        low, high = (float(v) for v in spread.strip("(").split("-"))
        assert low <= median <= high and "over 3 pairs" in line and floor > 1
    gen = next(line for line in lines if line.startswith("our cached generation"))  # transformers is installed here
    assert "over 3 pairs" in gen and "same tokens as transformers: True" in out.stdout
    assert any(line.split()[:1] == ["difflora"] and line.endswith("x") for line in lines)  # cached vs uncached


@pytest.mark.slow
def test_report_tabulates_curves_lambda_and_general_loss(trained_50k, tmp_path):
    base, adapter = trained_50k
    text = tmp_path / "text"
    text.mkdir()
    np.random.default_rng(3).integers(0, 50257, 3000).astype(np.uint16).tofile(text / "val.bin")
    out = run(sys.executable, "analysis/report.py", f"--runs={adapter}+{adapter}", "--steps=0,3", f"--text={text}",
              "--text_windows=3", "--text_tokens=32", f"--out={tmp_path / 'r'}", "--device=cpu")
    assert out.returncode == 0, out.stderr
    metrics = json.load(open(os.path.join(adapter, "metrics.json")))["eval"]
    curves = open(tmp_path / "r" / "curves.txt").read()
    assert curves.startswith("# python analysis/report.py --runs=")
    settings = json.load(open(tmp_path / "r" / "report.json"))["settings"]  # as run, not the defaults
    assert settings["steps"] == "0,3" and settings["text_windows"] == 3 and settings["runs"] == f"{adapter}+{adapter}"
    rows = [line.split() for line in curves.splitlines() if line.split()[:1] in (["0"], ["3"])]
    assert [float(r[1]) for r in rows] == pytest.approx([metrics[0]["val"], metrics[-1]["val"]], abs=1e-4)
    assert all(r[2] == f"({r[1]}..{r[1]})" for r in rows)  # the same run twice: no spread
    lam = [line.split() for line in open(tmp_path / "r" / "lambda.txt") if line.split()[:1] in (["0"], ["1"])]
    assert [float(r[1]) for r in lam] == pytest.approx(metrics[-1]["lambda"], abs=1e-3)
    # the general-text loss, recomputed: mean over 3 evenly spread windows of 32 tokens
    from runs import load_trained
    tokens = np.fromfile(text / "val.bin", dtype=np.uint16).astype(np.int64)
    expected = {}
    for name in (base, adapter):
        model = load_trained(name).eval()
        losses = []
        for s in np.linspace(0, len(tokens) - 33, 3).astype(np.int64):
            with torch.no_grad():
                losses.append(model(torch.from_numpy(tokens[s:s + 32])[None], torch.from_numpy(tokens[s + 1:s + 33])[None])[1].item())
        expected[name] = sum(losses) / 3
    general = open(tmp_path / "r" / "general.txt").read().splitlines()
    assert float(next(line for line in general if line.startswith(base)).split()[1]) == pytest.approx(expected[base], abs=1e-4)
    after = next(line for line in general if line.startswith(adapter)).split()
    assert float(after[3]) == pytest.approx(expected[adapter], abs=1e-4)  # path (+1 runs) loss (low..high) change ...
    assert float(after[5]) == pytest.approx(expected[adapter] - expected[base], abs=2e-4)
    assert (tmp_path / "r" / "curves.png").exists() and (tmp_path / "r" / "report.json").exists()
    out = run(sys.executable, "analysis/report.py", f"--runs={adapter}", "--steps=0,2", "--text=")
    assert out.returncode == 1 and "has no evaluation at iteration 2" in out.stderr


def test_needle_code_spans_hold_the_codes():
    from needle import make_example
    from tokenizer import get_tokenizer
    enc = get_tokenizer("gpt2")
    for kind, n in (("single", 3), ("multikey", 4), ("multivalue", 6)):
        ex = make_example(enc, 11, 256, n, 0.5, kind)
        codes = [enc.decode(ex["tokens"][a:b]).strip() for a, b in ex["codes"]]
        assert ", ".join(codes) == ex["value"]  # the asked key's codes, in order of appearance
        others = [enc.decode(ex["tokens"][a:b]).strip() for a, b in ex["distractor_codes"]]
        assert len(codes) + len(others) == n and all(c.isdigit() and len(c) == 4 for c in others)


@pytest.mark.slow
def test_negative_map_measures_a2_where_the_codes_are(trained_50k, tmp_path):
    """analysis/negative_map.py: lambda's path is the run's metrics.json, and each concentration is
    the mass per token of the last prompt token's map on a region over 1/T, computed here again
    from attention_maps for the one example."""
    from needle import eval_seed, make_example
    from runs import load_trained
    from tokenizer import get_tokenizer
    adapter = trained_50k[1]
    out = run(sys.executable, "analysis/negative_map.py", f"--runs={adapter}+{adapter}", "--kinds=multikey",
              "--needles=2", "--lengths=64", "--depths=0.5", "--examples=1", "--steps=0,3", f"--out={tmp_path / 'neg.txt'}")
    assert out.returncode == 0, out.stderr
    data = json.load(open(tmp_path / "neg.json"))["entries"][f"{adapter}+{adapter}"]
    metrics = {r["iter"]: r["lambda"] for r in json.load(open(os.path.join(adapter, "metrics.json")))["eval"]}
    assert [p[1] for p in data["lambda_path"]] == pytest.approx(metrics[3], abs=1e-9)
    model = load_trained(adapter).eval()
    ex = make_example(get_tokenizer("gpt2"), eval_seed(1, "multikey", 2, 64, 0.5, 0), 64, 2, 0.5, kind="multikey")
    T = ex["answer_start"]
    maps = attention_maps(model, torch.tensor([ex["tokens"][:T]]), rows=slice(-1, None))
    for layer, (a1, neg, lam) in enumerate(maps):
        a2 = neg / lam
        for col, (a, spans) in zip((1, 2, 4, 5), ((a1, ex["codes"]), (a1, ex["distractor_codes"]), (a2, ex["codes"]),
                                                   (a2, ex["distractor_codes"]))):
            cols = [i for s, e in spans for i in range(s, e)]
            want = a[0, :, -1][:, cols].sum(-1).mean().item() / len(cols) * T
            assert data["layers"][layer][col] == pytest.approx(want, rel=1e-5)
        assert data["layers"][layer][0] == pytest.approx(lam)
    assert "A2 puts more per token on the distractors' codes" in open(tmp_path / "neg.txt").read()
    lora = run(sys.executable, "analysis/negative_map.py", f"--runs={tmp_path}")
    assert lora.returncode != 0 and "holds no finished train.py run" in lora.stderr


@pytest.mark.slow
def test_gpu_check_runs_every_check_on_the_cpu(tmp_path):
    """bench/gpu_check.py on tiny shapes (--quick) on the CPU: a row per check, written to its table;
    a check that fails makes the exit code 1 and says so."""
    table = tmp_path / "cpu.txt"
    # one run for both: a tolerance below 0 fails the two eager bf16 rows (compiled: skipped), every other row passes
    out = run(sys.executable, "bench/gpu_check.py", "--device=cpu", "--quick=True", "--compile=False", "--tolerance=-1",
              f"--out={table}")
    rows = [(line[:7].strip(), line[59:67].strip()) for line in open(table) if not line.startswith("#")][1:]  # check, status
    text = open(table).read()
    assert out.returncode == 1 and "2 of " in out.stdout and " checks failed" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert text.startswith("# python bench/gpu_check.py --device=cpu")
    assert {r[0] for r in rows} == {"tests", "bf16", "speed", "paper", "ddp"}
    assert [r[1] for r in rows if r[1] == "FAIL"] == ["FAIL", "FAIL"] and all(r[1] != "FAIL" for r in rows if r[0] != "bf16")
    assert "loss" in text and "vs fp32" in text and "greedy tokens equal transformers'" in text
    assert "skipped: 0 GPUs here, DDP needs 2" in text
