"""
A train.py run's files, apart from the training: the adapter file (exactly the trained tensors,
with the method, its configuration and the base model's identity as metadata) and loading one
onto its base model, the learning curves' picture, and load_trained, which turns a run's out_dir
(or any base model's name) into a model to run. train.py writes them; sample.py and the
analysis scripts read them.
"""

import json
import os
import warnings
from dataclasses import asdict

import torch

from checkpoints import ALIASES, checkpoint_path, file_sha256, save_atomically
from difflora import APPLY, DiffLoRAConfig, LoRAConfig, adapted_modules, set_lambda_ramp
from model import GPT, pretrained_config


def load_trained(path, base=""):
    """A model to run: a train.py out_dir (adapter.safetensors on its base model, or on `base` if
    given; or a full fine-tune, which is a plain checkpoint), or any name or directory that
    GPT.from_pretrained takes."""
    _, name = trained_config(path, base)
    adapter = os.path.join(path, "adapter.safetensors")
    return load_adapter(GPT.from_pretrained(name), adapter) if os.path.exists(adapter) else GPT.from_pretrained(path)


def trained_config(path, base=""):
    """(GPTConfig, name) of the model load_trained(path, base) gives, read from config files alone
    (no weights), so that a script checks its settings before loading: for a run's adapter, its
    base's (base, or the one its file records), whose name is returned; for anything else, path's."""
    adapter = os.path.join(path, "adapter.safetensors")
    if os.path.isdir(path) and os.path.exists(adapter):
        recorded = read_adapter(adapter, tensors=False)[2]["name_or_path"]
        try:
            return pretrained_config(base or recorded), base or recorded
        except (OSError, ValueError) as e:
            if base:
                raise
            why = OSError if isinstance(e, OSError) else ValueError
            raise why(f"the adapter in {path} was trained on the base model {recorded!r}, which cannot be loaded "
                      f"here ({e}); pass --base=FOLDER_OR_HUB_ID of a base model of the same shape") from e
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        raise ValueError(f"no checkpoint in {path!r}: expected adapter.safetensors or model.safetensors there. "
                         f"Train first (python train.py --out_dir={path}) or pass a base model such as gpt2")
    return pretrained_config(path), path


SHAPE_KEYS = ("n_layer", "n_embd", "n_head", "vocab_size", "n_kv_head", "head_dim", "family")  # an adapter fits only these


def base_identity(model):
    """What an adapter file records of its base: where it came from (for a GGUF file, also a hash
    of its content: one name can stand for another file on another machine) and its shape."""
    c = model.config
    ident = dict(name_or_path=str(model.name_or_path), n_layer=c.n_layer, n_embd=c.n_embd, n_head=c.n_head,
                 vocab_size=c.vocab_size, n_kv_head=c.n_kv_head, head_dim=c.head_dim, family=c.family)
    if model.name_or_path in ALIASES or str(model.name_or_path).endswith(".gguf"):
        ident["gguf_sha256"] = file_sha256(checkpoint_path(model.name_or_path))
    return ident


