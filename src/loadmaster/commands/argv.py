"""Let chosen options of a subcommand take a value that starts with ``-``.

Runs in the command-line process, while argparse parses. argparse reads any
word that starts with ``-`` (other than a plain negative number like ``-1``)
as an option, so ``loadmaster reserve --memory -1GiB`` used to fail with
argparse's "expected one argument" and never reached the size parser, whose
message says what is wrong ("'-1GiB' is negative"). :func:`allow_dash_values`
makes the subcommand's parser join such a value to its option first
(``--memory -1GiB`` -> ``--memory=-1GiB``, which argparse reads as the value),
so every value reaches its own checks.

This module does *not* cover: checking the values (``sizes.py`` and each
command), and it never touches the words after ``--`` or after the first word
that is not an option (a command's own arguments).
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Sequence
from typing import Any


def join_dash_values(argv: Sequence[str], options: Collection[str], *, stop_at_positional: bool) -> list[str]:
    """Return ``argv`` with each ``OPTION VALUE`` whose VALUE starts with ``-`` joined into one word.

    ``--long -v`` becomes ``--long=-v``; ``-s -v`` becomes ``-s-v``. Stops at
    ``--``, and with ``stop_at_positional`` at the first word that is neither an
    option nor an option's value (where a command and its own arguments start).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--" or (stop_at_positional and not word.startswith("-")):
            break
        if word in options and i + 1 < len(argv):
            value = argv[i + 1]
            if value.startswith("-") and value != "--":
                out.append(f"{word}={value}" if word.startswith("--") else word + value)
            else:
                out.extend((word, value))
            i += 2
            continue
        out.append(word)
        i += 1
    return out + list(argv[i:])


def allow_dash_values(parser: argparse.ArgumentParser, *options: str, stop_at_positional: bool = False) -> None:
    """Make ``parser`` accept values starting with ``-`` for ``options`` (their option strings).

    ``stop_at_positional``: for a parser whose first positional takes the rest
    of the line (``reserve ... CMD ...``), leave everything from there alone.

    Wraps the parser's ``parse_known_args`` (which the ``loadmaster`` command's
    subparser action calls) to :func:`join_dash_values` first.
    """
    parse = parser.parse_known_args
    wanted = frozenset(options)

    def parse_known_args(args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        if args is not None:
            args = join_dash_values(args, wanted, stop_at_positional=stop_at_positional)
        return parse(args, namespace)

    setattr(parser, "parse_known_args", parse_known_args)  # noqa: B010 - an instance hook, not a private field
