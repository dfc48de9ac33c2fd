"""
Settings in the nanoGPT manner: a script's settings are plain globals with defaults, and

    python train.py [config/some_file.py ...] [--key=value ...]

runs each config file (plain Python assigning some of those globals), then applies the
--key=value overrides (values are Python literals; a string setting takes the text as is).
An unknown key or a value of the wrong type stops the script with a message naming the
key and the closest valid ones. An int is accepted for a float setting; a setting whose
default is None takes any value.
"""

import ast
import difflib


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


def configure(settings, argv):
    """Apply config files and --key=value arguments to settings (name -> default), in order."""
    settings = dict(settings)
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
