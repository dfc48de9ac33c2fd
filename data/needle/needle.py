"""
Synthetic needle-in-a-haystack retrieval, in the spirit of the Differential Transformer's
multi-needle test, generated locally (no download). An example is exactly n_tokens tokens of
the tokenizer given (its bos token first, if it has one): bland filler sentences with n_needles
hidden "The secret code of KEY is VALUE." sentences, a question about the first needle's key,
and the answer (its value):

    ... The river was calm that morning. The secret code of falcon is 4821. People walked ...
    Question: what is the secret code of falcon?
    Answer: The secret code of falcon is 4821

The asked-about needle sits at `depth` (0 = start of the context, 1 = its end); the others
(distractors with other keys) at random places. Needles go between filler sentences.
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


def make_example(enc, seed, n_tokens, n_needles=1, depth=0.5):
    """One example as a dict: tokens (exactly n_tokens ids), answer_start (the answer is
    tokens[answer_start:]), needle and question: (start, end) token ranges of the asked-about
    needle sentence and of the question, key, value."""
    if not 1 <= n_needles <= len(KEYS):
        raise ValueError(f"n_needles must be in 1..{len(KEYS)}, got {n_needles}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = random.Random(seed)
    keys = rng.sample(KEYS, n_needles)
    values = [rng.randint(1000, 9999) for _ in keys]
    needles = [enc.encode_ordinary(f" The secret code of {k} is {v}.") for k, v in zip(keys, values)]
    question = enc.encode_ordinary(f"\nQuestion: what is the secret code of {keys[0]}?\nAnswer: The secret code of {keys[0]} is")
    answer = enc.encode_ordinary(f" {values[0]}")
    bos = [enc.bos] if getattr(enc, "bos", None) is not None else []  # Llama 3 starts every text with one
    n_filler = n_tokens - len(bos) - len(question) - len(answer) - sum(len(n) for n in needles)
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
    asked = min(slots, key=lambda p: abs(p - depth * n_filler))
    places = [asked] + [rng.choice(slots) for _ in needles[1:]]
    tokens, needle, start = list(bos), None, 0
    for place, i in sorted(zip(places, range(len(needles)))):  # the asked needle goes first among equals
        tokens += filler[start:place]
        if i == 0:
            needle = (len(tokens), len(tokens) + len(needles[0]))
        tokens += needles[i]
        start = place
    tokens += filler[start:] + question
    answer_start = len(tokens)
    tokens += answer
    assert len(tokens) == n_tokens
    return dict(tokens=tokens, answer_start=answer_start, needle=needle, question=(answer_start - len(question), answer_start),
                key=keys[0], value=values[0])
