"""``loadmaster monitor -- CMD ...``: run one command under the monitor and print its report.

Runs in the client: starts an :class:`~loadmaster.Executor` (history
``":memory:"`` unless ``--history``), runs CMD as one task (argv, not through a
shell), waits, and prints what the command's whole process tree used — like
``/usr/bin/time -v``, but counting every descendant and with the peak taken
from the kernel where the node allows (the report names the method).

Where output goes: the command's stdout and stderr are captured by the
executor and replayed once it has finished. Without ``--json`` its stdout goes
to stdout and its stderr, then the report, to stderr (as ``time -v`` does).
With ``--json`` stdout carries only the JSON report (``TaskReport.as_dict()``
plus ``command``); the command's stdout and stderr both go to stderr.

The exit status is the command's; a command killed by signal N gives 128+N,
as shells do. A task that ran out of its allocation (``--memory``,
``--wall-time``) is killed and reported with ``outcome`` ``exhausted``.

This module does *not* cover: measurement itself (``node/``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

from loadmaster.errors import LoadmasterError

NAME = "monitor"
HELP = "run one command under the monitor and print what its whole process tree used"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--json``, ``--history``, limits, and the command after ``--``."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument(
        "--history",
        metavar="PATH",
        help="record the report in this history (default: none, an in-memory one)",
    )
    parser.add_argument("--category", help="category to record the task under (default: CMD)")
    parser.add_argument("--memory", metavar="SIZE", help='kill the command above SIZE, e.g. "1GiB"')
    parser.add_argument(
        "--wall-time", metavar="TIME", help='kill the command after TIME, e.g. "90s"'
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def exit_status(returncode: int) -> int:
    """Return a shell-style exit status: the code, or 128+N for a signal N."""
    if returncode < 0:
        return 128 + (-returncode)
    return min(returncode, 255)


def run(args: argparse.Namespace) -> int:
    """Run the command; return its exit status (2 for a usage error)."""
    import loadmaster
    from loadmaster.errors import CommandFailed, TaskFailed
    from loadmaster.report.summary import format_task_report

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "loadmaster monitor: no command; usage: loadmaster monitor -- CMD ...", file=sys.stderr
        )
        return 2
    resources: dict[str, Any] = {}
    if args.memory:
        resources["memory"] = args.memory
    if args.wall_time:
        resources["wall_time"] = args.wall_time
    history = args.history or ":memory:"
    try:
        # A measuring tool, like /usr/bin/time: the command runs here, unsandboxed
        # (`loadmaster sandbox` is the tool that confines a program).
        ex = loadmaster.Executor(history=history, label="loadmaster monitor", sandbox=False)
    except LoadmasterError as exc:
        print(f"loadmaster monitor: {exc}", file=sys.stderr)
        return 2
    stdout = stderr = ""
    error = ""
    returncode: int | None = None
    report = None
    with ex:
        try:
            future = ex.submit_command(cmd, category=args.category, resources=resources or None, cwd=os.getcwd())
        except (LoadmasterError, ValueError) as exc:
            print(f"loadmaster monitor: {exc}", file=sys.stderr)
            return 2
        try:
            result = future.result()
        except CommandFailed as exc:
            returncode, stdout, stderr, report = exc.returncode, exc.stdout, exc.stderr, exc.report
            error = str(exc)
        except TaskFailed as exc:
            report, error = exc.report, str(exc)
            if report is not None:
                returncode = report.exit_status
        else:
            returncode, stdout, stderr = result.returncode, result.stdout, result.stderr
        report = report or getattr(future, "report", None)

    out = sys.stderr if args.json else sys.stdout
    out.write(stdout)
    out.flush()
    sys.stderr.write(stderr)
    if args.json:
        doc: dict[str, Any] = {"command": cmd}
        if report is not None:
            doc.update(report.as_dict())
        else:
            doc["error"] = error
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        if error and (report is None or report.exhausted):
            print(f"loadmaster monitor: {error.splitlines()[0]}", file=sys.stderr)
        if report is not None:
            print(format_task_report(report, command=shlex.join(cmd)), file=sys.stderr)
    sys.stdout.flush()
    if returncode is None:
        return 1
    return exit_status(returncode)
