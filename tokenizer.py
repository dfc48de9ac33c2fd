"""
Each base model's own tokenizer, as a tiktoken Encoding: GPT-2's from tiktoken, a Llama-family
model's built from its checkpoint, with nothing to download beyond the checkpoint itself.

All of them are byte-level BPE: text is split by a regex (the pre-tokenizer), each piece is
turned into bytes, and the bytes are merged pair by pair, lowest rank first. tiktoken runs
exactly that, given the regex, the ranks (bytes -> id) and the special tokens. A Hugging Face
tokenizer.json and the tokenizer.ggml.* fields of a GGUF file hold the same three things in
other words: the vocabulary maps GPT-2's printable stand-ins for the 256 bytes to ids, merges
come in priority order (and their results' ids in the same order, which is checked), and the
pre-tokenizer is named or given as a regex.

    enc = get_tokenizer("smollm2")                 # the GGUF's own tokenizer, no download
    enc.encode_ordinary("The secret code is 4821")
    enc.chat_prompt("What is the capital of France?")   # ChatML ids, ready for generate()
"""

import functools
import hashlib
import json
import os
import re

import numpy as np
import tiktoken

from checkpoints import ALIASES, checkpoint_path, open_gguf

# GPT-2's pre-tokenizer (Hugging Face's ByteLevel regex)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# SmolLM2's: every digit on its own first (Digits(individual_digits)), then GPT-2's regex on the
# text between digits. In one regex: a digit is a piece, and a run of spaces before a digit ends
# there as it would at the end of a text
DIGITS_PATTERN = GPT2_PATTERN.replace(r" ?\p{N}+", r"\p{N}").replace(r"\s+(?!\S)", r"\s+(?![^\s\p{N}])")
# Llama 3's (numbers in groups of up to three digits)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                  r"|\s+(?!\S)|\s+")
GGUF_PATTERNS = {"gpt2": GPT2_PATTERN, "default": GPT2_PATTERN, "smollm": DIGITS_PATTERN, "llama-bpe": LLAMA3_PATTERN}
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")  # hub ids that need no look at the hub


