"""``loadmaster reserve``: run any program under a reservation in the node's memory ledger.

Runs in its own process (the command line). Reserves memory in the ledger
(:mod:`loadmaster.node.ledger.book`; blocking, in FIFO order with every other
waiter on the node), starts the command as a child with the same stdin, stdout,
stderr and environment, tells the ledger which process tree uses the
reservation, waits for the child and releases. It does not measure or limit the
command's memory: a command that uses more than it reserved is not stopped.

Exit status: the command's own; ``128 + N`` when it was killed by signal ``N``;
:data:`EXIT_TIMEOUT` (75, ``EX_TEMPFAIL``) when the reservation did not fit in
``--timeout``; :data:`EXIT_LEDGER` (78, ``EX_CONFIG``) when the ledger cannot be
used or the request can never fit; 127 / 126 when the command is not found /
not executable; 2 for a bad argument.

Signals: SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are passed on to the command.
SIGINT and SIGQUIT are ignored while the command runs (a terminal sends them
to the whole foreground group, so the command gets them anyway). While it still
waits for the reservation, SIGTERM and SIGINT withdraw the request cleanly.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from types import FrameType

from loadmaster.commands.argv import allow_dash_values
from loadmaster.errors import InvalidSpec, LedgerError, LedgerTimeout

NAME = "reserve"
HELP = "run a command under a memory reservation in this node's ledger"

EXIT_TIMEOUT = 75
"""Exit status when the reservation did not fit within ``--timeout`` (sysexits EX_TEMPFAIL)."""

EXIT_LEDGER = 78
"""Exit status when the ledger is unusable or the request can never fit (EX_CONFIG)."""

FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--memory``, ``--timeout``, ``--label``, ``--ledger`` and the command."""
    parser.add_argument(
        "--memory", "-m", required=True, metavar="SIZE", help='memory to reserve, e.g. "4GiB"'
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        help=f'give up when it does not fit in time, e.g. "90s", "10m" (exit {EXIT_TIMEOUT})',
    )
    parser.add_argument("--label", default="", help="shown in `loadmaster ledger` (default: CMD)")
    parser.add_argument(
        "--ledger",
        metavar="DIR",
        help="ledger directory (default: $LOADMASTER_LEDGER, else /dev/shm/loadmaster-UID)",
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    # "--memory -1GiB" reaches parse_size, which says it is negative (not argparse's
    # "expected one argument").
    allow_dash_values(parser, "--memory", "-m", "--timeout", "--label", "--ledger", stop_at_positional=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    """Reserve, run the command, release; return the exit status described above."""
    from loadmaster.node.ledger.book import MemoryLedger
    from loadmaster.sizes import parse_duration, parse_size

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("loadmaster reserve: no command given; use: reserve --memory 4GiB -- CMD ...",
              file=sys.stderr)
        return 2
    try:
        nbytes = parse_size(args.memory, what="--memory")
        timeout_s = None if args.timeout is None else parse_duration(args.timeout, what="--timeout")
    except InvalidSpec as exc:
        print(f"loadmaster reserve: {exc}", file=sys.stderr)
        return 2
    label = args.label or " ".join(cmd)[:80]

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        ledger = MemoryLedger(args.ledger)
        reservation = ledger.reserve(nbytes, timeout_s=timeout_s, label=label)
    except LedgerTimeout as exc:
        print(f"loadmaster reserve: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except LedgerError as exc:
        print(f"loadmaster reserve: {exc}", file=sys.stderr)
        return EXIT_LEDGER
    finally:
        signal.signal(signal.SIGTERM, previous)

    with reservation:
        try:
            child = subprocess.Popen(cmd)
        except FileNotFoundError:
            print(f"loadmaster reserve: command not found: {cmd[0]!r}", file=sys.stderr)
            return 127
        except PermissionError:
            print(f"loadmaster reserve: cannot execute {cmd[0]!r}: permission denied",
                  file=sys.stderr)
            return 126
        reservation.track(child.pid)

        def forward(signum: int, frame: FrameType | None) -> None:
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass

        saved = {sig: signal.signal(sig, forward) for sig in FORWARDED}
        saved[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        saved[signal.SIGQUIT] = signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        try:
            returncode = child.wait()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
    return returncode if returncode >= 0 else 128 - returncode
