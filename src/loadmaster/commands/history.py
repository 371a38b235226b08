"""``loadmaster history [CATEGORY]``: what has been learned per category.

Runs in the client. Reads the history database (never writes it), detects this
node's capacity, and asks the planner — the same code an executor would run —
how it would size each category's next task. Does not run anything.

Per category it shows: tasks, failures, retries and measured attempts; the
peak-memory distribution (p50/p90/max); the ``size-aware`` line of peak memory
on input size and its error (a, b, R², margin — or why there is none: no size
data, too few points, a poor fit, in which case the strategy sizes from the
distribution); and the first allocation the default strategy (and, with
``--strategy NAME``, another) would give the next task of the category that
states no resources, at the category's median input size.

This module does *not* cover: the fitting (``plan/strategies/sizefit.py``), the model's
text and chart (``report/sizefit.py``), the database (``plan/history/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from loadmaster.errors import LoadmasterError

if TYPE_CHECKING:
    from loadmaster.plan.history import History
    from loadmaster.plan.planner import Planner
    from loadmaster.spec import Resources

NAME = "history"
HELP = (
    "show what has been learned per category (peak memory p50/p90/max, the memory vs "
    "input-size line, the next first allocation)"
)

logger = logging.getLogger("loadmaster.cli.history")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the optional ``CATEGORY``, ``--history``, ``--strategy`` and ``--json``.

    Nothing is imported here: every ``loadmaster`` command builds this parser.
    """
    parser.add_argument("category", nargs="?", metavar="CATEGORY", help="only this category")
    parser.add_argument(
        "--history",
        metavar="PATH",
        help="history database (default: $LOADMASTER_HISTORY or the user data directory)",
    )
    parser.add_argument(
        "--strategy",
        metavar="NAME",
        help=(
            "also show the first allocation this sizing strategy would give (the default "
            "strategy's is always shown): fixed, learned, max-seen, max-throughput, min-waste, "
            "size-aware (see docs/sizing.md)"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _allocation(planner: Planner, category: str, input_size: int | None) -> dict[str, Any]:
    """Return the planner's first allocation for a task of ``category`` that states nothing."""
    allocation = planner.first_allocation(category, None, input_size)
    out: dict[str, Any] = dict(allocation.as_dict())
    out["input_size"] = input_size
    return out


def collect(
    history: History,
    category: str | None,
    strategies: list[str],
    node: Resources,
) -> list[dict[str, Any]]:
    """Return one dict per category: counts, peak distribution, size model, first allocations.

    ``strategies``: the sizing strategies whose first allocation to show (the
    first is the default's). ``node``: the grant the planner sizes against.

    Raises:
        InvalidSpec: a strategy name is unknown, or ``node`` states no memory.
    """
    from loadmaster.plan.planner import WINDOW, Planner
    from loadmaster.report.sizefit import format_model, size_model
    from loadmaster.report.summary import quantile, summarize, total
    from loadmaster.results import Outcome

    cats = [category] if category else history.categories()
    run_ids = [r.run_id for r in history.runs()]
    planners = {name: Planner(node, history, strategy=name) for name in strategies}
    out = []
    for cat in cats:
        # Per run: task ids restart in every run, so tasks are told apart within one.
        per_run = [history.reports(category=cat, run_id=rid) for rid in run_ids]
        per_run = [rs for rs in per_run if rs]
        if not per_run:
            continue
        s = total([summarize(rs)[0] for rs in per_run])
        reports = [r for rs in per_run for r in rs]
        measured = [r for r in reports if r.outcome is not Outcome.LOST]
        peaks = [float(r.peak_memory) for r in measured if r.exhausted is None]
        # The newest WINDOW measured attempts: what the planner (and size-aware) reads.
        model = size_model(cat, measured[-WINDOW:])
        typical = int(model.typical_size) if model.points else None
        size_row = model.as_dict()
        size_row["text"] = format_model(model)
        row: dict[str, Any] = {
            "category": cat,
            "runs": len(per_run),
            "tasks": s.tasks,
            "failures": s.failures,
            "retries": s.retries,
            "count": len(measured),
            "peak_memory_p50": int(quantile(peaks, 0.5)),
            "peak_memory_p90": int(quantile(peaks, 0.9)),
            "peak_memory_max": int(max(peaks, default=0)),
            "mean_allocated_memory": s.mean_allocated,
            "efficiency": s.efficiency,
            "wall_time_p50": quantile([r.wall_time for r in reports], 0.5),
            "size_model": size_row,
            "typical_input_size": typical,
            "first_allocation": {
                name: _allocation(p, cat, typical) for name, p in planners.items()
            },
            "planner": planners[strategies[0]].describe(cat),
        }
        out.append(row)
    return out


def _first_alloc_cell(row: dict[str, Any], name: str) -> str:
    """Return the first allocation of ``name`` as a table cell."""
    from loadmaster.report.summary import short_size

    alloc = row["first_allocation"].get(name) or {}
    return short_size(alloc.get("memory"))


def _size_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Return the rows of the size-model table."""
    from loadmaster.report.sizefit import format_slope
    from loadmaster.report.summary import short_size

    table = []
    for r in rows:
        m = r["size_model"]
        fitted = m["a"] is not None
        verdict = {
            "fit": "used",
            "poor fit": "poor fit → distribution",
            "too few points": "too few points → distribution",
            "one size": "one size only → distribution",
            "no size data": "no size data",
        }[m["status"]]
        typical = m["typical_input_size"]
        table.append(
            [
                r["category"],
                str(m["points"]),
                str(m["n"] if fitted else m["completed_points"]),
                short_size(typical) if typical is not None else "-",
                short_size(m["a"]) if fitted else "-",
                format_slope(m["b"], typical or 0) if fitted else "-",
                f"{m['r2']:.3f}" if fitted else "-",
                short_size(m["margin_at_typical"]) if fitted else "-",
                verdict,
            ]
        )
    return table


def _print_tables(
    rows: list[dict[str, Any]], strategies: list[str], path: str, node_text: str
) -> None:
    """Print the distribution table and the size-model table."""
    from loadmaster.report.summary import format_percent, format_table, short_size

    headers = [
        "category",
        "runs",
        "tasks",
        "failed",
        "retries",
        "measured",
        "peak p50",
        "peak p90",
        "peak max",
        "mean alloc",
        "efficiency",
        *(f"first alloc ({name})" for name in strategies),
    ]
    table = [
        [
            r["category"],
            str(r["runs"]),
            str(r["tasks"]),
            str(r["failures"]),
            str(r["retries"]),
            str(r["count"]),
            short_size(r["peak_memory_p50"]),
            short_size(r["peak_memory_p90"]),
            short_size(r["peak_memory_max"]),
            short_size(r["mean_allocated_memory"]),
            format_percent(r["efficiency"]),
            *(_first_alloc_cell(r, name) for name in strategies),
        ]
        for r in rows
    ]
    print(f"history: {path}")
    print(
        f"first allocations: what the planner would give the next task of the category that "
        f"states no resources, at the category's median input size, on this node ({node_text})"
    )
    print()
    print(format_table(headers, table))
    print()
    print(
        "peak memory vs input size: the size-aware line peak = a + b·size over the n completed "
        "attempts with an input size (sized: all measured attempts with one), its R² and its "
        "safety margin at the median input:"
    )
    print(
        format_table(
            ("category", "sized", "n", "median input", "a", "b", "R²", "margin", "model"),
            _size_rows(rows),
        )
    )


def run(args: argparse.Namespace) -> int:
    """Print the tables (or JSON); return 0, 1 for an unknown category, 2 if unreadable."""
    from loadmaster.node.capacity import detect_capacity
    from loadmaster.plan.history import History
    from loadmaster.plan.planner import DEFAULT_STRATEGY
    from loadmaster.plan.strategy import STRATEGIES
    from loadmaster.sizes import format_size

    if args.history and args.history != ":memory:" and not os.path.exists(args.history):
        print(f"loadmaster history: no history at {args.history}", file=sys.stderr)
        return 2
    if args.strategy is not None and args.strategy not in STRATEGIES:
        print(
            f"loadmaster history: sizing strategy {args.strategy!r} does not exist; "
            f"choose one of: {', '.join(sorted(STRATEGIES))}",
            file=sys.stderr,
        )
        return 2
    strategies = [DEFAULT_STRATEGY]
    if args.strategy and args.strategy != DEFAULT_STRATEGY:
        strategies.append(args.strategy)
    capacity = detect_capacity()
    node = capacity.as_resources()
    try:
        history = History(args.history)
    except LoadmasterError as exc:
        print(f"loadmaster history: {exc}", file=sys.stderr)
        return 2
    try:
        rows = collect(history, args.category, strategies, node)
        path = history.path
    except LoadmasterError as exc:
        print(f"loadmaster history: {exc}", file=sys.stderr)
        return 2
    finally:
        history.close()
    if args.json:
        document = {
            "history": path,
            "node": node.as_dict(),
            "default_strategy": DEFAULT_STRATEGY,
            "strategies": strategies,
            "categories": rows,
        }
        json.dump(document, sys.stdout, indent=2, default=str)
        print()
        return 0 if rows or not args.category else 1
    if not rows:
        what = f"category {args.category!r}" if args.category else "any category"
        print(f"no reports of {what} in {path}")
        return 0 if not args.category else 1
    node_text = f"{node.cores:g} cores, {format_size(node.memory or 0)} memory"
    _print_tables(rows, strategies, path, node_text)
    return 0
