"""``loadmaster demo``: a built-in workflow that shows packing and learning, then a report.

Runs in the client. Submits a few hundred memory-hungry Python functions
(``loadmaster.demo_tasks``: ``align`` ~150 MiB each, ``simulate`` growing with
its size, ``summarize`` small) to an :class:`~loadmaster.Executor` capped at
``--memory`` (default 3 GiB) in two runs: the first starts knowing nothing
(its first tasks of each category get generous allocations, later ones are
sized from what was measured), the second starts from the first's history.
Prints progress and a closing table per run, writes the HTML report covering
both runs, and ends with the report's path as its last line.

Writes: the history (default ``out/demo-history.sqlite``, started afresh each
time unless ``--history`` is given) and the report (default
``out/loadmaster-demo-report.html``).

Tasks ask for ``cores=0.125`` (they mostly hold memory while they wait), so
memory, not cores, limits how many run at once.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

from loadmaster.errors import LoadmasterError

NAME = "demo"
HELP = "run a built-in workflow of memory-hungry tasks showing packing and learning; write a report"

DEFAULT_HISTORY = "out/demo-history.sqlite"
DEFAULT_REPORT = "out/loadmaster-demo-report.html"
DEFAULT_TASKS = 300
DEFAULT_MEMORY = "3GiB"
TASK_CORES = 0.125
MiB = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--history``, ``--report``, ``--tasks``, ``--memory`` and ``--runs``."""
    parser.add_argument(
        "--history",
        metavar="PATH",
        help=f"history database (default: {DEFAULT_HISTORY}, started afresh each time)",
    )
    parser.add_argument(
        "--report", metavar="PATH", default=DEFAULT_REPORT, help=f"(default: {DEFAULT_REPORT})"
    )
    parser.add_argument(
        "--tasks",
        metavar="N",
        type=int,
        default=DEFAULT_TASKS,
        help=f"tasks in all, split over the runs (default: {DEFAULT_TASKS})",
    )
    parser.add_argument(
        "--memory",
        metavar="SIZE",
        default=DEFAULT_MEMORY,
        help=f"memory the demo's executor may use (default: {DEFAULT_MEMORY})",
    )
    parser.add_argument(
        "--runs", metavar="N", type=int, default=2, help="runs, each from the history (default: 2)"
    )


def workload(n: int, seed: int) -> list[tuple[str, int]]:
    """Return ``n`` (category, argument) pairs: 40 % align, 35 % simulate, 25 % summarize.

    Deterministic for a ``seed``; categories are interleaved as a real workflow's would be.
    """
    import random

    rng = random.Random(seed)
    out: list[tuple[str, int]] = []
    for i in range(n):
        x = rng.random()
        if x < 0.40:
            out.append(("align", seed * 100_000 + i))
        elif x < 0.75:
            out.append(("simulate", rng.choice((40, 80, 120, 200, 300, 450))))
        else:
            out.append(("summarize", i))
    return out


def _submit(ex: Any, category: str, arg: int) -> Any:
    from loadmaster import demo_tasks

    res = {"cores": TASK_CORES}
    if category == "align":
        return ex.options(category="align", resources=res).submit(demo_tasks.align, arg)
    if category == "simulate":
        # The size hint lets a size-aware strategy model memory against input size.
        return ex.options(category="simulate", resources=res, size=arg * MiB).submit(demo_tasks.simulate, arg)
    return ex.options(category="summarize", resources=res).submit(demo_tasks.summarize, arg)


def run_once(
    number: int, runs: int, items: Sequence[tuple[str, int]], args: argparse.Namespace
) -> Any:
    """Run one pass of the workload; print its table; return its RunView for the report."""
    from tqdm import tqdm

    import loadmaster
    from loadmaster.commands.run import node_of
    from loadmaster.errors import TaskFailed
    from loadmaster.plan.history import RunInfo
    from loadmaster.report.html import RunView, memory_timeline
    from loadmaster.report.summary import format_summary_table, summarize
    from loadmaster.sizes import format_size

    label = f"demo run {number} of {runs}"
    started = time.time()
    with loadmaster.Executor(
        memory=args.memory, history=args.history, label=label, preload=("loadmaster.demo_tasks",)
    ) as ex:
        node = node_of(ex)
        print(
            f"\n== run {number}/{runs}: {len(items)} tasks on {node.cores:g} cores, "
            f"{format_size(node.memory)} (history {ex.history.path}, run {ex.run_id})"
        )
        futures = [_submit(ex, cat, arg) for cat, arg in items]
        failed = 0
        with tqdm(
            total=len(futures),
            unit="task",
            desc=f"run {number}",
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
        ) as bar:
            for f in as_completed(futures):
                try:
                    f.result()
                except TaskFailed as exc:
                    failed += 1
                    bar.write(f"task failed: {str(exc).splitlines()[0]}", file=sys.stderr)
                bar.update(1)
        reports = [f.report for f in futures if f.report is not None]
        run_id = ex.run_id
        sources = dict(ex.node_info.sources)
    elapsed = time.time() - started
    info = RunInfo(
        run_id=run_id,
        label=label,
        host=socket.gethostname(),
        started_at=started,
        finished_at=time.time(),
        capacity=node,
        tasks=len(reports),
    )
    view = RunView(run_id=run_id, reports=tuple(reports), info=info, sources=sources)
    print(format_summary_table(summarize(reports)))
    alloc, used, running = memory_timeline(view)
    print(
        f"run {number}: {len(reports)} tasks, {failed} failed, {elapsed:.1f} s; at most "
        f"{max(n for _, n in running):.0f} tasks at once, "
        f"{format_size(max(v for _, v in alloc))} allocated at once "
        f"(capacity {format_size(node.memory)}), highest sum of peaks "
        f"{format_size(max(v for _, v in used))}"
    )
    return view


def run(args: argparse.Namespace) -> int:
    """Run the demo; return 0 (1 if a task failed, 2 on bad arguments)."""
    from loadmaster.report.html import write_report

    if args.tasks < 1 or args.runs < 1:
        print("loadmaster demo: --tasks and --runs must be at least 1", file=sys.stderr)
        return 2
    if args.history is None:
        args.history = DEFAULT_HISTORY
        for suffix in ("", "-wal", "-shm"):
            Path(DEFAULT_HISTORY + suffix).unlink(missing_ok=True)
        Path(DEFAULT_HISTORY).parent.mkdir(parents=True, exist_ok=True)
    print(
        f"loadmaster demo: {args.tasks} Python tasks of three categories (align ~150 MiB, "
        "simulate 60-470 MiB growing with its size, summarize ~12 MiB), each in its own "
        f"process, measured, packed into {args.memory} by what they use."
    )
    print(
        "Run 1 starts knowing nothing: each category's first tasks get generous allocations "
        "until measured; later runs start from the history."
    )
    per_run = max(1, args.tasks // args.runs)
    started = time.time()
    views = []
    try:
        for number in range(1, args.runs + 1):
            items = workload(per_run, seed=number)
            views.append(run_once(number, args.runs, items, args))
    except LoadmasterError as exc:
        print(f"loadmaster demo: {exc}", file=sys.stderr)
        return 2
    path = write_report(
        args.report, views, history_path=str(args.history), title="loadmaster demo report"
    )
    failed = sum(1 for v in views for r in v.reports if r.outcome.value != "ok")
    print(f"\ndemo finished in {time.time() - started:.1f} s, {failed} tasks failed.")
    print(f"report written to {path}")
    return 1 if failed else 0
