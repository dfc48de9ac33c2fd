"""
Settings in the nanoGPT manner: a script's settings are plain globals with defaults, and

    python train.py [config/some_file.py ...] [--key=value ...]

runs each config file (plain Python assigning some of those globals; it sees its own path as
__file__, so it can exec a shared file beside it), then applies the
--key=value overrides (values are Python literals; a string setting takes the text as is).
An unknown key or a value of the wrong type stops the script with a message naming the
key and the closest valid ones. An int is accepted for a float setting; a setting whose
default is None takes any value; read_text() gives a text setting that says FILE:path the
file's contents. --help (or -h) prints the script's docstring and every
setting with its default and the comment beside it in the source. check() and choose() stop
a script on a bad value with one line that names the setting, the value and what is allowed;
resolve_device() does it for a device or dtype this machine does not have.
"""

import argparse
import ast
import difflib
import os
import re
import sys
from contextlib import contextmanager, nullcontext


def _set(settings, key, value, where):
    if key not in settings:
        close = difflib.get_close_matches(key, list(settings), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(settings))}"
        raise SystemExit(f"error: unknown setting {key!r} (from {where}){hint}")
    default = settings[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if default is not None and type(value) is not type(default):
        kind = type(default).__name__
        raise SystemExit(f"error: setting {key!r} (from {where}) must be {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
                         f"like its default {default!r}, got {value!r} ({type(value).__name__})")
    settings[key] = value


def print_help(settings, script, comments=None):
    """The script's docstring, then each setting as `--key=default  # the comment in its source`
    (or in comments, for settings defined elsewhere)."""
    comments = dict(comments or {})
    with open(script.__file__) as f:
        for line in f:
            m = re.match(r"\s*(\w+) = .*?(?:  # (.*))?$", line)
            if m and m.group(1) in settings and m.group(1) not in comments:
                comments[m.group(1)] = m.group(2) or ""
    print((script.__doc__ or "").strip() + "\n")
    print("settings (apply config files and --key=value in order; values are Python literals, text for strings):")
    for key, default in settings.items():
        comment = f"  # {comments[key]}" if comments.get(key) else ""
        shown = repr(default) if isinstance(default, str) and not default.isprintable() else default  # e.g. "\n"
        print(f"  --{key}={shown}{comment}")


def dataclass_settings(classes, names):
    """A script's settings made from dataclass fields: ({setting: default}, {setting: comment}),
    the comment being the one beside the field in its class's source. names: {field: setting}
    for fields that take another name (the others keep theirs); a tuple default becomes
    comma-separated text. Classes share a field only through a common base class (one default)."""
    import dataclasses
    import inspect
    defaults, comments = {}, {}
    for cls in classes:
        source = "".join(inspect.getsource(c) for c in cls.__mro__[:-1])  # its fields' lines and its bases' (not object's)
        for line in source.splitlines():
            m = re.match(r"\s*(\w+): .*? = .*?(?:  # (.*))?$", line)
            if m and m.group(2):
                comments.setdefault(names.get(m.group(1), m.group(1)), m.group(2).strip())
        for f in dataclasses.fields(cls):
            default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
            defaults.setdefault(names.get(f.name, f.name), default)
    return defaults, comments


def dataclass_from_settings(cls, settings, names):
    """cls(**fields) with each field's value from its setting (named as in dataclass_settings). A
    value outside cls.CHOICES (each item of a comma-separated one) stops with one line naming the
    setting; cls's own checks (ValueError) stop with theirs."""
    import dataclasses
    for key, options in getattr(cls, "CHOICES", {}).items():
        name = names.get(key, key)
        check(all(v in options for v in str(settings[name]).split(",")), name, settings[name], " | ".join(options))
    with user_errors():
        return cls(**{f.name: settings[names.get(f.name, f.name)] for f in dataclasses.fields(cls)})


def check(ok, key, value, allowed):
    """Stop with one line unless ok: the setting, its value and what is allowed."""
    if not ok:
        raise SystemExit(f"error: setting {key!r} is {value!r}; allowed: {allowed}")


def choose(key, value, options):
    """check() that value is one of options."""
    check(value in options, key, value, " | ".join(map(str, options)))


def resolve_device(device, dtype="auto", gpu_fallback="float32"):
    """(device, device type, dtype, autocast context) that this machine can run, from the settings
    device (auto | cpu | cuda | cuda:N | mps) and dtype (auto | float32 | bfloat16 | float16),
    before any weights are loaded or files written. auto: the first GPU if there is one, else the
    CPU; float32 on the CPU and MPS, bfloat16 on a GPU that supports it, else gpu_fallback (train.py
    uses float16, with a gradient scaler). A device or dtype the machine cannot honour stops the
    script with one line that names what it has."""
    import torch
    check(device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", device) is not None, "device", device,
          "auto | cpu | cuda | cuda:N | mps")
    choose("dtype", dtype, ("auto", "float32", "bfloat16", "float16"))
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    has_mps = torch.backends.mps.is_available()
    here = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(n_gpu)] + ["mps"] * has_mps)
    if device == "auto":
        device = "cuda" if n_gpu else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and int(device[5:] or 0) >= n_gpu:
        why = "no CUDA GPU" if n_gpu == 0 else f"{n_gpu} CUDA GPU{'s' * (n_gpu > 1)}"
        build = "" if torch.backends.cuda.is_built() else f" (this torch, {torch.__version__}, is built without CUDA)"
        raise SystemExit(f"error: setting 'device' is {device!r}, but this machine has {why}{build}; available: {here}")
    if kind == "mps" and not has_mps:
        raise SystemExit(f"error: setting 'device' is 'mps', but this machine has no MPS (Apple GPU) device; available: {here}")
    if dtype == "auto":
        dtype = "float32" if kind != "cuda" else "bfloat16" if torch.cuda.is_bf16_supported() else gpu_fallback
    if kind == "cpu" and dtype == "float16":
        raise SystemExit("error: setting 'dtype' is 'float16', which is for GPUs; on the CPU use float32 (or bfloat16)")
    if kind == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise SystemExit(f"error: setting 'dtype' is 'bfloat16', which this GPU ({torch.cuda.get_device_name(device)}) "
                         f"cannot run; use float16 or float32")
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device_type=kind, dtype=getattr(torch, dtype))
    return device, kind, dtype, ctx


