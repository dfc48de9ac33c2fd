"""
Synthetic needle-in-a-haystack retrieval, in the spirit of the Differential Transformer's
multi-needle test and RULER's variants, generated locally (no download). An example is exactly
n_tokens tokens of the tokenizer given (its bos token first, if it has one): bland filler
sentences with n_needles hidden "The secret code of KEY is VALUE." sentences, a question about
one key, and the answer. Three kinds:

  single      keys are different words; the question asks for the first needle's code
                  ... The secret code of falcon is 4821. People walked ...
                  Question: what is the secret code of falcon?
                  Answer: The secret code of falcon is 4821
  multikey    confusable keys: every needle's key is one noun with another adjective
              ("red falcon", "blue falcon", ...); the question asks for one of them
  multivalue  the asked key appears in `values` needles with different codes, the other needles
              are distractors with other keys; the answer lists its codes in order of appearance
                  Question: what are the secret codes of falcon?
                  Answer: The secret codes of falcon are 4821, 1093, 7730

The asked-about needle (the first one of a multivalue key) sits at `depth` (0 = start of the
context, 1 = its end); the others at random places. Needles go between filler sentences.
"""

import random

FILLER = [
    "The river was calm that morning.", "People walked slowly along the old road.",
    "A few clouds drifted over the hills.", "The market opened a little later than usual.",
    "Someone was reading a newspaper on a bench.", "The bakery smelled of fresh bread.",
    "Children played near the fountain in the square.", "The train left the station on time.",
    "A dog waited patiently by the door.", "The library was quiet in the afternoon.",
    "Leaves fell from the trees in the park.", "The shopkeeper counted the coins twice.",
    "Rain was expected later in the evening.", "A cyclist passed by without a word.",
    "The bells of the church rang at noon.", "An old man fed the pigeons near the bridge.",
    "The kettle began to whistle in the kitchen.", "Two friends talked about the weather.",
    "The lamp in the window stayed on all night.", "A boat moved slowly down the canal.",
    "The garden needed water after the long summer.", "Someone had left an umbrella on the tram.",
]
KEYS = [
    "falcon", "maple", "harbor", "copper", "violet", "lantern", "glacier", "meadow", "cobalt", "orchid",
    "summit", "willow", "ember", "canyon", "saffron", "beacon", "thistle", "marble", "juniper", "quartz",
    "tundra", "raven", "cedar", "lagoon", "nutmeg", "pebble", "sparrow", "walnut", "zephyr", "garnet",
]


ADJECTIVES = ["red", "blue", "green", "silver", "golden", "dark", "small", "old", "northern", "quiet", "bright", "wild",
              "eastern", "hidden", "frozen", "little", "ancient", "hollow", "western", "pale", "tall", "southern",
              "crimson", "lonely", "iron", "gentle", "swift", "amber", "grey", "broken"]
KINDS = ("single", "multikey", "multivalue")