class Tokenizer(tiktoken.Encoding):
    """A tiktoken BPE with what its checkpoint says about using it: bos (the id a text starts
    with, or None: Llama 3 starts with <|begin_of_text|>, GPT-2 and SmolLM2 with nothing), eos
    (the id that ends a text), chat_format ('chatml', 'llama3' or None: the chat format of an
    instruct model), system (its chat template's default system prompt, or None) and preamble
    (what Llama 3.1+ templates put first in the system turn, or None)."""

    def __init__(self, name, pat_str, mergeable_ranks, special_tokens, bos=None, eos=None, chat_format=None, system=None,
                 preamble=None, absent=()):
        super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)
        self.bos, self.eos, self.chat_format, self.system, self.preamble = bos, eos, chat_format, system, preamble
        # bytes the vocabulary lacks (SmolLM2's has no token for 21 rare ones, such as 0x04): tiktoken
        # needs a rank for every byte, so they get ids past the vocabulary, dropped from every
        # encoding as Hugging Face's BPE drops them
        self.absent = frozenset(absent)
        self.vocab_size = self.max_token_value + 1 - len(self.absent)

    def encode_ordinary(self, text):
        ids = super().encode_ordinary(text)
        return [i for i in ids if i not in self.absent] if self.absent else ids

    def encode(self, text, **kw):
        ids = super().encode(text, **kw)
        return [i for i in ids if i not in self.absent] if self.absent else ids

    def prompt(self, text):
        """The ids of a plain-text prompt: bos, if the model has one, then the text (in which
        special tokens written out count as special tokens)."""
        return [self.bos] * (self.bos is not None) + self.encode(text, allowed_special="all")

    def chat_prompt(self, user, system=None):
        """The ids of a one-turn chat in the model's chat format, up to where the assistant's answer
        starts (what apply_chat_template(..., add_generation_prompt=True) gives). system: the system
        prompt (None: the template's default, if it has one; "": none)."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.chat(messages, generation_prompt=True, default_system=system is None)[0]

    def chat(self, messages, generation_prompt=False, default_system=True):
        """(ids, mask) of a conversation, messages [{'role': ..., 'content': ...}], rendered in the
        model's chat format as its Hugging Face template renders it and tokenised as one text (so
        the ids are what the template's tokenize=True gives). mask[i] is 1 where token i belongs to
        an assistant turn's content or to the token that ends that turn (what fine-tuning on chats
        teaches: to answer, and to stop), 0 on everything else (system and user turns, the role
        headers). A token that straddles a boundary counts where it starts.

        ChatML (SmolLM2): <|im_start|>{role}\n{content}<|im_end|>\n per turn, the template's default
        system turn first when the chat has none (and default_system). Llama 3: <|begin_of_text|>,
        then <|start_header_id|>{role}<|end_header_id|>\n\n{content, stripped}<|eot_id|> per turn;
        the Llama 3.1+ templates always open with a system turn that starts with a knowledge-date
        preamble, its "Today Date" pinned to the templates' own fallback, 26 Jul 2024, so that the
        data do not depend on the day they were made (transformers would write today's date)."""
        if self.chat_format == "chatml":
            head, end, sep = "<|im_start|>{}\n", "<|im_end|>", "\n"
            if messages[:1] and messages[0]["role"] != "system" and self.system and default_system:
                messages = [{"role": "system", "content": self.system}] + messages
        elif self.chat_format == "llama3":
            head, end, sep = "<|start_header_id|>{}<|end_header_id|>\n\n", "<|eot_id|>", ""
            messages = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
            if self.preamble is not None:  # the system turn is always there, the preamble first
                system = messages[0]["content"] if messages[:1] and messages[0]["role"] == "system" else None
                rest = messages[1:] if system is not None else messages
                messages = [{"role": "system", "content": self.preamble + (system or "")}] + rest
        else:
            raise ValueError(f"the tokenizer {self.name} has no chat format (ChatML or Llama 3's): use a plain prompt, "
                             f"or an instruct model whose checkpoint has a chat template")
        pieces = [("<|begin_of_text|>" if self.chat_format == "llama3" else "", False)]  # (text, counted)
        for m in messages:
            pieces += [(head.format(m["role"]), False), (m["content"] + end, m["role"] == "assistant"), (sep, False)]
        if generation_prompt:
            pieces.append((head.format("assistant"), False))
        text = "".join(t for t, _ in pieces)
        ids = super().encode(text, allowed_special="all")  # before absent bytes are dropped: offsets stay exact
        sizes = self._token_bytes[ids]  # (n,) each token's length in bytes
        starts = np.cumsum(sizes) - sizes  # (n,) byte offset where each token starts
        mask = np.zeros(len(ids), dtype=np.uint8)
        at = 0
        for piece, counted in pieces:
            size = len(piece.encode())
            if counted:
                mask[(starts >= at) & (starts < at + size)] = 1
            at += size
        if self.absent:
            keep = ~np.isin(ids, list(self.absent))
            ids, mask = np.asarray(ids)[keep].tolist(), mask[keep]
        return ids, mask

    @functools.cached_property
    def _token_bytes(self):
        """Each id's length in bytes (built on first use: only chat() needs it)."""
        sizes = np.zeros(self.max_token_value + 1, dtype=np.int64)
        for token, i in [*self._mergeable_ranks.items(), *((t.encode(), i) for t, i in self._special_tokens.items())]:
            sizes[i] = len(token)
        return sizes

    @property
    def chat_end(self):
        """The id that ends an assistant's turn, where chat generation stops."""
        return self._special_tokens["<|im_end|>" if self.chat_format == "chatml" else "<|eot_id|>"]


def gpt2_tokenizer():
    """tiktoken's GPT-2 BPE. tiktoken downloads its two files on first use; offline, say which
    files it wants and how to supply them instead of failing with a connection error."""
    try:
        g = tiktoken.get_encoding("gpt2")
    except Exception as e:
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or "/tmp/data-gym-cache"
        raise SystemExit(f"error: could not load the GPT-2 tokenizer ({type(e).__name__}): tiktoken fetches GPT-2's vocab.bpe "
                         f"and encoder.json on first use and keeps them in its cache folder (TIKTOKEN_CACHE_DIR, now {cache}). "
                         f"Offline, put them there: with this project's shared data beside the checkout, "
                         f"export TIKTOKEN_CACHE_DIR=$PWD/.cache/tiktoken && bash ../shared/data/gpt2/install-tiktoken-cache.sh "
                         f"$TIKTOKEN_CACHE_DIR; or copy that folder from a machine that has them. (The Llama-family models "
                         f"bring their own tokenizer: --init_from=smollm2 needs no download.)") from None
    return Tokenizer(g.name, g._pat_str, g._mergeable_ranks, g._special_tokens, eos=g.eot_token)  # tiktoken keeps its parts private


def get_tokenizer(init_from):
    """The tokenizer of a base model or train.py run, as `init_from` names it anywhere in this
    project: a GPT-2 name or folder (tiktoken's gpt2), 'scratch' (a new GPT-2), a Llama-family
    folder or hub id (its tokenizer.json), a .gguf file or an alias such as smollm2 (the file's
    tokenizer.ggml.* fields), or a train.py out_dir (its base's)."""
    if init_from in GPT2_NAMES or init_from == "scratch" or init_from.startswith("openai-community/"):
        return gpt2_tokenizer()
    if os.path.isfile(os.path.join(init_from, "train_config.json")):  # a run: its base's tokenizer
        with open(os.path.join(init_from, "train_config.json")) as f:
            return get_tokenizer(json.load(f)["base"])
    path = checkpoint_path(init_from, files=("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"))
    if path.endswith(".gguf"):
        return gguf_tokenizer(path, init_from if init_from in ALIASES else os.path.basename(path))
    with open(os.path.join(path, "config.json")) as f:
        if json.load(f).get("model_type") == "gpt2":
            return gpt2_tokenizer()
    return json_tokenizer(path)


def json_tokenizer(folder):
    """The byte-level BPE of a Hugging Face tokenizer.json (with its chat template from
    tokenizer_config.json or chat_template.jinja)."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        raise ValueError(f"{folder} has no tokenizer.json: a Llama-family checkpoint needs its tokenizer beside config.json")
    with open(path, encoding="utf-8") as f:
        j = json.load(f)
    model, decoder = j.get("model") or {}, j.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix") or j.get("normalizer") or decoder.get("type", "ByteLevel") != "ByteLevel":
        raise ValueError(f"{path} is not a byte-level BPE tokenizer (model {model.get('type')!r}, decoder "
                         f"{decoder.get('type')!r}, normalizer {(j.get('normalizer') or {}).get('type')!r}): only "
                         f"byte-level BPE tokenizers (GPT-2's, SmolLM2's, Llama 3's) can be read")
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    specials = {t["content"]: t["id"] for t in j.get("added_tokens", [])}
    template = None
    config_path, jinja_path = os.path.join(folder, "tokenizer_config.json"), os.path.join(folder, "chat_template.jinja")
    if os.path.exists(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            template = f.read()
    elif os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
    bos = _bos_of(j.get("post_processor"), specials)
    return _build(path, model["vocab"], merges, specials, _pattern_of(j.get("pre_tokenizer"), path), bos, template)


def gguf_tokenizer(path, label):
    """The byte-level BPE of a GGUF file's tokenizer.ggml.* fields."""
    try:
        fields = open_gguf(path).fields
        get = lambda k, default=None: fields[k].contents() if k in fields else default
        kind, pre, tokens = get("tokenizer.ggml.model"), get("tokenizer.ggml.pre", "default"), get("tokenizer.ggml.tokens")
        types, merges = get("tokenizer.ggml.token_type"), get("tokenizer.ggml.merges", [])
    except Exception as e:
        raise ValueError(f"could not read {path}: not a GGUF file, or truncated or corrupt ({type(e).__name__}: {e})") from e
    if kind != "gpt2" or not tokens:
        raise ValueError(f"{path}: its tokenizer is {kind!r}, not byte-level BPE ('gpt2'): only byte-level BPE tokenizers "
                         f"(GPT-2's, SmolLM2's, Llama 3's) can be read")
    if pre not in GGUF_PATTERNS:
        raise ValueError(f"{path}: its pre-tokenizer {pre!r} is not one this project knows ({', '.join(GGUF_PATTERNS)})")
    specials = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (3, 4)}  # control and user-defined
    vocab = {t: i for i, t in enumerate(tokens)}
    bos = get("tokenizer.ggml.bos_token_id") if get("tokenizer.ggml.add_bos_token", False) else None
    return _build(label, vocab, [m.split(" ") for m in merges], specials, GGUF_PATTERNS[pre], bos,
                  get("tokenizer.chat_template"))