def peak_flops(device):
    """Dense bf16 peak FLOP/s of a known GPU, for MFU; None when unknown (CPU included)."""
    import torch
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
             "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}
    return next((v for k, v in table.items() if k in name), None)


@contextmanager
def user_errors(suffix=""):
    """Inside it, what a user's input can cause (a missing file or model, a corrupt checkpoint, a
    missing optional package: OSError, ValueError, ImportError) stops the script with its message
    on one line, plus suffix, and exit code 1: no traceback."""
    try:
        yield
    except (OSError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}{suffix}") from None


@contextmanager
def compile_errors(enabled):
    """With compile=True, torch.compile builds its kernels at the first call of the model (for
    each of eval and training); inside this, a failure there (no working C++ compiler, an
    unsupported platform) stops the script with one line naming the setting."""
    try:
        yield
    except Exception as e:
        if enabled and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            why = (str(e).strip().splitlines() or [""])[0][:300]
            raise SystemExit(f"error: setting 'compile' is True, but torch.compile failed on this machine "
                             f"({type(e).__name__}: {why}); run with --compile=False") from None
        raise


def read_text(key, value):
    """A text setting that may name a file (FILE:path): the text itself, or the file's contents.
    A file that cannot be read stops the script with one line."""
    if not value.startswith("FILE:"):
        return value
    try:
        with open(value[5:], encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise SystemExit(f"error: {key}={value!r}: there is no file {value[5:]!r} or it cannot be read ({e.strerror})") from None


def configure(settings, argv, comments=None):
    """Apply config files and --key=value arguments to settings (name -> default), in order.
    --help or -h prints the calling script's settings (comments: {key: help} of settings whose
    line is not in the script) and exits."""
    settings = dict(settings)
    if "--help" in argv or "-h" in argv:
        print_help(settings, sys.modules[sys._getframe(1).f_globals["__name__"]], comments)
        raise SystemExit(0)
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise SystemExit(f"error: expected --key=value, got {arg!r}")
            try:  # a string setting takes the text as given (--start=123, --seq_lens=256,512)
                value = text if isinstance(settings.get(key), str) else ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare string, which the type check below judges
            _set(settings, key, value, arg)
        else:
            for key, value in read_config(arg, "; arguments are config files or --key=value").items():
                _set(settings, key, value, arg)
    return settings


def read_config(path, hint=""):
    """{setting: value} of what a config file assigns (plain values only), running it with its own
    path as __file__, so that it can build on a file beside it. An unreadable file stops the script
    with one line (plus hint)."""
    try:
        with open(path) as f:
            source = f.read()
    except OSError as e:
        raise SystemExit(f"error: cannot read config file {path!r} ({e.strerror}){hint}") from None
    namespace = {"__file__": os.path.abspath(path)}
    exec(source, namespace)
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None), tuple))}


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the data/ scripts, reporting a bad argument like every other script here:
    one line naming it, exit code 1 (argparse's own prints the usage and exits 2)."""

    def error(self, message):
        raise SystemExit(f"error: {message} (see --help)")
