"""``aiida-deeph`` command line (pure core: subcommands import aiida only where they need a profile).

Each subcommand lives in its own module ``aiida_deeph.cli.<name>`` exposing ``register(subparsers)``,
which adds a parser and sets ``func`` (a callable taking the parsed args and returning an exit code).
Errors that are the user's (bad files, bad options) are raised as ``CliError`` or one of the
project's ValueError subclasses and printed as one line, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("convert", "setup", "record", "info", "overlap", "train", "predict", "evaluate", "bands", "dos", "optics",
               "report")


from aiida_deeph.cli.errors import CliError  # noqa: E402  (re-exported: subcommands raise it)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiida-deeph",
        description="OpenMX Hamiltonian databases and DeepH-2 models (the AiiDA parts live under `verdi`).",
    )
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"aiida_deeph.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"aiida_deeph.cli.{name}":
                continue  # subcommand not available in this build
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("aiida-deeph: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError, KeyError) as exc:
        if args.traceback:
            raise
        code = getattr(exc, "code", 1)
        message = str(exc) if not isinstance(exc, KeyError) else f"missing key {exc}"
        print(f"aiida-deeph {args.command}: error: {message}", file=sys.stderr)
        return code if isinstance(code, int) and code > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
