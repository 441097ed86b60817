"""The command line shared by the entry points: usage errors as one line on stderr with
exit status 2 (no traceback), and a --help that lists the flags a command reads and the
fields of its config file with their defaults, exit status 0.

    app.run(main, flags_parser=usage.parser("experiments.train", modules, config_flag="config"))
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from absl import flags

USAGE_ERROR = 2  # exit status of a usage error (argparse's and absl's convention)
HELP_ARGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def fail(message: str, prog: str | None = None) -> NoReturn:
    """Prints `error: message` once on stderr, with where the flags are listed, and exits 2."""
    hint = f" (`python -m {prog} --help` lists the flags)" if prog else ""
    print(f"error: {message}{hint}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def _unknown_field(e: BaseException, argv: Sequence[str], config_flag: str) -> str:
    """config_flags' KeyError/AttributeError for a field that does not exist, as one line:
    the flag, the field and the nearest name (its message is "'key'\\nDid you mean ...")."""
    while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(...))
        e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    key, _, rest = text.partition("\n")
    key = key.strip().strip("'\"")
    near = re.search(r'Did you mean "([^"]+)"', rest)
    flag = next(
        (a.split("=")[0] for a in argv if a.startswith(f"--{config_flag}.") and key in a), None
    )
    hint = f'; did you mean "{near.group(1)}"?' if near else ""
    return f"{flag or '--' + config_flag}: no such config field {key!r}{hint}"


def _flattened(config, prefix: str) -> list[tuple[str, object]]:
    out = []
    for key in sorted(config.keys()):
        value = config[key]
        if hasattr(value, "keys") and not isinstance(value, dict | type(None)):
            out += _flattened(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def config_help(config_flag: str, spec: str | None, default_spec: str | None) -> str:
    """The fields of config file `spec` ("path[:arg]"), one `--flag.field=default` a line."""
    from experiments.sweeping import grid

    spec = spec or default_spec
    if spec is None:
        return f"Add --{config_flag}=<file> to --help to list that file's fields and defaults."
    path, _, arg = spec.partition(":")
    try:
        config = grid.load_config_file(path, arg or None)
    except Exception as e:  # noqa: BLE001 - help must print whatever the file does
        return f"(could not load {spec} to list its fields: {e})"
    lines = [f"Fields of {spec} (override any with --{config_flag}.<field>=<value>):"]
    lines += [f"  --{config_flag}.{k}={v!r}" for k, v in _flattened(config, "")]
    return "\n".join(lines)


def print_help(
    argv: Sequence[str], doc: str, modules: Sequence[str], config_flag: str | None,
    default_spec: str | None,
) -> None:  # fmt: skip
    """The command's docstring, its flags (those `modules` define) and its config's fields."""
    print((doc or "").strip() + "\n\nFlags:")
    by_module = flags.FLAGS.flags_by_module_dict()
    if "--helpfull" in argv:
        print(flags.FLAGS.get_help(include_special_flags=False))
    else:
        for module in modules:
            # A module run with `python -m` registers its flags under its file's path.
            path = "/" + module.replace(".", "/") + ".py"
            for key in by_module:
                if key == module or key.endswith(path):
                    print(flags.FLAGS.module_help(key))
    if config_flag:
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{config_flag}=")), None)
        print("\n" + config_help(config_flag, spec, default_spec))


def parser(
    prog: str,
    doc: str,
    modules: Sequence[str] = (),
    config_flag: str | None = None,
    default_spec: str | None = None,
):
    """An absl `flags_parser`: --help prints `print_help` and exits 0; an unknown flag, a
    bad value or an unknown config field exits 2 with one line naming it."""

    def parse(argv: list[str]) -> list[str]:
        if any(a in HELP_ARGS for a in argv[1:]):
            print_help(argv, doc, modules, config_flag, default_spec)
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:  # unknown flag, a value that does not parse, a missing flag
            fail(str(e), prog)
        except (AttributeError, KeyError) as e:  # config_flags: a field that does not exist
            if not config_flag:
                raise
            fail(_unknown_field(e, argv, config_flag), prog)

    return parse
