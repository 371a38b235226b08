"""``loadmaster history``: what has been learned per category.

Runs in the client. Reads the history database (never writes it) and, when
the planner is available, asks it how it would size each category's next
task. Does not run anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

from loadmaster.errors import LoadmasterError

NAME = "history"
HELP = "show what has been learned per category (peak memory p50/p90/max, first allocation)"

logger = logging.getLogger("loadmaster.cli.history")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the optional ``CATEGORY``, ``--history`` and ``--json``."""
    parser.add_argument("category", nargs="?", metavar="CATEGORY", help="only this category")
    parser.add_argument(
        "--history",
        metavar="PATH",
        help="history database (default: $LOADMASTER_HISTORY or the user data directory)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _planner_describe(history: Any) -> Any:
    """Return ``describe(category) -> dict`` from the planner, or ``None`` if it is unavailable.

    The planner is optional here: an older or partial installation still shows
    the measured distribution.
    """
    try:
        from loadmaster.node.capacity import detect_capacity

        # Imported by name: the planner is written concurrently and may be absent.
        planner_cls = importlib.import_module("loadmaster.plan.planner").Planner
        node = detect_capacity()
        try:
            planner = planner_cls(node.as_resources(), history)
        except TypeError:
            planner = planner_cls(node, history)
        return planner.describe
    except Exception as exc:  # the planner is optional; say why it is missing and go on
        logger.debug("planner unavailable: %r", exc)
        return None


def collect(history: Any, category: str | None) -> list[dict[str, Any]]:
    """Return one dict per category: counts, peak memory p50/p90/max, planner's view."""
    from loadmaster.report.summary import quantile, summarize, total

    cats = [category] if category else history.categories()
    run_ids = [r.run_id for r in history.runs()]
    describe = _planner_describe(history)
    out = []
    for cat in cats:
        # Per run: task ids restart in every run, so tasks are told apart within one.
        per_run = [history.reports(category=cat, run_id=rid) for rid in run_ids]
        per_run = [rs for rs in per_run if rs]
        if not per_run:
            continue
        summaries = [summarize(rs)[0] for rs in per_run]
        s = total(summaries)
        reports = [r for rs in per_run for r in rs]
        peaks = [
            float(r.peak_memory)
            for r in reports
            if r.outcome.value not in ("lost", "exhausted") and r.exhausted is None
        ]
        row: dict[str, Any] = {
            "category": cat,
            "tasks": s.tasks,
            "failures": s.failures,
            "retries": s.retries,
            "peak_memory_p50": int(quantile(peaks, 0.5)),
            "peak_memory_p90": int(quantile(peaks, 0.9)),
            "peak_memory_max": int(max(peaks, default=0)),
            "mean_allocated_memory": s.mean_allocated,
            "efficiency": s.efficiency,
            "runs": len(per_run),
            "wall_time_p50": quantile([r.wall_time for r in reports], 0.5),
            "planner": None,
        }
        if describe is not None:
            try:
                row["planner"] = describe(cat)
            except Exception as exc:  # one category's model failing must not hide the others
                row["planner"] = {"error": f"{type(exc).__name__}: {exc}"}
        out.append(row)
    return out


def _first_allocation(planner: Any) -> str:
    """Return the planner's first allocation of memory as text, or ``-``."""
    from loadmaster.report.summary import short_size

    if not isinstance(planner, dict):
        return "-"
    if "error" in planner:
        return "(planner error)"
    for key in ("first_allocation", "first", "allocation"):
        value = planner.get(key)
        if isinstance(value, dict) and value.get("memory") is not None:
            return short_size(value["memory"])
        if isinstance(value, int | float):
            return short_size(value)
    if planner.get("memory") is not None:
        return short_size(planner["memory"])
    return "-"


def _model(planner: Any) -> str:
    if not isinstance(planner, dict):
        return "-"
    for key in ("strategy", "kind"):
        if planner.get(key):
            return str(planner[key])
    return "-"


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON); return 0, or 2 if the history cannot be read."""
    from loadmaster.plan.history import History
    from loadmaster.report.summary import format_percent, format_table, short_size

    if args.history and args.history != ":memory:" and not os.path.exists(args.history):
        print(f"loadmaster history: no history at {args.history}", file=sys.stderr)
        return 2
    try:
        history = History(args.history)
    except LoadmasterError as exc:
        print(f"loadmaster history: {exc}", file=sys.stderr)
        return 2
    try:
        rows = collect(history, args.category)
        path = history.path
    finally:
        history.close()
    if args.json:
        json.dump({"history": path, "categories": rows}, sys.stdout, indent=2, default=str)
        print()
        return 0
    if not rows:
        what = f"category {args.category!r}" if args.category else "any category"
        print(f"no reports of {what} in {path}")
        return 0 if not args.category else 1
    headers = (
        "category",
        "runs",
        "tasks",
        "failed",
        "retries",
        "peak p50",
        "peak p90",
        "peak max",
        "mean alloc",
        "efficiency",
        "strategy",
        "first alloc",
    )
    table = [
        [
            r["category"],
            str(r["runs"]),
            str(r["tasks"]),
            str(r["failures"]),
            str(r["retries"]),
            short_size(r["peak_memory_p50"]),
            short_size(r["peak_memory_p90"]),
            short_size(r["peak_memory_max"]),
            short_size(r["mean_allocated_memory"]),
            format_percent(r["efficiency"]),
            _model(r["planner"]),
            _first_allocation(r["planner"]),
        ]
        for r in rows
    ]
    print(f"history: {path}")
    print(format_table(headers, table))
    return 0