def _byte_decoder():
    """GPT-2's printable stand-in for each of the 256 bytes -> the byte: printable latin-1
    characters stand for themselves, the others for chr(256 + n) in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + n): b for n, b in enumerate(others)}}


def _build(source, vocab, merges, specials, pattern, bos, template):
    """A Tokenizer from a byte-level vocabulary {token: id}, its merges [(a, b)] in priority order,
    the special tokens {text: id}, the pre-tokenizer regex, the bos id and the chat template."""
    decode = _byte_decoder()
    ranks = {}
    for token, i in vocab.items():
        if token in specials:
            continue
        try:
            ranks[bytes(decode[c] for c in token)] = i
        except KeyError:
            raise ValueError(f"{source}: token {token!r} is not a byte-level BPE token (character outside GPT-2's byte "
                             f"alphabet): only byte-level BPE tokenizers can be read") from None
    if len(ranks) != len(vocab) - len(set(vocab) & set(specials)):
        raise ValueError(f"{source}: not a byte-level BPE vocabulary (two tokens stand for the same bytes)")
    n_vocab = max([*ranks.values(), *specials.values()]) + 1
    absent = [bytes([b]) for b in range(256) if bytes([b]) not in ranks]
    ranks.update({b: n_vocab + k for k, b in enumerate(absent)})
    # tiktoken merges by the rank of the result, so each merge's result must outrank the earlier ones'
    last = -1
    for a, b in merges:
        i = ranks.get(bytes(decode[c] for c in a + b), -1)
        if i <= last:
            raise ValueError(f"{source}: the merge {a!r} + {b!r} is out of order with its token id {i}, which tiktoken's "
                             f"rank-ordered merging cannot reproduce")
        last = i
    eos = next((specials[t] for t in ("<|endoftext|>", "<|end_of_text|>") if t in specials), None)
    chat = "chatml" if template and "<|im_start|>" in template else "llama3" if template and "<|start_header_id|>" in template else None
    system = re.search(r"<\|im_start\|>system(?:\n|\\n)(.+?)<\|im_end\|>", template) if chat == "chatml" else None
    knowledge = re.search(r"Cutting Knowledge Date: (.+?)(?:\n|\\n)", template) if chat == "llama3" else None
    preamble = f"Cutting Knowledge Date: {knowledge.group(1)}\nToday Date: 26 Jul 2024\n\n" if knowledge else None
    digest = hashlib.sha256(json.dumps([pattern, sorted(specials.items()), sorted((i, t.hex()) for t, i in ranks.items())])
                            .encode()).hexdigest()
    return Tokenizer(f"bpe{n_vocab}-{digest[:8]}", pattern, ranks, specials, bos=bos, eos=eos, chat_format=chat,
                     system=system.group(1) if system else None, preamble=preamble, absent=range(n_vocab, n_vocab + len(absent)))


def _pattern_of(pre, source):
    """The regex of a tokenizer.json pre-tokenizer, for the forms byte-level BPE models use."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") if s else None for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):  # GPT-2
        return GPT2_PATTERN
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):  # SmolLM2
        return DIGITS_PATTERN
    if kinds == ["Split", "ByteLevel"] and "Regex" in steps[0].get("pattern", {}) and not steps[1].get("use_regex", True) \
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):  # Llama 3
        return steps[0]["pattern"]["Regex"]
    raise ValueError(f"{source}: its pre-tokenizer ({' then '.join(map(str, kinds))}) is not one of the byte-level BPE forms "
                     f"this project reads (GPT-2's ByteLevel, SmolLM2's Digits + ByteLevel, Llama 3's Split + ByteLevel)")


