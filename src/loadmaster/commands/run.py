"""``loadmaster run FILE``: run one shell command per line, packed, with a closing summary.

Runs in the client: reads FILE (or stdin for ``-``), checks every line before
anything starts, submits each command to an :class:`~loadmaster.Executor`,
shows a progress bar on stderr (on a terminal only) and prints a per-category
table at the end. Writes, on request, each task's output under ``--logs DIR``
and the HTML report to ``--report PATH``; the history database is written by
the executor.

Where a command's output goes: its stdout and stderr are captured with its
result. With ``--stream`` (the default when stdout is a terminal and
``--json`` is not given), each line a command writes is also printed as it
comes, prefixed with its task's name (``[line 3 sort] ...``; stderr lines on
stderr), above the progress bar. A failed task's stderr tail is printed as it
fails; ``--logs DIR`` keeps every task's full output as ``DIR/line-NNNN.out``
and ``.err``.

The file's lines are either a shell command (run by ``/bin/sh -c``) or, when
the line starts with ``{``, a JSON object::

    {"command": "bwa mem ref.fa s1.fq", "category": "align",
     "resources": {"memory": "2GiB", "cores": 1}, "cwd": "/data", "env": {"X": "1"}}

``command`` is a string (shell) or a list of strings (argv). Blank lines and
lines starting with ``#`` are skipped.

This module does *not* cover: scheduling (the executor), the report page
(``report/html.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadmaster.commands.argv import allow_dash_values
from loadmaster.errors import InvalidSpec, LoadmasterError
from loadmaster.spec import Resources

NAME = "run"
HELP = "run the shell commands of FILE (one per line, or JSON lines), packed by what they use"

#: Keys a JSON line may have.
JSON_KEYS = ("command", "category", "resources", "cwd", "env")

#: Lines of a failed task's stderr printed when it fails.
STDERR_TAIL_LINES = 5

#: Bad lines listed before giving up (the rest are counted).
MAX_REPORTED_ERRORS = 20


class TaskFileError(InvalidSpec):
    """Raised when lines of a task file are malformed; ``errors`` holds ``(line, message)``."""

    def __init__(self, source: str, errors: Sequence[tuple[int, str]]) -> None:
        self.source = source
        self.errors = list(errors)
        shown = [f"{source}:{n}: {msg}" for n, msg in self.errors[:MAX_REPORTED_ERRORS]]
        if len(self.errors) > MAX_REPORTED_ERRORS:
            shown.append(f"... and {len(self.errors) - MAX_REPORTED_ERRORS} more bad lines")
        noun = "line" if len(self.errors) == 1 else "lines"
        super().__init__(
            f"{len(self.errors)} bad {noun} in {source}; nothing was run:\n" + "\n".join(shown)
        )


@dataclass(frozen=True)
class TaskLine:
    """One task of a task file: where it came from and what to run."""

    lineno: int
    command: str | tuple[str, ...]
    category: str | None = None
    resources: Resources | None = None
    cwd: str | None = None
    env: dict[str, str] | None = field(default=None, hash=False)

    @property
    def display(self) -> str:
        """The command as one line of text."""
        if isinstance(self.command, str):
            return self.command
        return " ".join(self.command)


def _parse_json_line(text: str) -> TaskLine | str:
    """Return the task of a JSON line, or the message saying what is wrong with it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(obj, dict):
        return f"a JSON line must be an object with keys {', '.join(JSON_KEYS)}"
    unknown = sorted(set(obj) - set(JSON_KEYS))
    if unknown:
        return f"unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(JSON_KEYS)}"
    cmd = obj.get("command")
    command: str | tuple[str, ...]
    if isinstance(cmd, str):
        if not cmd.strip():
            return '"command" is empty'
        command = cmd
    elif isinstance(cmd, list):
        if not cmd or not all(isinstance(a, str) for a in cmd) or not cmd[0]:
            return '"command" as a list must be a non-empty list of strings (argv)'
        command = tuple(cmd)
    elif cmd is None:
        return 'no "command"; give a string (run by /bin/sh -c) or a list of strings (argv)'
    else:
        return f'"command" must be a string or a list of strings, not {type(cmd).__name__}'
    category = obj.get("category")
    if category is not None and (not isinstance(category, str) or not category.strip()):
        return '"category" must be a non-empty string'
    try:
        resources = Resources.coerce(obj.get("resources"))
    except InvalidSpec as exc:
        return str(exc)
    cwd = obj.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        return '"cwd" must be a string (a directory)'
    env = obj.get("env")
    if env is not None and (
        not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        return '"env" must be an object of string values, e.g. {"OMP_NUM_THREADS": "1"}'
    return TaskLine(0, command, category, resources, cwd, env)


def parse_task_file(text: str, *, source: str = "<tasks>") -> list[TaskLine]:
    """Return the tasks of a task file's ``text``.

    Raises:
        TaskFileError: one or more lines are malformed (all of them are listed).
    """
    tasks: list[TaskLine] = []
    errors: list[tuple[int, str]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            parsed = _parse_json_line(line)
            if isinstance(parsed, str):
                errors.append((lineno, parsed))
                continue
            tasks.append(
                TaskLine(
                    lineno,
                    parsed.command,
                    parsed.category,
                    parsed.resources,
                    parsed.cwd,
                    parsed.env,
                )
            )
        elif "\x00" in line:
            errors.append((lineno, "contains a NUL byte"))
        else:
            tasks.append(TaskLine(lineno, line))
    if errors:
        raise TaskFileError(source, errors)
    return tasks


#: Linux's longest single argument to a program (``MAX_ARG_STRLEN``, 32 pages), NUL included:
#: a shell line is one argument of ``/bin/sh -c``.
MAX_ARG_BYTES = 32 * 4096


def _arg_max() -> int:
    """The kernel's limit on a program's arguments and environment together (``ARG_MAX``)."""
    try:
        return int(os.sysconf("SC_ARG_MAX"))
    except (ValueError, OSError):
        return 2 * 1024 * 1024


def check_runnable(tasks: Sequence[TaskLine], *, source: str) -> None:
    """Raise :class:`TaskFileError` for tasks that cannot start: too long, or a bad ``cwd``.

    Checked before anything is submitted, so a command the kernel would refuse
    (``E2BIG``) or a ``cwd`` that does not exist fails here, naming its line,
    not later as an exit status. ``cwd`` is relative to the current directory.
    """
    from loadmaster.sizes import format_size

    errors: list[tuple[int, str]] = []
    arg_max = _arg_max()
    for t in tasks:
        words = [t.command] if isinstance(t.command, str) else list(t.command)
        sizes = [len(w.encode("utf-8", "surrogateescape")) + 1 for w in words]
        longest = max(sizes)
        if longest > MAX_ARG_BYTES:
            what = "the command" if isinstance(t.command, str) else "an argument of the command"
            errors.append((
                t.lineno,
                f"{what} is {format_size(longest - 1)} long; Linux passes at most "
                f"{format_size(MAX_ARG_BYTES - 1)} in one argument (MAX_ARG_STRLEN), so it "
                "cannot start. Put the command in a script file and run that",
            ))
        elif sum(sizes) > arg_max:
            errors.append((
                t.lineno,
                f"the command's arguments take {format_size(sum(sizes))}, more than Linux's "
                f"ARG_MAX of {format_size(arg_max)}, so it cannot start. Pass them in a file",
            ))
        if t.cwd is not None:
            where = os.path.abspath(t.cwd)
            if not os.path.isdir(where):
                problem = "is not a directory" if os.path.exists(where) else "does not exist"
                errors.append((t.lineno, f'"cwd" {where!r} {problem}; give an existing directory'))
            elif not os.access(where, os.X_OK):
                errors.append((t.lineno, f'"cwd" {where!r} cannot be entered (permission denied)'))
    if errors:
        raise TaskFileError(source, errors)


def check_fits(tasks: Sequence[TaskLine], node: Resources, *, source: str) -> None:
    """Raise :class:`TaskFileError` for tasks that ask more than ``node`` has."""
    from loadmaster.sizes import format_size

    errors = []
    for t in tasks:
        if t.resources is None:
            continue
        for name in t.resources.exceeds(node):
            asked, has = getattr(t.resources, name), getattr(node, name)
            if name in ("memory", "disk"):
                asked, has = format_size(asked), format_size(has)
            errors.append((t.lineno, f"asks for {name}={asked}, more than this node's {has}"))
    if errors:
        raise TaskFileError(source, errors)


@dataclass
class Outcome:
    """What became of one line's task."""

    task: TaskLine
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    report: Any = None

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0 and not self.error

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "line": self.task.lineno,
            "command": self.task.command
            if isinstance(self.task.command, str)
            else list(self.task.command),
            "category": self.report.category if self.report is not None else self.task.category,
            "ok": self.ok,
            "returncode": self.returncode,
            "error": self.error,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "report": self.report.as_dict() if self.report is not None else None,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add FILE and the options of ``loadmaster run``."""
    parser.add_argument("file", metavar="FILE", help="task file, one command per line; - for stdin")
    parser.add_argument(
        "--history",
        metavar="PATH",
        help='history database (default: $LOADMASTER_HISTORY or the user data dir; ":memory:")',
    )
    parser.add_argument("--cores", metavar="N", type=float, help="use at most N cores")
    parser.add_argument("--memory", metavar="SIZE", help='use at most SIZE memory, e.g. "8GiB"')
    parser.add_argument("--report", metavar="PATH", help="also write the HTML report there")
    parser.add_argument("--logs", metavar="DIR", help="write each task's stdout/stderr under DIR")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON document (tasks, summary) on stdout"
    )
    parser.add_argument("--scheduler", metavar="ADDR",
                        help="run on the Dask cluster of this scheduler, e.g. tcp://host:8786")
    parser.add_argument("--cluster", metavar="SPEC",
                        help="start a cluster for this run, e.g. slurm:cores=1,memory=2GB,jobs=4 "
                             "(see docs/cluster.md)")
    parser.add_argument(
        "--stream", action=argparse.BooleanOptionalAction, default=None,
        help="print each command's output lines as they come, prefixed with its line "
             "(default: when stdout is a terminal and --json is not given)",
    )
    allow_dash_values(parser, "--memory", "--cores", "--history", "--report", "--logs")


def _finish(future: Future[Any], out: Outcome) -> None:
    """Fill ``out`` from a finished future."""
    from loadmaster.errors import CommandFailed, TaskFailed

    try:
        result = future.result()
    except CommandFailed as exc:
        out.returncode = exc.returncode
        out.stdout, out.stderr = exc.stdout, exc.stderr
        out.error = str(exc).splitlines()[0] if str(exc) else "command failed"
        out.report = exc.report
    except TaskFailed as exc:
        out.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        out.report = exc.report
        if exc.report is not None:
            out.returncode = exc.report.exit_status
    except Exception as exc:  # anything else still fails only this line
        out.error = f"{type(exc).__name__}: {exc}"
    else:
        out.returncode = result.returncode
        out.stdout, out.stderr = result.stdout, result.stderr
    if out.report is None:
        out.report = getattr(future, "report", None)


def _failure_note(out: Outcome) -> str:
    """Return the lines printed when a task fails."""
    head = f"line {out.task.lineno} failed"
    if out.returncode is not None:
        head += f" (exit status {out.returncode})"
    head += f": {out.task.display[:120]}"
    lines = [head]
    if out.error:
        lines.append(f"  {out.error}")
    tail = out.stderr.rstrip().splitlines()[-STDERR_TAIL_LINES:]
    lines += [f"  | {t}" for t in tail]
    return "\n".join(lines)


def _write_logs(logs: Path, outcomes: Sequence[Outcome]) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    for o in outcomes:
        stem = logs / f"line-{o.task.lineno:04d}"
        stem.with_suffix(".out").write_text(o.stdout, encoding="utf-8")
        stem.with_suffix(".err").write_text(o.stderr, encoding="utf-8")


def node_of(ex: Any) -> Resources:
    """Return what the executor may use: its capped grant, else the node's capacity."""
    node = getattr(ex, "node", None)
    return node if isinstance(node, Resources) else ex.node_info.capacity


def _write_above_bar(text: str, file: Any) -> None:
    """Print a streamed line without breaking the progress bar (tqdm clears and redraws it)."""
    from tqdm import tqdm

    tqdm.write(text, file=file, end="")
    file.flush()


def _task_name(t: TaskLine) -> str:
    if t.category:
        return f"line {t.lineno} {t.category}"
    words = t.display.split(None, 1)
    return f"line {t.lineno} {os.path.basename(words[0]) if words else ''}".rstrip()


def execute(
    tasks: Sequence[TaskLine], ex: Any, *, source: str, progress: bool = True, stream: bool = False
) -> list[Outcome]:
    """Submit ``tasks`` to the executor ``ex`` and wait for all; return one outcome per task.

    With ``stream``, each line a command writes is printed as it comes, after
    ``[line N program] `` (stdout lines on stdout, stderr lines on stderr).

    Raises:
        TaskFileError: a task cannot start (see :func:`check_runnable`) or asks for
            more than the node has (nothing submitted).
    """
    from tqdm import tqdm

    from loadmaster.output import LinePrinter

    check_runnable(tasks, source=source)
    check_fits(tasks, node_of(ex), source=source)
    outcomes: dict[Future[Any], Outcome] = {}
    for t in tasks:
        command: str | list[str] = t.command if isinstance(t.command, str) else list(t.command)
        # Each command runs where `loadmaster run` was started (like GNU parallel),
        # which its sandbox then lets it write; a line may choose another "cwd".
        printer = LinePrinter(f"[{_task_name(t)}] ", _write_above_bar) if stream else None
        f = ex.submit_command(
            command, category=t.category, resources=t.resources, cwd=t.cwd or os.getcwd(), env=t.env,
            on_output=printer,
        )
        outcomes[f] = Outcome(t)
    failed = 0
    bar = tqdm(
        total=len(tasks),
        unit="task",
        desc="tasks",
        file=sys.stderr,
        disable=not (progress and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
    with bar:
        for f in as_completed(outcomes):
            out = outcomes[f]
            _finish(f, out)
            if not out.ok:
                failed += 1
                bar.write(_failure_note(out), file=sys.stderr)
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
    return sorted(outcomes.values(), key=lambda o: o.task.lineno)


def write_run_report(
    path: str, ex: Any, reports: Sequence[Any], *, started_at: float, label: str
) -> Path:
    """Write the HTML report of this executor's run from ``reports``; return its path."""
    from loadmaster.plan.history import RunInfo
    from loadmaster.report.html import RunView, write_report

    info = RunInfo(
        run_id=ex.run_id,
        label=label,
        host=socket.gethostname(),
        started_at=started_at,
        finished_at=time.time(),
        capacity=node_of(ex),
        tasks=len(reports),
    )
    view = RunView(
        run_id=ex.run_id,
        reports=tuple(reports),
        info=info,
        sources=dict(ex.node_info.sources),
    )
    return write_report(path, [view], history_path=str(getattr(ex.history, "path", "")))


def run(args: argparse.Namespace) -> int:
    """Run the file; return 0 if every task succeeded, 1 if any failed, 2 on bad input."""
    import loadmaster
    from loadmaster.report.summary import format_summary_table, summarize

    source = "<stdin>" if args.file == "-" else args.file
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"loadmaster run: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    try:
        tasks = parse_task_file(text, source=source)
        check_runnable(tasks, source=source)  # before any zygote starts
    except TaskFileError as exc:
        print(f"loadmaster run: {exc}", file=sys.stderr)
        return 2
    if not tasks:
        print(f"loadmaster run: no commands in {source}; nothing to run", file=sys.stderr)
        if args.json:
            _print_json([], [], None, None, None)
        return 0

    label = f"loadmaster run {os.path.basename(source)}"
    started_at = time.time()
    try:
        from loadmaster.backends.dask.targets import backend_from_args

        ex = loadmaster.Executor(
            cores=args.cores, memory=args.memory, history=args.history, label=label,
            backend=backend_from_args(args.scheduler, args.cluster),
        )
    except LoadmasterError as exc:
        print(f"loadmaster run: {exc}", file=sys.stderr)
        return 2
    report_path: Path | None = None
    with ex:
        try:
            stream = args.stream if args.stream is not None else (sys.stdout.isatty() and not args.json)
            outcomes = execute(tasks, ex, source=source, progress=not args.json, stream=stream)
        except TaskFileError as exc:
            print(f"loadmaster run: {exc}", file=sys.stderr)
            return 2
        reports = [o.report for o in outcomes if o.report is not None]
        if args.report:
            report_path = write_run_report(
                args.report, ex, reports, started_at=started_at, label=label
            )
        history_path = str(getattr(ex.history, "path", ""))
        run_id = ex.run_id
    if args.logs:
        _write_logs(Path(args.logs), outcomes)
    summaries = summarize(reports)
    failed = sum(1 for o in outcomes if not o.ok)
    if args.json:
        _print_json(outcomes, summaries, run_id, history_path, report_path)
        return 1 if failed else 0
    print(format_summary_table(summaries))
    print()
    elapsed = time.time() - started_at
    print(
        f"{len(outcomes)} tasks, {failed} failed, in {elapsed:.1f} s "
        f"(run {run_id} in history {history_path})"
    )
    if args.logs:
        print(f"logs: {Path(args.logs).resolve()}/line-NNNN.out, .err")
    if report_path is not None:
        print(f"report: {report_path}")
    return 1 if failed else 0


def _print_json(
    outcomes: Sequence[Outcome],
    summaries: Sequence[Any],
    run_id: int | None,
    history_path: str | None,
    report_path: Path | None,
) -> None:
    doc = {
        "run_id": run_id,
        "history": history_path,
        "report": str(report_path) if report_path else None,
        "tasks": [o.as_dict() for o in outcomes],
        "failed": sum(1 for o in outcomes if not o.ok),
        "categories": [s.as_dict() for s in summaries],
    }
    json.dump(doc, sys.stdout, indent=2)
    print()
