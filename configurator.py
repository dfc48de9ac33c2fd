"""
Settings in the nanoGPT manner: a script's settings are plain globals with defaults, and

    python train.py [config/some_file.py ...] [--key=value ...]

runs each config file (plain Python assigning some of those globals), then applies the
--key=value overrides (values are Python literals; a string setting takes the text as is).
An unknown key or a value of the wrong type stops the script with a message naming the
key and the closest valid ones. An int is accepted for a float setting; a setting whose
default is None takes any value; read_text() gives a text setting that says FILE:path the
file's contents. --help (or -h) prints the script's docstring and every
setting with its default and the comment beside it in the source. check() and choose() stop
a script on a bad value with one line that names the setting, the value and what is allowed.
"""

import argparse
import ast
import difflib
import re
import sys
from contextlib import contextmanager


def _set(settings, key, value, where):
    if key not in settings:
        close = difflib.get_close_matches(key, list(settings), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(settings))}"
        raise SystemExit(f"error: unknown setting {key!r} (from {where}){hint}")
    default = settings[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if default is not None and type(value) is not type(default):
        raise SystemExit(f"error: setting {key!r} (from {where}) must be a {type(default).__name__} "
                         f"like its default {default!r}, got {value!r} ({type(value).__name__})")
    settings[key] = value


def print_help(settings, script):
    """The script's docstring, then each setting as `--key=default  # the comment in its source`."""
    comments = {}
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


def check(ok, key, value, allowed):
    """Stop with one line unless ok: the setting, its value and what is allowed."""
    if not ok:
        raise SystemExit(f"error: setting {key!r} is {value!r}; allowed: {allowed}")


def choose(key, value, options):
    """check() that value is one of options."""
    check(value in options, key, value, " | ".join(map(str, options)))


def check_device(device):
    """check() the device setting of any script."""
    check(device in ("auto", "cpu", "cuda") or device.startswith("cuda:"), "device", device, "auto | cpu | cuda | cuda:N")


@contextmanager
def user_errors(suffix=""):
    """Inside it, what a user's input can cause (a missing file or model, a corrupt checkpoint, a
    missing optional package: OSError, ValueError, ImportError) stops the script with its message
    on one line, plus suffix, and exit code 1: no traceback."""
    try:
        yield
    except (OSError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}{suffix}") from None


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


def configure(settings, argv):
    """Apply config files and --key=value arguments to settings (name -> default), in order.
    --help or -h prints the calling script's settings and exits."""
    settings = dict(settings)
    if "--help" in argv or "-h" in argv:
        print_help(settings, sys.modules[sys._getframe(1).f_globals["__name__"]])
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
            try:
                source = open(arg).read()
            except OSError as e:
                raise SystemExit(f"error: cannot read config file {arg!r} ({e.strerror}); "
                                 f"arguments are config files or --key=value") from e
            namespace = {}
            exec(source, namespace)
            for key, value in namespace.items():
                if not key.startswith("_") and isinstance(value, (int, float, bool, str, type(None), tuple)):
                    _set(settings, key, value, arg)
    return settings


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the data/ scripts, reporting a bad argument like every other script here:
    one line naming it, exit code 1 (argparse's own prints the usage and exits 2)."""

    def error(self, message):
        raise SystemExit(f"error: {message} (see --help)")
