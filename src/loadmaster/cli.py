"""The ``loadmaster`` command: one subcommand per module in ``loadmaster.commands``.

Each module there defines ``NAME`` (the subcommand), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). This file
only dispatches, so subcommands can be added without touching each other.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules under loadmaster.commands, in the order `loadmaster --help` lists them.
SUBCOMMANDS = (
    "run",
    "monitor",
    "demo",
    "report",
    "history",
    "reserve",
    "ledger",
    "sandbox",
    "nodes",
    "deps",
    "cache",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every subcommand whose module is present."""
    parser = argparse.ArgumentParser(
        prog="loadmaster",
        description="Run many tasks on this machine, packed by what they really use.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"loadmaster.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"loadmaster.commands.{name}":
                continue
            raise
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loadmaster`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print("loadmaster: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
