"""What a new user meets first: no run destroys another, --help everywhere, errors that point the
right way (one line, exit code 1, before any heavy work), portable adapters, partial results."""

import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
import torch

from conftest import ROOT, make_hf_model, run, train
from runs import load_trained
from model import GPT

SCRIPTS = ["train.py", "sample.py", "analysis/draw_attention.py", "analysis/eval_needle.py", "bench/speed.py", "analysis/induction.py", "analysis/report.py", "bench/memory.py", "analysis/humaneval.py"]
PREPARE = ["data/shakespeare/prepare.py", "data/needle/prepare.py", "data/shakespeare_copy/prepare.py", "data/tulu2/prepare.py"]


def run_script(script, *args):
    """Run a script in this process; return (stdout, the SystemExit's code or None)."""
    argv, out = sys.argv, io.StringIO()
    sys.argv = [script, *args]
    try:
        with redirect_stdout(out):
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        return out.getvalue(), None
    except SystemExit as e:
        return out.getvalue(), e.code
    finally:
        sys.argv = argv


def snapshot(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


# ----------------------------------------------------------------------------- no run destroys another

@pytest.mark.slow
def test_a_fresh_run_into_a_run_leaves_every_file_as_it_was(tiny101, chain, tmp_path):
    train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=2", "--eval_interval=2")
    before = snapshot(tmp_path)
    assert {"ckpt.pt", "adapter.safetensors", "metrics.json", "train_config.json", "curves.png"} <= set(before)
    with pytest.raises(SystemExit, match=r"already holds a run .* --init_from=resume, .* --out_dir=NEW_FOLDER, .* --overwrite=True"):
        train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--method=full")
    assert snapshot(tmp_path) == before
    # asked for explicitly, the new run replaces the old one and leaves nothing of it behind
    train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--method=full", "--max_iters=2",
          "--eval_interval=2", "--overwrite=True")
    assert not os.path.exists(tmp_path / "adapter.safetensors") and os.path.exists(tmp_path / "model.safetensors")


