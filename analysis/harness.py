"""
Any model of this project on lm-evaluation-harness's benchmarks (lm-eval): a DiffLoRA, LoRA or
full fine-tune run, or a base model of either family, through analysis/harness_lm.py's NanoLM,
which gives the numbers lm-eval's own Hugging Face model gives on the same checkpoint.

    python analysis/harness.py --models=smollm2 --tasks=nano_capitals_mc,nano_capitals_gen,nano_shakespeare
    python analysis/harness.py --models=smollm2,out-needle-difflora --tasks=nano_capitals_mc --num_fewshot=3
    python analysis/harness.py config/harness_paper.py --models=out-paper/difflora32 --device=cuda   # the paper's tasks (hub)

Tasks are lm-eval's (`lm-eval ls tasks`; most download their data from the hub) or YAML files
under include_path: analysis/tasks holds this project's offline ones, on files in the repository
(nano_capitals_mc: multiple choice; nano_capitals_gen: generation; nano_shakespeare: rolling
log-likelihood, after python data/shakespeare/prepare.py --input PATH). Runs joined by '+' are
seeds of one method: the table shows their mean and, beside it, the lowest..highest run.
Output: the table (printed, and beside `out` as .txt headed by the command) and `out`, a .json
with lm-eval's results dict per run (results[task][metric]) and the settings; written after each
model, so an interrupted evaluation keeps what it measured.
"""

import os
import pathlib
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repository
from checkpoints import save_atomically, save_json  # noqa: E402
from configurator import check, configure, resolve_device, user_errors  # noqa: E402
from runs import trained_config  # noqa: E402

# -----------------------------------------------------------------------------
models = "smollm2"  # comma-separated; '+' joins runs (seeds) of one method into one entry
tasks = "nano_capitals_mc,nano_capitals_gen,nano_shakespeare"  # comma-separated lm-eval task (or group) names
include_path = ""  # a folder of task YAML files besides lm-eval's own ('': this project's analysis/tasks)
limit = 0  # > 0: the first `limit` documents of each task (for a quick look; not a benchmark score)
num_fewshot = -1  # -1: each task's own default
apply_chat_template = False  # True: prompts in the model's chat format (an instruct model's template)
batch_size = 8  # loglikelihood requests per forward pass
max_gen_toks = 256  # generation length when a task sets none
bootstrap_iters = 1000  # lm-eval's bootstrap for the standard errors of perplexity-like metrics (0: none)
seed = 1234  # lm-eval's seeds (few-shot sampling, numpy, torch)
device = "auto"
dtype = "auto"  # auto: float32 on the CPU, bfloat16 on a GPU that has it
out = "out-harness/results.json"  # lm-eval's results per run; the table goes beside it as .txt
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])  # the settings as run (written into the .json)
globals().update(config)
check(limit >= 0, "limit", limit, "an int >= 0 (0: every document)")
check(num_fewshot >= -1, "num_fewshot", num_fewshot, "an int >= 0, or -1 for each task's default")
check(batch_size >= 1 and max_gen_toks >= 1, "batch_size", batch_size, "an int >= 1 (and max_gen_toks >= 1)")
try:
    import lm_eval
    from lm_eval.tasks import TaskManager
except ImportError:
    raise SystemExit("error: analysis/harness.py needs lm-evaluation-harness: pip install lm-eval") from None
device, _, dtype, _ = resolve_device(device, dtype)
task_list = [t for t in tasks.split(",") if t]
entries = models.split(",")
for name in (n for entry in entries for n in entry.split("+")):  # every model found before any is evaluated
    with user_errors():
        trained_config(name)
with user_errors():
    if include_path and not os.path.isdir(include_path):
        raise OSError(f"include_path: there is no folder {include_path!r} (from {os.getcwd()})")
    manager = TaskManager(include_path=include_path or os.path.join(ROOT, "analysis", "tasks"))
unknown = [t for t in task_list if t not in manager.all_tasks]
if unknown or not task_list:
    raise SystemExit(f"error: unknown task {', '.join(unknown) or repr(tasks)}: tasks are lm-eval's own (lm-eval ls tasks) "
                     f"or YAML files under --include_path (now {include_path or 'analysis/tasks'}; analysis/tasks holds "
                     f"{', '.join(sorted(t for t in manager.all_tasks if t.startswith('nano_')))})")
from analysis.harness_lm import NanoLM  # noqa: E402  (imports lm-eval, checked above)

table = os.path.splitext(out)[0] + ".txt"


def metrics_of(results):
    """{(task, metric): value} of an lm-eval results dict, stderr and aliases left out; a metric
    computed after a filter other than 'none' keeps its filter's name (gsm8k's exact_match,strict-match)."""
    return {(task, m.removesuffix(",none")): v for task, row in results.items() for m, v in row.items()
            if isinstance(v, (int, float)) and "_stderr" not in m and m not in ("alias", "sample_len")}


def report(done):
    """The table of every finished run (mean and spread per entry) and the .json."""
    lines = [f"# python analysis/harness.py {' '.join(sys.argv[1:])}",
             f"# lm-eval {lm_eval.__version__}; limit {limit or 'none'}, num_fewshot "
             f"{num_fewshot if num_fewshot >= 0 else 'the tasks own'}, chat template {apply_chat_template}"]
    finished = {e: [done[n] for n in e.split("+")] for e in entries if all(n in done for n in e.split("+"))}
    keys = sorted({k for runs in finished.values() for r in runs for k in metrics_of(r["results"])})
    label = lambda e: os.path.basename(e.split("+")[0].rstrip("/"))[-20:] + (f" +{e.count('+')}" if "+" in e else "")
    lines.append(f"{'task':<22}{'metric':<30}" + "".join(f"{label(e):>26}" for e in finished))
    for key in keys:
        cells = []
        for runs in finished.values():
            values = [metrics_of(r["results"]).get(key) for r in runs]
            values = [v for v in values if v is not None]
            text = f"{sum(values) / len(values):.4f}" if values else "-"
            if len(values) > 1:
                text += f" ({min(values):.3f}..{max(values):.3f})"
            cells.append(text)
        lines.append(f"{key[0]:<22}{key[1]:<30}" + "".join(f"{c:>26}" for c in cells))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_atomically(table, lambda tmp: pathlib.Path(tmp).write_text("\n".join(lines) + "\n"))
    save_json(out, {"command": lines[0][2:], "settings": config, "runs": done})
    return lines


started, done = time.time(), {}
names = [n for entry in entries for n in entry.split("+")]
for i, name in enumerate(names):
    print(f"evaluating {name} ({i + 1}/{len(names)}) on {', '.join(task_list)}", flush=True)
    t0 = time.time()
    with user_errors(f" (finished results are in {out})"):
        lm = NanoLM(name, batch_size=batch_size, device=device, dtype=dtype, max_gen_toks=max_gen_toks)
        res = lm_eval.simple_evaluate(model=lm, tasks=task_list, num_fewshot=None if num_fewshot < 0 else num_fewshot,
                                      limit=limit or None, apply_chat_template=apply_chat_template, task_manager=manager,
                                      bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed, fewshot_random_seed=seed, log_samples=False)
    done[name] = dict(results=res["results"], versions=res.get("versions"), n_shot=res.get("n-shot"),
                      higher_is_better=res.get("higher_is_better"), seconds=round(time.time() - t0, 1))
    del lm
    report(done)
    print(f"  {name}: {time.time() - t0:.0f} s", flush=True)
print("\n".join(report(done)))
print(f"\nwrote {out} and {table} ({(time.time() - started) / 60:.1f} min)")
