"""``loadmaster report``: write the offline HTML report of a run from the history.

Runs in the client. Reads the history database (never writes to it) and writes
one HTML file. Does not run anything; see ``report/html.py`` for the page.
"""

from __future__ import annotations

import argparse
import os
import sys

from loadmaster.errors import LoadmasterError

NAME = "report"
HELP = "write an offline HTML report (per-task memory, node memory over time, waste) of a run"
DEFAULT_OUTPUT = "loadmaster-report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--history``, ``--run`` (repeatable) and ``-o``."""
    parser.add_argument(
        "--history",
        metavar="PATH",
        help="history database (default: $LOADMASTER_HISTORY or the user data directory)",
    )
    parser.add_argument(
        "--run",
        metavar="ID",
        type=int,
        action="append",
        dest="runs",
        help="run to report (default: the latest); repeat to put several runs on one page",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default=DEFAULT_OUTPUT,
        help=f"HTML file to write (default: ./{DEFAULT_OUTPUT})",
    )


def run(args: argparse.Namespace) -> int:
    """Write the report; return 0, or 2 when the history or the run cannot be read."""
    from loadmaster.plan.history import History
    from loadmaster.report.html import load_runs, run_notes, write_report

    if args.history and args.history != ":memory:" and not os.path.exists(args.history):
        print(
            f"loadmaster report: no history at {args.history}; run some tasks with "
            f"--history {args.history} first",
            file=sys.stderr,
        )
        return 2
    try:
        history = History(args.history)
    except LoadmasterError as exc:
        print(f"loadmaster report: {exc}", file=sys.stderr)
        return 2
    try:
        runs = load_runs(history, args.runs)
        path = write_report(args.output, runs, history_path=history.path)
    except LoadmasterError as exc:
        print(f"loadmaster report: {exc}", file=sys.stderr)
        return 2
    finally:
        history.close()
    n = sum(len(r.reports) for r in runs)
    ids = ", ".join(str(r.run_id) for r in runs)
    print(f"report of run {ids} ({n} task reports) written to {path}")
    for r in runs:
        for note in run_notes(r.info, len(r.reports)):
            print(f"run {r.run_id}: {note}")
    return 0

