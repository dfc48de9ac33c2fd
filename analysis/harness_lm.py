"""
This project's models in lm-evaluation-harness (lm-eval, EleutherAI's evaluation engine, the one
OLMES and litgpt's `evaluate` build on): NanoLM answers lm-eval's three kinds of request with a
model from runs.load_trained (a DiffLoRA, LoRA or full fine-tune run, or a base model of either
family), with this project's tokenizer and KV cache, and gives the numbers that lm-eval's own
Hugging Face model (HFLM) gives on the same checkpoint:

    loglikelihood(context, continuation)  log p(continuation | context), and whether greedy decoding
                                          writes it (is_greedy); lm-eval's own pair encoding
                                          (TemplateLM._encode_pair: trailing spaces move to the
                                          continuation; an empty context is the declared bos token)
    loglikelihood_rolling(text)           log p(text), over windows of the model's context
                                          (lm-eval's get_rolling_token_windows, as HFLM)
    generate_until(context, gen_kwargs)   the generation, cut before the first `until` string, at
                                          most max_gen_toks tokens; greedy unless do_sample

As HFLM does: requests sorted longest first and batched, right-padded (the causal mask alone keeps
the padding out of every real row, so no attention mask is needed), a context longer than the
block size cut from the left, and text encoded as transformers' tokenizer.encode encodes it (the
bos token first where the checkpoint's tokenizer adds one, not twice). With
apply_chat_template, a prompt is the model's chat format as its template renders it
(tokenizer.chat). Generation runs one request at a time, with the KV cache.

    import lm_eval
    from analysis.harness_lm import NanoLM
    lm = NanoLM("out-needle-difflora")
    lm_eval.simple_evaluate(model=lm, tasks=["nano_capitals_mc"], task_manager=lm_eval.tasks.TaskManager(
        include_path="analysis/tasks"))
"""

import json
import os

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from checkpoints import checkpoint_path, open_gguf
from configurator import resolve_device
from runs import load_trained
from tokenizer import GPT2_NAMES, get_tokenizer