def _bos_of(post, specials):
    """The special token a tokenizer.json's post-processor puts before every text, or None."""
    steps = post.get("processors", []) if post and post.get("type") == "Sequence" else [post]
    for step in steps:
        if step and step.get("type") == "TemplateProcessing" and step.get("single"):
            first = step["single"][0]
            if "SpecialToken" in first:
                return specials[first["SpecialToken"]["id"]]
    return None


# ----------------------------------------------------------------------------- token files

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def dataset_dir(dataset, base):
    """(folder of the token files, the prepare.py that writes them or None) of a dataset for the
    base model `base`. A dataset this project prepares (data/<dataset>/prepare.py) keeps one
    folder per tokenizer, data/<dataset>/<tokenizer name>/, so bases with other vocabularies never
    share token files; any other dataset is the folder `dataset` (under data/ or a path) as it is."""
    folder = os.path.join(DATA, dataset)
    prepare = os.path.join(folder, "prepare.py")
    if os.path.exists(prepare):
        return os.path.join(folder, get_tokenizer(base).name), prepare
    return (folder if os.path.isdir(folder) else dataset), None


def token_meta(enc, base):
    """What meta.json records of the tokenizer that wrote a dataset's .bin files: its name (a
    content hash, so two bases with the same tokenizer share it), the base it came from, and
    the integer type of the files (uint16 while the vocabulary fits, uint32 for Llama 3's 128,256)."""
    return dict(tokenizer=enc.name, base=base, vocab_size=enc.vocab_size,
                dtype="uint16" if enc.vocab_size <= 2**16 else "uint32")


def read_meta(folder):
    """A dataset folder's meta.json ({} without one), with the tokenizer and dtype filled in for
    files written before meta.json recorded them (GPT-2 tokens, uint16)."""
    path = os.path.join(folder, "meta.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        meta = json.load(f)
    return {"tokenizer": meta.get("encoding", "gpt2"), "dtype": "uint16", **meta}