def make_example(enc, seed, n_tokens, n_needles=1, depth=0.5, kind="single", values=3):
    """One example as a dict: tokens (exactly n_tokens ids), answer_start (the answer is
    tokens[answer_start:]), needle and question: (start, end) token ranges of the asked-about
    needle sentence and of the question, spans: the ranges of all the asked key's needles (one
    unless multivalue), codes and distractor_codes: the ranges of the code digits in the asked
    key's needles and in the others, key, value (the answer's text without its leading space),
    and wrong: the token ids of every wrong answer that swaps one of the answer's codes for a
    distractor needle's code (what the margin of analysis/eval_needle.py compares with)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    low = values if kind == "multivalue" else 1
    if not low <= n_needles <= len(KEYS):
        raise ValueError(f"n_needles must be in {low}..{len(KEYS)} for {kind}, got {n_needles}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = random.Random(seed)
    if kind == "multikey":  # one noun, many adjectives: the key itself has to be read, not just spotted
        noun = rng.choice(KEYS)
        keys = [f"{a} {noun}" for a in rng.sample(ADJECTIVES, n_needles)]
    elif kind == "multivalue":
        keys = rng.sample(KEYS, n_needles - values + 1)
        keys = keys[:1] * values + keys[1:]
    else:
        keys = rng.sample(KEYS, n_needles)
    codes = [rng.randint(1000, 9999) for _ in keys]
    asked = [i for i, k in enumerate(keys) if k == keys[0]]  # needle indices of the asked key
    needles = [enc.encode_ordinary(f" The secret code of {k} is {v}.") for k, v in zip(keys, codes)]
    if kind == "multivalue":
        question = f"\nQuestion: what are the secret codes of {keys[0]}?\nAnswer: The secret codes of {keys[0]} are"
    else:
        question = f"\nQuestion: what is the secret code of {keys[0]}?\nAnswer: The secret code of {keys[0]} is"
    question = enc.encode_ordinary(question)
    # a list of codes tokenises code by code (", " and " NNNN" are separate pieces), so its length
    # does not depend on the order the needles end up in
    answer_len = len(enc.encode_ordinary(" " + ", ".join(str(codes[i]) for i in asked)))
    bos = [enc.bos] if getattr(enc, "bos", None) is not None else []  # Llama 3 starts every text with one
    n_filler = n_tokens - len(bos) - len(question) - answer_len - sum(len(n) for n in needles)
    if n_filler < 1:
        raise ValueError(f"{n_tokens} tokens cannot hold {n_needles} needles, the question and the answer")
    sentences, total = [], 0
    while total < n_filler:
        sentences.append(enc.encode_ordinary(" " + rng.choice(FILLER)))
        total += len(sentences[-1])
    filler = [t for s in sentences for t in s][total - n_filler:]  # drop the excess from the front
    ends, pos = [], -(total - n_filler)
    for s in sentences:
        pos += len(s)
        ends.append(pos)
    slots = [0] + [e for e in ends if e > 0]  # filler positions between sentences, 0 .. n_filler
    first = min(slots, key=lambda p: abs(p - depth * n_filler))
    places = [first] + [rng.choice(slots) for _ in needles[1:]]
    tokens, spans, order, start = list(bos), [], [], 0
    code_spans, distractor_codes = [], []
    for place, i in sorted(zip(places, range(len(needles)))):  # the asked needle goes first among equals
        tokens += filler[start:place]
        if i in asked:
            spans.append((len(tokens), len(tokens) + len(needles[i])))
            order.append(i)
        (code_spans if i in asked else distractor_codes).append(code_range(enc, needles[i], codes[i], len(tokens)))
        tokens += needles[i]
        start = place
    tokens += filler[start:] + question
    answer_start = len(tokens)
    right = [codes[i] for i in order]  # in order of appearance
    value = ", ".join(map(str, right))
    tokens += enc.encode_ordinary(" " + value)
    assert len(tokens) == n_tokens
    others = [c for i, c in enumerate(codes) if i not in asked and c not in right]
    wrong = [enc.encode_ordinary(" " + ", ".join(map(str, right[:j] + [c] + right[j + 1:])))
             for j in range(len(right)) for c in others]
    return dict(tokens=tokens, answer_start=answer_start, needle=spans[order.index(0)], spans=spans, codes=code_spans,
                distractor_codes=distractor_codes, question=(answer_start - len(question), answer_start), key=keys[0],
                value=value, wrong=wrong)


def code_range(enc, needle, code, offset):
    """The (start, end) token range of a needle's code digits, the needle's tokens starting at offset."""
    text, starts = enc.decode_with_offsets(needle)
    c0 = text.rindex(str(code))
    hit = [i for i, (a, b) in enumerate(zip(starts, starts[1:] + [len(text)])) if a < c0 + 4 and b > c0]
    return offset + hit[0], offset + hit[-1] + 1


def eval_seed(seed, kind, n_needles, n_tokens, depth, i):
    """The seed of analysis/eval_needle.py's example i of a cell: never one of prepare.py's (seed 0, below
    10^9), and for the single kind the same as before the other kinds existed."""
    return (seed * 1_000_000_007 + 10_000 * n_tokens + 100 * round(100 * depth) + i
            + 7_919 * KINDS.index(kind) * (1_000_003 + n_needles))
