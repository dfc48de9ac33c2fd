"""The datasets of this project's offline lm-eval tasks (the YAML files beside this one), read from
files in the repository, found from this file's folder wherever lm-eval runs: no hub, no network."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
SHAKESPEARE = os.path.join(HERE, "..", "..", "data", "shakespeare", "input.txt")  # kept by data/shakespeare/prepare.py


def capitals(**kwargs):
    """capitals.jsonl: a country, its capital, four capitals to choose from and the right one's
    index; the first 4 rows are the validation split (the few-shot examples), the rest the test split."""
    import datasets
    with open(os.path.join(HERE, "capitals.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows[:4]),
                                 "test": datasets.Dataset.from_list(rows[4:])})


def shakespeare(paragraphs=24, **kwargs):
    """The first `paragraphs` speeches (blank-line separated) of tiny-shakespeare's val split (its
    last 10% of characters, as data/shakespeare/prepare.py splits it)."""
    import datasets
    if not os.path.exists(SHAKESPEARE):
        raise FileNotFoundError(f"nano_shakespeare reads tiny-shakespeare at {os.path.normpath(SHAKESPEARE)}: run "
                                f"python data/shakespeare/prepare.py --tokenizer=smollm2 --input PATH/input.txt first")
    with open(SHAKESPEARE) as f:
        text = f.read()
    val = text[int(len(text) * 0.9):]
    speeches = [p.strip() for p in val.split("\n\n")[1:] if p.strip()]  # the first piece starts mid-speech
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([{"text": s} for s in speeches[:paragraphs]])})
