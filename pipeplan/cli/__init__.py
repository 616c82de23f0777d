"""The ``pipeplan`` command line. Each subcommand lives in its own module with ``register(subparsers)``.

Heavy libraries (matplotlib, ortools, torch) are imported inside the handlers so ``--help`` is quick.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import USER_ERRORS

# Modules that each add one or more subcommands, in the order --help lists them.
COMMAND_MODULES = ["schedule", "simulate", "optimize", "export", "validate", "probe", "charts", "presets"]


def one_line(message: str) -> str:
    """``message`` with every character that is not printable escaped: errors quote what the user gave
    (a field name, a flag's value), and a newline or carriage return in it must not start a second line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def _version() -> str:
    """The installed distribution's version, or the source tree's when run from a checkout."""
    from importlib import metadata

    try:
        return metadata.version("pipeplan")
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="pipeplan",
        description="Plan, simulate and validate pipeline-parallel training schedules.",
    )
    parser.add_argument("--version", action="version", version=f"pipeplan {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # A name the terminal's encoding cannot show is printed escaped, never a UnicodeEncodeError.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as err:
        print(f"pipeplan {args.command}: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `pipeplan ... --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("pipeplan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