def declared_tokens(init_from, enc):
    """(bos, eos): the ids a checkpoint's Hugging Face tokenizer declares as bos_token and
    eos_token, which HFLM uses as the empty context and the end of a generation (not always the
    ids the tokenizer puts around a text: SmolLM2 declares <|im_start|> and <|im_end|>). GPT-2:
    <|endoftext|> for both; a GGUF file: tokenizer.ggml.bos_token_id and eos_token_id; a folder:
    tokenizer_config.json's bos_token and eos_token; a train.py run: its base's."""
    if os.path.isfile(os.path.join(init_from, "train_config.json")):
        with open(os.path.join(init_from, "train_config.json")) as f:
            return declared_tokens(json.load(f)["base"], enc)
    if init_from in GPT2_NAMES or init_from.startswith("openai-community/") or enc.name == "gpt2":
        return enc.eos, enc.eos
    path = checkpoint_path(init_from, files=("config.json", "tokenizer.json", "tokenizer_config.json"))
    if path.endswith(".gguf"):
        fields = open_gguf(path).fields
        return tuple(fields[k].contents() if k in fields else None
                     for k in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"))
    config = {}
    if os.path.exists(os.path.join(path, "tokenizer_config.json")):
        with open(os.path.join(path, "tokenizer_config.json")) as f:
            config = json.load(f)
    ids = []
    for key in ("bos_token", "eos_token"):
        token = config.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        ids.append(enc.encode_single_token(token) if token else None)
    return ids[0], ids[1] if ids[1] is not None else enc.eos


class NanoLM(TemplateLM):
    """An lm-eval model over runs.load_trained(name): see the module docstring."""

    def __init__(self, model="smollm2", batch_size=8, device="cpu", dtype="float32", max_gen_toks=256, max_batch_size=None):
        super().__init__()
        self.device_name, _, _, self.ctx = resolve_device(device, dtype)
        self.name = model
        self.model = load_trained(model).eval().to(self.device_name)
        self.enc = get_tokenizer(self.model.name_or_path)
        self.bos_token_id, self.eos_token_id = declared_tokens(self.model.name_or_path, self.enc)  # the base's, as load_trained found it
        self.specials = set(self.enc._special_tokens.values())
        # lm-eval's "auto" (find the largest batch that fits) is HFLM's own search: here it is 8; max_batch_size is unused
        self.batch_size, self._max_gen_toks = 8 if batch_size == "auto" else int(batch_size), int(max_gen_toks)

    @property
    def eot_token_id(self):
        return self.eos_token_id

    @property
    def prefix_token_id(self):  # HFLM's: the declared bos, else the eos
        return self.bos_token_id if self.bos_token_id is not None else self.eos_token_id

    @property
    def max_length(self):
        return self.model.config.block_size

    @property
    def max_gen_toks(self):
        return self._max_gen_toks

    @property
    def tokenizer_name(self):
        return self.enc.name

    def chat_template(self, chat_template=False):
        return self.enc.chat_format if chat_template else None

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        """The ids transformers' tokenizer.encode(string) gives: special tokens written out count as
        special tokens, and the tokenizer's bos goes first (add_special_tokens None: unless the text
        already starts with the prefix token; False: never)."""
        ids = self.enc.encode(string, allowed_special="all")
        if add_special_tokens is None:
            add_special_tokens = not string.startswith(self.tok_decode([self.prefix_token_id], skip_special_tokens=False))
        return [self.enc.bos] + ids if add_special_tokens and self.enc.bos is not None else ids

    def tok_decode(self, tokens, skip_special_tokens=True):
        tokens = [tokens] if isinstance(tokens, int) else list(tokens)
        return self.enc.decode([t for t in tokens if not (skip_special_tokens and t in self.specials)])

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        """The chat as text in the model's chat format, up to where the assistant's answer starts;
        with add_generation_prompt False, the last (assistant) message left open to continue."""
        text = self.enc.decode(self.enc.chat(chat_history, generation_prompt=add_generation_prompt)[0])
        if not add_generation_prompt:
            end = self.tok_decode([self.enc.chat_end], skip_special_tokens=False)
            text = text[:text.rindex(end)] if end in text else text
        return text

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
        """[(log p(continuation | context), is_greedy)] for requests [(key, context ids, continuation
        ids)], in their order: batches of the longest first, each row (context + continuation)[:-1]
        cut to the last block_size ids, right-padded; the logits of only the rows' last
        len(continuation) positions, which predict the continuation, are computed. Requests that
        differ only in the continuation's last token (the choices of a multiple-choice question,
        one token each) share one row, as in HFLM: their input rows are the same."""
        collator = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])), group_by="contexts",
                            group_fn=lambda r: r[1] + r[2][:-1])
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests")
        for chunk in collator.get_batched(n=override_bs or self.batch_size):
            rows = [(ctx + cont)[-(self.max_length + 1):][:-1] for _, ctx, cont in chunk]
            x = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)  # (B, T), right-padded
            y = torch.full_like(x, -1)  # (B, T): the continuation's ids where they are predicted, -1 elsewhere
            for i, ((_, _, cont), row) in enumerate(zip(chunk, rows)):
                x[i, :len(row)] = torch.tensor(row)
                y[i, len(row) - len(cont):len(row)] = torch.tensor(cont)
            with self.ctx:
                logits, _ = self.model(x.to(self.device_name), y.to(self.device_name))  # (N, vocab), row by row
            logp = logits.float().log_softmax(-1).cpu()
            for (key, ctx, cont), row in zip(chunk, logp.split([len(c) for _, _, c in chunk])):
                # the requests that share this row: each with its own continuation
                for req_key, req_cont, lp in collator.get_cache(req_str=key, cxt_toks=ctx, cont_toks=cont, logits=row[None]):
                    target = torch.tensor(req_cont)  # (n,); lp (1, n, vocab)
                    answer = (lp[0].gather(1, target[:, None]).sum().item(), bool((lp[0].argmax(-1) == target).all()))
                    results.append(answer)
                    if req_key is not None:
                        self.cache_hook.add_partial("loglikelihood", req_key, answer)
                    bar.update(1)
        bar.close()
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """log p(text) of each request's text: the sum over the disjoint windows of up to block_size
        tokens that cover it, each scored on its own (lm-eval's windows, context_len=1): the first
        window's first token conditioned on the prefix token, a later one's on the token before it."""
        windows, owner = [], []
        for i, (text,) in enumerate(tqdm([r.args for r in requests], disable=disable_tqdm, desc="Rolling windows")):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=True)
        totals = [0.0] * len(requests)
        for i, (score, _) in zip(owner, scores):
            totals[i] += score
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm=False):
        """Each request's generation, cut before the first of its `until` strings (the eos token's
        text added): the context cut to its last block_size - max_gen_toks ids, then up to max_gen_toks
        tokens, greedy (do_sample False) or sampled with the request's temperature, top_k, top_p."""
        collator = Collator([r.args for r in requests], sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
                            group_by="gen_kwargs", group_fn=lambda r: r[1])
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running generate_until requests")
        for chunk in collator.get_batched(n=1):
            for context, gen_kwargs in chunk:
                kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
                until, n_new = handle_stop_sequences(kw.pop("until", None), eos=eos), kw.pop("max_gen_toks")
                if n_new >= self.max_length:
                    raise ValueError(f"max_gen_toks {n_new} leaves no room for a context in {self.name}'s {self.max_length}")
                ids = self.tok_encode(context)[-(self.max_length - n_new):]
                new = []

                def on_token(token):  # stop at the first `until` string, as HFLM's stopping criteria do
                    new.append(token.item())
                    return any(s in self.tok_decode(new, skip_special_tokens=False) for s in until if s)

                sample = kw.get("do_sample", False)
                with self.ctx:
                    self.model.generate(torch.tensor([ids], device=self.device_name), n_new,
                                        temperature=kw.get("temperature", 1.0) if sample else 0,
                                        top_k=kw.get("top_k") if sample else None, top_p=kw.get("top_p") if sample else None,
                                        eos_token=self.eot_token_id, on_token=on_token)
                text = postprocess_generated_text(self.tok_decode(new), until, None)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                bar.update(1)
        bar.close()
        return collator.get_original(results)
