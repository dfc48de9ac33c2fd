"""
Look at DiffLoRA's attention: for one prompt, per chosen layer, one head's positive map A1,
its lambda-scaled negative map lambda*A2 and the differential map A1 - lambda*A2, beside the
base model's map. Prints where the last prompt token's attention goes (mass on the first
token, on a marked span such as a needle, on the query line, on the rest), layer by layer.

    python analysis/draw_attention.py --out_dir=out-needle-difflora                      # the built-in needle prompt
    python analysis/draw_attention.py --out_dir=out-needle-difflora --start=FILE:prompt.txt --needle="a phrase in it"
    python analysis/draw_attention.py --init_from=gpt2                                    # a plain model: its maps only
    python analysis/draw_attention.py --init_from=smollm2 --layers=0,15,-1                # SmolLM2, offline
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from runs import load_trained, trained_config  # noqa: E402
from analysis.attention_maps import attention_maps, attention_regions, region_mass  # noqa: E402
from configurator import check, configure, resolve_device, read_text, user_errors  # noqa: E402
from model import GPT  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402

# -----------------------------------------------------------------------------
out_dir = "out-needle-difflora"
init_from = "out_dir"  # 'out_dir': the checkpoint there; or a base model (gpt2, smollm2, a folder, a .gguf file, a hub id)
base = ""  # the base model to compare with ('' = the adapter's own base; none for a full fine-tune)
start = ("The river was calm that morning. The secret code of falcon is 4821. People walked slowly along the "
         "old road. The secret code of maple is 7302. A few clouds drifted over the hills.\n"
         "Question: what is the secret code of falcon?\nAnswer: The secret code of falcon is")
needle = "The secret code of falcon is 4821."  # a substring of the prompt to mark ('' = none)
layers = "0,-1"  # comma-separated layer indices (negative counts from the end)
head = 0
out = ""  # the PNG ('' = attention.png in out_dir, or in out-attention/ for a plain model)
device = "auto"
# -----------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
config = configure(config, sys.argv[1:])
globals().update(config)
try:
    layer_list = [int(x) for x in layers.split(",")]
except ValueError:
    check(False, "layers", layers, "comma-separated layer indices such as 0,5,-1")
check(head >= 0, "head", head, "an integer >= 0, below the model's n_head")
device = resolve_device(device)[0]
if init_from == "out_dir" and not os.path.isdir(out_dir):
    raise SystemExit(f"error: out_dir {out_dir!r} does not exist (from {os.getcwd()}): train into it first, "
                     f"or look at a plain model with --init_from=smollm2")
start = read_text("start", start)
out = out or os.path.join(out_dir if init_from == "out_dir" else "out-attention", "attention.png")
run = out_dir if init_from == "out_dir" else init_from
with user_errors():  # the shape and the prompt from the config files alone: a mistake costs no loading
    shape, name = trained_config(run, base)
    enc = get_tokenizer(name)
check(all(-shape.n_layer <= i < shape.n_layer for i in layer_list), "layers", layers, f"indices in -{shape.n_layer}..{shape.n_layer - 1}")
check(head < shape.n_head, "head", head, f"0..{shape.n_head - 1}")
text_ids = enc.encode(start)
n_bos = int(enc.bos is not None)  # Llama 3 starts every text with its bos token, where much attention sinks
ids = [enc.bos] * n_bos + text_ids
if not 0 < len(ids) <= shape.block_size:
    raise SystemExit(f"error: the prompt has {len(ids)} tokens; it must have 1 to {shape.block_size}")
with user_errors():
    model = load_trained(run, base).eval().to(device)
    base_name = base or (model.name_or_path if model.adapter is not None else "")
    base_model = GPT.from_pretrained(base_name).eval().to(device) if base_name else None
_, offsets = enc.decode_with_offsets(text_ids)  # character offset where each token of the text starts
ends = offsets[1:] + [len(start)]


def token_span(c0, c1):
    """Tokens overlapping the characters [c0, c1)."""
    hit = [i + n_bos for i, (a, b) in enumerate(zip(offsets, ends)) if a < c1 and b > c0]
    return (hit[0], hit[-1] + 1) if hit else None


needle_span = None
if needle:
    if needle not in start:
        raise SystemExit(f"error: --needle {needle!r} does not occur in the prompt")
    c = start.index(needle)
    needle_span = token_span(c, c + len(needle))
prompt = start.rstrip("\n")  # a file's last line may end with a newline
query_span = token_span(prompt.rindex("\n") + 1, len(prompt)) if "\n" in prompt else None
T = len(ids)
regions = attention_regions(T, needle_span, query_span)
idx = torch.tensor([ids], device=device)
maps = attention_maps(model, idx)
base_maps = attention_maps(base_model, idx) if base_model is not None else None



def named_maps(layer):
    """{label: map (B, H, T, T)} to show for one layer."""
    a1, neg, lam = maps[layer]
    shown = {"base": base_maps[layer][0]} if base_maps else {}
    if neg is None:
        shown["A"] = a1
    else:
        shown.update({"A1": a1, "lambda*A2": neg, "A1-lambda*A2": a1 - neg})
    return shown


# where the last token's attention goes, averaged over heads, layer by layer
names = ("first", "needle", "query", "rest")
print(f"# python analysis/draw_attention.py {' '.join(sys.argv[1:])}")
print(f"prompt: {T} tokens; needle tokens {needle_span}, query tokens {query_span}")
print(f"mass of the last token's attention on {' / '.join(names)}, mean over heads:")
print(f"{'layer':>5} {'lambda':>7}  " + "".join(f"{label:>26}" for label in named_maps(0)))
for layer in range(len(maps)):
    cells = []
    for a in named_maps(layer).values():
        m = region_mass(a[0, :, -1], regions)  # (H,) per region
        cells.append(" ".join(f"{m[n].mean().item():5.2f}" for n in names))
    print(f"{layer:>5} {maps[layer][2]:>7.3f}  " + "".join(f"{c:>26}" for c in cells))

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

chosen = [i % len(maps) for i in layer_list]
n_cols = len(named_maps(0))
fig, axes = plt.subplots(len(chosen), n_cols, figsize=(3.6 * n_cols, 3.4 * len(chosen)), squeeze=False)
for r, layer in enumerate(chosen):
    for c, (label, a) in enumerate(named_maps(layer).items()):
        a = a[0, head].cpu()  # (T, T)
        diverging = label.startswith(("lambda", "A1-"))  # can be negative: colours centred on 0
        lim = a.abs().max().item() or 1.0
        ax = axes[r, c]
        im = ax.imshow(a, cmap="RdBu_r" if diverging else "viridis", vmin=-lim if diverging else 0, vmax=lim)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
        lam = f" (lambda {maps[layer][2]:.2f})" if label == "lambda*A2" else ""
        ax.set_title(f"layer {layer} head {head}: {label}{lam}", fontsize=9)
        ax.set(xlabel="key position", ylabel="query position")
        for span, name, colour in ((needle_span, "needle", "orange"), (query_span, "query", "limegreen")):
            if span:  # key columns of the marked regions
                ax.axvspan(span[0] - 0.5, span[1] - 0.5, color=colour, alpha=0.2, label=f"{name} keys")
        if r == 0 and c == 0 and (needle_span or query_span):
            ax.legend(loc="lower left", fontsize=7)
fig.tight_layout()
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
fig.savefig(out, dpi=100)
print(f"wrote {out}")