def trainable_state_dict(model):
    """Exactly what was trained: the tensors that require grad (adapters, lambda vectors, gains)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, path, step=None):
    """Write the trainable tensors to a safetensors file, with the method, its configuration, the
    base model's identity and the training step (which sets a lambda ramp when loaded) as
    metadata. Atomic: a crash mid-write leaves the old file intact."""
    method, config = model.adapter
    from safetensors.torch import save_file
    metadata = {"method": method, "config": json.dumps(asdict(config)), "base": json.dumps(base_identity(model))}
    if step is not None:
        metadata["step"] = str(step)
    tensors = {k: v.contiguous().cpu() for k, v in trainable_state_dict(model).items()}
    save_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_adapter(path, tensors=True):
    """(method, config, base identity, tensors, step) of an adapter file (tensors None when not asked
    for: the metadata alone; step None when the file records none)."""
    from safetensors.torch import load_file
    from safetensors import safe_open
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        weights = load_file(path) if tensors else None
    except Exception as e:
        raise ValueError(f"could not read adapter file {path}: truncated or corrupt ({type(e).__name__}: {e})") from e
    if meta.get("method") not in ("difflora", "lora"):
        raise ValueError(f"{path} is not an adapter file of this project (no difflora/lora method in its metadata)")
    cls = DiffLoRAConfig if meta["method"] == "difflora" else LoRAConfig
    step = int(meta["step"]) if "step" in meta else None
    return meta["method"], cls(**json.loads(meta["config"])), json.loads(meta["base"]), weights, step


def load_adapter(model, path):
    """Load an adapter file onto a base GPT (applying its method and configuration), or onto a
    model already converted with the same method and configuration. Returns the model."""
    method, config, base, tensors, step = read_adapter(path)
    ours = base_identity(model)
    for key in SHAPE_KEYS:
        if base.get(key, ours[key]) != ours[key]:  # (files of GPT-2 adapters before the Llama family lack some keys)
            raise ValueError(f"adapter {path} was trained on a base model with {key}={base[key]} "
                             f"({base['name_or_path']}), this model has {key}={ours[key]} ({ours['name_or_path']})")
    if base["name_or_path"] != ours["name_or_path"]:
        warnings.warn(f"adapter {path} was trained on {base['name_or_path']}, loading it onto {ours['name_or_path']} (same shape)")
    elif base.get("gguf_sha256", ours.get("gguf_sha256")) != ours.get("gguf_sha256"):
        warnings.warn(f"adapter {path} was trained on another file named {base['name_or_path']} (its content differs; "
                      f"same shape): its results may differ")
    if model.adapter is None:
        APPLY[method](model, config)
    elif model.adapter[0] != method:
        raise ValueError(f"adapter {path} holds a {method} adapter, but this model has a {model.adapter[0]} adapter")
    elif model.adapter[1] != config:
        raise ValueError(f"adapter {path} was saved with {config}, this model has {model.adapter[1]}")
    load_trainable_state_dict(model, tensors, f"adapter {path}")
    if getattr(config, "lambda_ramp", 0):
        if step is None:
            raise ValueError(f"adapter {path} has a lambda ramp but records no training step: save it with "
                             f"save_adapter(model, path, step=...)")
        set_lambda_ramp(model, step)  # the lambda the run had when it was saved
        if step < config.lambda_ramp:
            warnings.warn(f"adapter {path} was saved at step {step} of its {config.lambda_ramp}-step lambda ramp: its "
                          f"lambda is {step / config.lambda_ramp:.2f} times the learned one, not yet the paper's form")
    return model


def load_trainable_state_dict(model, tensors, source):
    """Copy tensors into exactly the parameters that require grad (the inverse of
    trainable_state_dict); any missing, extra or misshaped tensor is an error naming source."""
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{source} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}")
    if any(m.merged for m in adapted_modules(model)):
        raise ValueError("unmerge the model before loading adapter weights into it")
    with torch.no_grad():
        for name, t in tensors.items():
            if t.shape != params[name].shape:
                raise ValueError(f"{source}: tensor {name} has shape {tuple(t.shape)}, the model expects {tuple(params[name].shape)}")
            params[name].copy_(t)


def save_run(out_dir, model, state):
    """ckpt.pt: everything a resume needs, the trained tensors and `state` (optimiser, iteration,
    settings); beside it the file people use: adapter.safetensors, or for a full fine-tune a
    Hugging Face checkpoint. Each is written to a temporary file and renamed, so a crash never
    destroys the last one."""
    os.makedirs(out_dir, exist_ok=True)
    state = {"trainable": {n: t.cpu() for n, t in trainable_state_dict(model).items()}, **state}
    save_atomically(os.path.join(out_dir, "ckpt.pt"), lambda tmp: torch.save(state, tmp))
    if model.adapter is None:
        model.save_pretrained(out_dir)
    else:
        save_adapter(model, os.path.join(out_dir, "adapter.safetensors"), step=state.get("iter_num"))


def plot_curves(metrics, path, title):
    """curves.png of a run: the loss curves and, for a DiffLoRA run, lambda per layer over the
    iterations (metrics: train.py's, {"log": [...], "eval": [...]})."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ev = metrics["eval"]
    n_layer = len(ev[0]["lambda"]) if ev and ev[0]["lambda"] else 0  # lambdas: a DiffLoRA run's, per layer
    fig, axes = plt.subplots(1, 2 if n_layer else 1, figsize=(12 if n_layer else 6, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot([r["iter"] for r in metrics["log"]], [r["loss"] for r in metrics["log"]], alpha=0.3, label="train (batch)")
    ax.plot([r["iter"] for r in ev], [r["train"] for r in ev], "o-", label="train (eval)")
    ax.plot([r["iter"] for r in ev], [r["val"] for r in ev], "o-", label="val")
    ax.set(xlabel="iteration", ylabel="loss", title=title)
    ax.legend()
    if n_layer:
        ax = axes[0, 1]
        colours = plt.get_cmap("turbo")([0.05 + 0.9 * i / max(1, n_layer - 1) for i in range(n_layer)])  # any depth
        for layer, colour in enumerate(colours):
            ax.plot([r["iter"] for r in ev], [r["lambda"][layer] for r in ev], color=colour, label=f"layer {layer}")
        ax.set(xlabel="iteration", ylabel="lambda", title="lambda per layer")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