@pytest.mark.slow
def test_a_cpu_run_says_so_and_prints_its_eta(tiny101, chain, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the note is for machines without a GPU")
    train(f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}", "--max_iters=10", "--device=auto")
    out = capsys.readouterr().out
    assert "no GPU found" in out and "config/train_tiny_cpu.py" in out
    assert re.search(r"iter 5: .* eta \d+\.\d min", out) and re.search(r"estimated total time of this run: \d+\.\d min", out)


@pytest.mark.slow
def test_missing_tokenizer_files_say_how_to_supply_them(tmp_path):
    # an empty tiktoken cache and a proxy nobody listens on stand for a machine with no network
    out = run(sys.executable, "data/needle/prepare.py", f"--out_dir={tmp_path}", TIKTOKEN_CACHE_DIR=str(tmp_path),
              https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "could not load the GPT-2 tokenizer" in out.stderr and "TIKTOKEN_CACHE_DIR" in out.stderr
    assert "vocab.bpe" in out.stderr and "encoder.json" in out.stderr and "install-tiktoken-cache.sh" in out.stderr


# ----------------------------------------------------------------------------- --help

@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_every_setting_with_default_and_comment(script):
    out, code = run_script(script, "--help")
    assert code == 0
    source = open(os.path.join(ROOT, script)).read()
    block = re.split(r"# -{20,}", source)[1]  # the settings between the two rulers
    settings = re.findall(r"^\s*(\w+) = (.+?)(?:  # (.*))?$", block, flags=re.M)
    assert len(settings) >= 5
    for key, default, comment in settings:
        line = next((l for l in out.splitlines() if l.strip().startswith(f"--{key}=")), None)
        assert line is not None, key
        if comment:
            assert comment in line, key


@pytest.mark.parametrize("script", PREPARE)
@pytest.mark.slow
def test_prepare_scripts_answer_help(script):
    out = run(sys.executable, script, "--help")
    assert out.returncode == 0 and "--out_dir" in out.stdout


# ----------------------------------------------------------------------------- errors that point the right way

BAD = [  # (script, arguments, what the one line must say)
    ("train.py", ["--method=dif"], "setting 'method' is 'dif'; allowed: difflora | lora | full"),
    ("train.py", ["--batch_size=0"], "setting 'batch_size' is 0; allowed: an integer >= 1"),
    ("train.py", ["--dropout=1.5"], "setting 'dropout' is 1.5; allowed: a number in [0, 1)"),
    ("train.py", ["--device=tpu"], "setting 'device' is 'tpu'"),
    ("train.py", ["--lora_targets=q,z"], "setting 'lora_targets' is 'q,z'"),
    ("train.py", ["--lr_schedule=step"], "setting 'lr_schedule' is 'step'; allowed: cosine | linear"),
    ("train.py", ["--learning_rate=-1"], "setting 'learning_rate' is -1.0"),
    ("train.py", ["--max_iters=ten"], "'max_iters'"),
    ("train.py", ["--no_such=1"], "unknown setting 'no_such'"),
    ("sample.py", ["--temperature=-1"], "setting 'temperature' is -1.0"),
    ("sample.py", ["--top_p=0"], "setting 'top_p' is 0.0"),
    ("sample.py", ["--num_samples=0"], "setting 'num_samples' is 0"),
    ("sample.py", ["--dtype=int8"], "setting 'dtype' is 'int8'"),
    ("sample.py", ["--init_from=gpt2", "--start=FILE:no_such_prompt.txt"], "there is no file 'no_such_prompt.txt'"),
    ("analysis/draw_attention.py", ["--layers=a,b"], "setting 'layers' is 'a,b'"),
    ("analysis/draw_attention.py", ["--head=-1"], "setting 'head' is -1"),
    ("analysis/eval_needle.py", ["--lengths=long"], "setting 'lengths' is 'long'"),
    ("analysis/eval_needle.py", ["--depths=0,2"], "setting 'depths' is '0,2'"),
    ("analysis/eval_needle.py", ["--needles=0"], "setting 'needles' is '0'"),
    ("analysis/eval_needle.py", ["--kinds=multi"], "setting 'kinds' is 'multi'; allowed: single, multikey, multivalue"),
    ("analysis/eval_needle.py", ["--kinds=multivalue", "--needles=2"], "at least values=3 with multivalue"),
    ("analysis/eval_needle.py", ["--attn_examples=-1"], "setting 'attn_examples' is -1"),
    ("analysis/report.py", ["--runs="], "setting 'runs' is ''"),
    ("analysis/report.py", ["--runs=out-x", "--steps=ten"], "setting 'steps' is 'ten'"),
    ("analysis/report.py", ["--runs=./no/such/run"], "'./no/such/run' holds no finished train.py adapter run"),
    ("analysis/eval_needle.py", ["--models=./no/such/run"], "no folder './no/such/run'"),
    ("bench/speed.py", ["--methods=lora,dora"], "setting 'methods' is 'lora,dora'"),
    ("bench/speed.py", ["--seq_lens=0"], "setting 'seq_lens' is '0'"),
    ("bench/speed.py", ["--n_embd=100"], "setting 'n_embd' is 100; allowed: a multiple of n_head=12"),
    ("bench/speed.py", ["--ratio_shapes=4x"], "setting 'ratio_shapes' is '4x'"),
    ("bench/speed.py", ["--dropout=1.0"], "setting 'dropout' is 1.0"),
    ("analysis/induction.py", ["--seq_lens=1"], "setting 'seq_lens' is '1'"),
    ("analysis/induction.py", ["--n_seq=0"], "setting 'n_seq' is 0"),
    ("analysis/humaneval.py", ["--problems=200"], "setting 'problems' is '200'; allowed: all, N (1..164"),
    ("analysis/humaneval.py", ["--problems=5-2"], "setting 'problems' is '5-2'"),
    ("analysis/humaneval.py", ["--measures=acc"], "setting 'measures' is 'acc'"),
    ("analysis/humaneval.py", ["--problem_file=no_such.jsonl"], "there is no problem file 'no_such.jsonl'"),
    ("analysis/humaneval.py", ["--models=./no/such/run"], "no folder './no/such/run'"),
]


@pytest.mark.parametrize("script,args,says", BAD, ids=[f"{s}:{a[-1]}" for s, a, _ in BAD])
@pytest.mark.slow
def test_a_bad_value_gets_one_line(script, args, says, tmp_path):
    out, code = run_script(script, f"--out_dir={tmp_path / 'run'}" if script in ("train.py",) else "--device=cpu", *args)
    assert isinstance(code, str) and code.startswith("error: ") and "\n" not in code, code  # printed to stderr, exit 1
    assert says in code
    assert not os.path.exists(tmp_path / "run")  # nothing written


@pytest.mark.parametrize("script,args,says", [
    ("data/needle/prepare.py", ["--needles=99"], "n_needles must be in 1..30"),
    ("data/needle/prepare.py", ["--tokens=20"], "cannot hold"),
    ("data/needle/prepare.py", ["--needles=6-3"], "the range 6-3 is empty"),
    ("data/needle/prepare.py", ["--kinds=single,multi"], "--kinds must be a comma-separated list of single, multikey"),
    ("data/needle/prepare.py", ["--kinds=multivalue", "--needles=2-5"], "n_needles must be in 3..30 for multivalue"),
    ("data/shakespeare/prepare.py", ["--input=no_such.txt"], "--input no_such.txt does not exist"),
    ("data/shakespeare_copy/prepare.py", ["--copy_fraction=1.5"], "--copy_fraction must be in [0, 1)"),
    ("data/shakespeare_copy/prepare.py", ["--tokens=3"], "unrecognized arguments: --tokens=3"),
    ("data/tulu2/prepare.py", ["--max_tokens=1"], "--max_tokens must be at least 2"),
])
@pytest.mark.slow
def test_prepare_scripts_bad_values(script, args, says, tmp_path):
    out = run(sys.executable, script, f"--out_dir={tmp_path}", *args)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and says in out.stderr


@pytest.mark.slow
def test_a_real_script_exits_1_with_no_traceback(tmp_path):
    out = run(sys.executable, "train.py", "--method=dif", f"--out_dir={tmp_path}")
    assert out.returncode == 1 and out.stderr.strip().startswith("error: setting 'method'") and "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_missing_folder_is_named_and_the_hub_is_not(tmp_path):
    missing = str(tmp_path / "no_run")
    for script in ("sample.py", "analysis/draw_attention.py"):
        out = run(sys.executable, script, f"--out_dir={missing}")
        assert out.returncode == 1 and missing in out.stderr and "hub" not in out.stderr.lower(), out.stderr
    with pytest.raises(OSError, match="no folder") as e:
        GPT.from_pretrained(missing)
    assert "hub" not in str(e.value).lower()
    with pytest.raises(OSError) as e:  # a name that could be a hub id: the message says both
        GPT.from_pretrained("no-such-model-here")
    assert "no folder of that name here" in str(e.value) and "Hugging Face hub" in str(e.value)


# ----------------------------------------------------------------------------- portable adapters

@pytest.mark.slow
def test_an_adapter_made_in_one_folder_samples_from_another(chain, tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    make_hf_model(vocab_size=50257, bos_token_id=50256, eos_token_id=50256).save_pretrained(home / "base")
    common = ["--dataset=" + chain, "--max_iters=2", "--eval_interval=2", "--batch_size=2", "--block_size=16",
              "--eval_iters=1", "--device=cpu"]
    out = run(sys.executable, os.path.join(ROOT, "train.py"), "--init_from=base", "--out_dir=run", *common, cwd=home)
    assert out.returncode == 0, out.stderr
    model = load_trained(str(home / "run"))  # from the tests' own working directory
    assert model.name_or_path == str(home / "base")
    x = torch.randint(0, 101, (1, 8))
    gen = run(sys.executable, os.path.join(ROOT, "sample.py"), "--out_dir=../home/run", "--start=<|endoftext|>",
              "--max_new_tokens=4", "--num_samples=1", "--device=cpu", cwd=elsewhere)
    assert gen.returncode == 0, gen.stderr
    # the recorded base is gone: the error names it and points at --base
    shutil.move(home / "base", home / "moved")
    gen = run(sys.executable, os.path.join(ROOT, "sample.py"), "--out_dir=../home/run", cwd=elsewhere)
    assert gen.returncode == 1 and str(home / "base") in gen.stderr and "--base=" in gen.stderr
    with pytest.warns(UserWarning, match="was trained on .*base, loading it onto .*moved"):
        assert load_trained(str(home / "run"), base=str(home / "moved"))(x)[0].shape == (1, 8, 50257)


# ----------------------------------------------------------------------------- partial results

@pytest.mark.slow
def test_eval_needle_keeps_finished_cells_when_a_later_model_fails(trained_50k, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(trained_50k[0], broken)
    with open(broken / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    out = run(sys.executable, "analysis/eval_needle.py", f"--models={trained_50k[0]},{broken}", "--lengths=48",
              "--depths=0,1", "--examples=1", "--needles=2", f"--out={tmp_path / 'n.png'}")
    assert out.returncode == 1 and "truncated or corrupt" in out.stderr and "finished results are in" in out.stderr
    assert f"evaluating {trained_50k[0]}" in out.stdout and "length 48" in out.stdout  # progress
    table = open(tmp_path / "n.txt").read()
    assert f"{trained_50k[0]}: exact match" in table and re.search(r"^single\s+2\s+48\s+\d", table, flags=re.M)


# ----------------------------------------------------------------------------- settings the machine cannot honour

def one_line(out):
    """The single error line of a script that stopped with exit code 1 and no traceback."""
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    return lines[0]


MACHINE = [  # (script, arguments, what the line says), each producible on this machine
    *[(script, ["--device=cuda"], "setting 'device' is 'cuda', but this machine has ")
      for script in ("train.py", "sample.py", "analysis/draw_attention.py", "analysis/eval_needle.py", "analysis/induction.py", "bench/speed.py")],
    *[(script, args, says) for script in ("train.py", "sample.py") for args, says in (
        (["--device=cuda:1"], "setting 'device' is 'cuda:1', but this machine has "),
        (["--device=mps"], "setting 'device' is 'mps', but this machine has no MPS"),
        (["--device=cpu", "--dtype=float16"], "float16', which is for GPUs; on the CPU use float32"))],
    ("bench/speed.py", ["--device=cpu", "--dtype=float16"], "float16', which is for GPUs; on the CPU use float32"),
]


@pytest.mark.parametrize("script,args,says", MACHINE, ids=[f"{s}:{a[-1]}" for s, a, _ in MACHINE])
@pytest.mark.slow
def test_a_device_or_dtype_the_machine_lacks_gets_one_line(script, args, says, tiny101, tmp_path):
    device = args[0].split("=")[1]
    if device.startswith("cuda") and torch.cuda.device_count() > int(device.partition(":")[2] or 0):
        pytest.skip("this machine has that GPU")
    if "mps" in args[0] and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("a file of the user's")
    model = {"train.py": [f"--init_from={tiny101}", f"--out_dir={out_dir}"], "analysis/induction.py": [f"--model={tiny101}"],
             "analysis/eval_needle.py": [f"--models={tiny101}", "--lengths=32"], "bench/speed.py": []}.get(script, [f"--init_from={tiny101}"])
    line = one_line(run(sys.executable, script, *model, *args))
    assert says in line
    assert "available: cpu" in line or "dtype" in line
    assert sorted(os.listdir(out_dir)) == ["keep.txt"]  # nothing written or changed


@pytest.mark.slow
def test_torchrun_asking_for_cuda_stops_every_rank_the_same_way(tiny101, chain, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: see the test below")
    out = run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
              f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path / 'run'}", "--device=cuda")
    assert out.returncode != 0
    ours = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    # torchrun stops the other rank as soon as one fails, so it may not live to print its line
    assert len(ours) in (1, 2) and len(set(ours)) == 1 and "setting 'device' is 'cuda'" in ours[0], out.stderr[-3000:]
    assert "File \"" + os.path.join(ROOT, "train.py") not in out.stderr  # no traceback from the script
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_cases(tiny101, chain, tmp_path):
    n = torch.cuda.device_count()
    assert f"but this machine has {n} CUDA GPU" in one_line(run(sys.executable, "sample.py", f"--init_from={tiny101}",
                                                                f"--device=cuda:{n}"))
    out = run(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n + 1}", "train.py",
              f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path / 'run'}",
              f"--gradient_accumulation_steps={n + 1}")
    assert out.returncode != 0 and f"use --nproc_per_node={n}" in out.stderr
    if not torch.cuda.is_bf16_supported():
        assert "cannot run" in one_line(run(sys.executable, "sample.py", f"--init_from={tiny101}", "--dtype=bfloat16"))


@pytest.mark.slow
def test_compile_that_cannot_build_is_one_line(tiny101, chain, tmp_path):
    # a C++ compiler that is not there stands for a machine where torch.compile cannot build its kernels
    out = run(sys.executable, "train.py", f"--init_from={tiny101}", f"--dataset={chain}", f"--out_dir={tmp_path}",
              "--compile=True", "--device=cpu", "--max_iters=1", "--eval_iters=1", "--batch_size=2", "--block_size=16",
              CXX="/nonexistent/c++", CC="/nonexistent/cc")
    line = one_line(out) if out.returncode == 1 else pytest.fail(f"exit {out.returncode}: {out.stderr[-2000:]}")
    assert "setting 'compile' is True, but torch.compile failed" in line and "--compile=False" in line


# ----------------------------------------------------------------------------- offline paths

@pytest.mark.slow
def test_a_prepared_dataset_is_not_fetched_again(tmp_path):
    shakespeare = os.path.join(os.path.dirname(ROOT), "shared", "data", "tinyshakespeare", "input.txt")
    if not os.path.exists(shakespeare):
        pytest.skip("../shared/data/tinyshakespeare is not here")
    first = run(sys.executable, "data/shakespeare/prepare.py", "--input", shakespeare, f"--out_dir={tmp_path}",
                f"--source_dir={tmp_path / 'source'}")
    assert first.returncode == 0, first.stderr
    before = {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path)}
    # no --input and no network: the tokens are there, so nothing is fetched or written
    again = run(sys.executable, "data/shakespeare/prepare.py", f"--out_dir={tmp_path}", f"--source_dir={tmp_path / 'source'}",
                https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    assert {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path)} == before


def test_the_type_error_reads_right():
    from configurator import configure
    with pytest.raises(SystemExit, match="'max_iters' .* must be an int like its default 10"):
        configure(dict(max_iters=10), ["--max_iters=1.5"])
    with pytest.raises(SystemExit, match="'rate' .* must be a float like its default 1.0"):
        configure(dict(rate=1.0), ["--rate='x'"])


@pytest.mark.slow
def test_the_students_copy_has_no_answers(tmp_path):
    dest = tmp_path / "course"
    out = run(sys.executable, "exercises/helpers/student_copy.py", str(dest))
    assert out.returncode == 0, out.stderr
    assert not (dest / "exercises" / "solutions").exists() and not (dest / "exercises" / "KEY.md").exists()
    assert (dest / "exercises" / "ex1_attention.py").exists() and (dest / "model.py").exists() and not (dest / ".git").exists()
    # that its graders still grade, every exercise failing only with NotImplementedError, is
    # tests/test_exercises.py's test_untouched_exercises_fail_only_with_not_implemented, run in such a copy
    refused = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "exercises", "--solutions", cwd=dest)
    assert refused.returncode != 0 and "has no exercises/solutions/" in refused.stdout + refused.stderr
    assert one_line(run(sys.executable, "exercises/helpers/student_copy.py", str(dest))).endswith("(nothing was written)")


@pytest.mark.parametrize("args,says", [
    (["--method=lora", "--lora_targets=attn_out"], "LoRA targets ['attn_out'] are not maps of this Llama model"),
    (["--block_size=4096"], "setting 'block_size' is 4096; allowed: at most 256, the context of"),
    (["--variant=shared", "--init=preserve", "--groupnorm=True"], "init='preserve' starts from lambda = 0"),
    (["--lambda_ramp=10", "--groupnorm=True"], "lambda_ramp starts the paper's lambda at 0"),
    (["--lambda_ramp=10", "--init=preserve"], "is not needed with init='preserve'"),
    (["--lambda_ramp=10", "--method=lora"], "setting 'lambda_ramp' is 10; allowed: 0 with method=lora"),
    (["--lambda_ramp=-1"], "lambda_ramp must be an integer >= 0"),
])
def test_a_bad_setting_fails_before_any_data_or_weights(llama_tiny, tmp_path, monkeypatch, args, says):
    """A setting that cannot apply to the base (its family, its context) stops train.py with one
    line before it prepares data or loads a weight: here the dataset is missing and there is no
    network, and neither the preparation nor the loading may even start."""
    import batches
    import model

    def must_not_run(*args, **kwargs):
        raise AssertionError("a bad setting reached the long work")
    monkeypatch.setattr(batches, "prepared_dir", must_not_run)
    monkeypatch.setattr(model.GPT, "from_pretrained", must_not_run)
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    out, code = run_script("train.py", f"--init_from={llama_tiny[0]}", "--dataset=shakespeare", "--device=cpu",
                           f"--out_dir={tmp_path / 'run'}", *args)
    assert isinstance(code, str) and code.startswith("error: ") and "\n" not in code and says in code, code
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_a_second_tokenizer_is_made_from_the_kept_text_offline(llama_tiny, tmp_path):
    """tiny-shakespeare given once with --input (for GPT-2) is kept beside its preparer; train.py on
    a base with another tokenizer then prepares that tokenizer's tokens from the kept text, with no
    network, as a user reaches it. In a copy of the repository, so that this one's data/ stays as it is."""
    shakespeare = os.path.join(os.path.dirname(ROOT), "shared", "data", "tinyshakespeare", "input.txt")
    if not os.path.exists(shakespeare):
        pytest.skip("../shared/data/tinyshakespeare is not here")
    repo = tmp_path / "repo"
    for f in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split():
        if not f.startswith(("results/", "docs/", "exercises/")) and os.path.exists(os.path.join(ROOT, f)):
            os.makedirs(repo / os.path.dirname(f), exist_ok=True)
            shutil.copy(os.path.join(ROOT, f), repo / f)
    first = run(sys.executable, "data/shakespeare/prepare.py", "--input", shakespeare, cwd=repo)
    assert first.returncode == 0, first.stderr
    assert open(repo / "data" / "shakespeare" / "input.txt", "rb").read() == open(shakespeare, "rb").read()
    offline = dict(https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    out = run(sys.executable, "train.py", f"--init_from={llama_tiny[0]}", "--dataset=shakespeare", "--max_iters=0",
              "--eval_iters=1", "--batch_size=2", "--block_size=32", "--device=cpu", f"--out_dir={tmp_path / 'run'}",
              cwd=repo, **offline)
    assert out.returncode == 0, out.stderr
    assert "downloading" not in out.stdout
    from tokenizer import get_tokenizer
    made = json.load(open(repo / "data" / "shakespeare" / get_tokenizer(llama_tiny[0]).name / "meta.json"))
    gpt2 = json.load(open(repo / "data" / "shakespeare" / "gpt2" / "meta.json"))
    assert made["source_sha256"] == gpt2["source_sha256"] and made["tokenizer"] != gpt2["tokenizer"]
