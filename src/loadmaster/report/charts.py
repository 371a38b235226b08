"""The charts of a run's HTML report: memory per task, node memory over time, waste per category.

Runs in the client, called by ``report/html.py`` while it writes the page.
Each function takes a :class:`~loadmaster.report.html.RunView` (or the
summaries of its categories) and returns inline SVG (with its legend), or a
short note when there is nothing to draw.

Does not cover: the page around them, tables and facts (``report/html.py``),
chart primitives (``report/svg.py``), transfers (``report/transfers.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from loadmaster.report import summary as sm
from loadmaster.report.svg import (
    CAPACITY_COLOUR,
    FAIL_COLOUR,
    Plot,
    fmt_bytes,
    fmt_number,
    legend,
    nice_ticks,
    size_ticks,
    step_path,
)
from loadmaster.results import Outcome, TaskReport
from loadmaster.sizes import format_size

if TYPE_CHECKING:
    from loadmaster.report.html import RunView

ALLOC_COLOUR = "#0072B2"
USED_COLOUR = "#E69F00"
RETRY_COLOUR = "#333333"


def _timed(reports: Sequence[TaskReport]) -> list[TaskReport]:
    """Return the reports in order of start (reports without times keep their order)."""
    return sorted(reports, key=lambda r: (r.started_at, r.task_id, r.attempts))


def run_origin(run: RunView) -> float:
    """Return the time the run's x axes start from."""
    starts = [r.started_at for r in run.reports if r.started_at > 0]
    first = min(starts, default=0.0)
    if run.info is not None and 0 < run.info.started_at <= first:
        return run.info.started_at
    return first


def chart_per_task(run: RunView, colours: dict[str, str]) -> str:
    """Return the chart of allocated (pale) vs measured peak (solid) memory per task attempt."""
    reports = _timed(run.reports)
    if not reports:
        return '<p class="empty">No task reports in this run.</p>'
    top = max(max(r.peak_memory, r.allocation.memory or 0) for r in reports)
    plot = Plot(width=1200, height=340, x_max=len(reports), y_max=top * 1.08 or 1)
    plot.size_y_axis("memory")
    slot = plot.inner_w / len(reports)
    bar = max(1.0, slot * 0.8)
    base = plot.y(0)
    for i, r in enumerate(reports):
        colour = colours[r.category]
        x = plot.x(i) + (slot - bar) / 2
        tip = (
            f"{r.category} #{r.task_id} attempt {r.attempts}: peak {format_size(r.peak_memory)}"
            f" of {format_size(r.allocation.memory) if r.allocation.memory else 'no limit'}"
            f", {r.wall_time:.2f} s, {r.outcome.value}"
            + (f" ({r.exhausted} exhausted)" if r.exhausted else "")
        )
        parts = [f"<g><title>{escape(tip)}</title>"]
        ya = plot.y(r.allocation.memory or 0)
        if r.allocation.memory:
            ya = plot.y(r.allocation.memory)
            parts.append(
                f'<rect x="{x:.2f}" y="{ya:.1f}" width="{bar:.2f}" height="{base - ya:.1f}" '
                f'fill="{colour}" fill-opacity="0.25"/>'
            )
            parts.append(
                f'<line x1="{x:.2f}" x2="{x + bar:.2f}" y1="{ya:.1f}" y2="{ya:.1f}" '
                f'stroke="{colour}" stroke-width="1.5"/>'
            )
        yp = plot.y(r.peak_memory)
        parts.append(
            f'<rect x="{x:.2f}" y="{yp:.1f}" width="{bar:.2f}" height="{base - yp:.1f}" '
            f'fill="{colour}"/>'
        )
        if r.attempts > 1 and r.outcome is Outcome.OK:
            cx = x + bar / 2
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{min(yp, ya) - 5:.1f}" '
                f'r="2.5" fill="{RETRY_COLOUR}"/>'
            )
        if r.outcome is not Outcome.OK:
            cx = x + bar / 2
            parts.append(
                f'<path d="M{cx - 4:.1f},{plot.top + 2} l8,8 m0,-8 l-8,8" stroke="{FAIL_COLOUR}" '
                f'stroke-width="2"/>'
            )
        parts.append("</g>")
        plot.add("".join(parts))
    ticks = nice_ticks(len(reports), 10)
    ticks = [t for t in ticks if t <= len(reports)]
    plot.x_axis(
        [t - 0.5 if t else 0.5 for t in ticks],
        [fmt_number(t) if t else "1" for t in ticks],
        "task attempts in order of start",
    )
    present = {r.category for r in reports}
    items = [(colours[c], "box", c) for c in colours if c in present]
    items.append(("#888888", "hollow", "pale bar: allocated"))
    items.append(("#888888", "box", "solid bar: measured peak"))
    if any(r.attempts > 1 and r.outcome is Outcome.OK for r in reports):
        items.append((RETRY_COLOUR, "dot", "● succeeded after a retry"))
    if any(r.outcome is not Outcome.OK for r in reports):
        items.append((FAIL_COLOUR, "line", "× failed or exhausted attempt"))
    return plot.svg(label="allocated vs used memory per task") + legend(items)


def memory_timeline(
    run: RunView,
) -> tuple[list[tuple[float, float]], list[tuple[float, float]], list[tuple[float, float]]]:
    """Return step series (t, value) of allocated bytes, measured-peak bytes and running tasks.

    ``t`` is seconds since the run started; each value holds until the next point.
    """
    t0 = run_origin(run)
    events: list[tuple[float, int, float, float]] = []  # (t, order, d_alloc, d_used)
    for r in run.reports:
        if r.started_at <= 0 or r.finished_at < r.started_at:
            continue
        alloc = float(r.allocation.memory or 0)
        # Ends sort before starts at the same instant: a slot freed is reused at once.
        events.append((r.started_at - t0, 1, alloc, float(r.peak_memory)))
        events.append((r.finished_at - t0, 0, -alloc, -float(r.peak_memory)))
    events.sort()
    alloc_s: list[tuple[float, float]] = [(0.0, 0.0)]
    used_s: list[tuple[float, float]] = [(0.0, 0.0)]
    run_s: list[tuple[float, float]] = [(0.0, 0.0)]
    a = u = n = 0.0
    for t, order, da, du in events:
        a, u = max(0.0, a + da), max(0.0, u + du)
        n += 1 if order == 1 else -1
        for series, v in ((alloc_s, a), (used_s, u), (run_s, n)):
            if series[-1][0] == t:
                series[-1] = (t, v)
            else:
                series.append((t, v))
    return alloc_s, used_s, run_s


def chart_timeline(run: RunView) -> str:
    """Return the node-memory timeline chart and, under it, the tasks-running chart."""
    alloc_s, used_s, run_s = memory_timeline(run)
    if len(alloc_s) < 2:
        return '<p class="empty">No timed task reports in this run.</p>'
    capacity = run.info.capacity.memory if run.info is not None else None
    t_end = alloc_s[-1][0]
    top = max(max(v for _, v in alloc_s), max(v for _, v in used_s), capacity or 0)
    plot = Plot(width=1200, height=320, x_max=t_end or 1.0, y_max=top * 1.08 or 1)
    plot.size_y_axis("node memory")
    plot.seconds_x_axis()
    base = plot.y(0)
    d_alloc = step_path(plot, alloc_s)
    d_used = step_path(plot, used_s)
    plot.add(
        f'<path d="{d_alloc}V{base:.1f}H{plot.x(0):.1f}Z" '
        f'fill="{ALLOC_COLOUR}" fill-opacity="0.15"/>'
    )
    plot.add(f'<path d="{d_alloc}" fill="none" stroke="{ALLOC_COLOUR}" stroke-width="1.5"/>')
    plot.add(
        f'<path d="{d_used}V{base:.1f}H{plot.x(0):.1f}Z" fill="{USED_COLOUR}" fill-opacity="0.35"/>'
    )
    plot.add(f'<path d="{d_used}" fill="none" stroke="{USED_COLOUR}" stroke-width="1.5"/>')
    items = [
        (ALLOC_COLOUR, "box", "allocated to running tasks"),
        (USED_COLOUR, "box", "measured peaks of running tasks"),
    ]
    if capacity:
        yc = plot.y(capacity)
        plot.add(
            f'<g><title>capacity {format_size(capacity)}</title><line x1="{plot.left}" '
            f'x2="{plot.width - plot.right}" y1="{yc:.1f}" y2="{yc:.1f}" '
            f'stroke="{CAPACITY_COLOUR}" '
            f'stroke-width="2" stroke-dasharray="8 5"/></g>'
        )
        plot.add(
            f'<text x="{plot.width - plot.right - 4}" y="{yc - 6:.1f}" text-anchor="end" '
            f'class="note" fill="{CAPACITY_COLOUR}">capacity {escape(format_size(capacity))}</text>'
        )
        items.append((CAPACITY_COLOUR, "dash", "node memory capacity"))
    peak_alloc = max(v for _, v in alloc_s)
    peak_used = max(v for _, v in used_s)
    plot.add(
        f"<title>highest: {format_size(peak_alloc)} allocated, {format_size(peak_used)} "
        f"measured</title>"
    )
    # Tasks running, on the same time axis.
    n_top = max(v for _, v in run_s)
    n_ticks = nice_ticks(n_top or 1, 4)
    runp = Plot(width=1200, height=150, x_max=plot.x_max, y_max=n_ticks[-1], bottom=40)
    runp.y_axis(n_ticks, [fmt_number(t) for t in n_ticks], "tasks")
    runp.seconds_x_axis()
    d_run = step_path(runp, run_s)
    runp.add(
        f'<path d="{d_run}V{runp.y(0):.1f}H{runp.x(0):.1f}Z" fill="#009E73" fill-opacity="0.3"/>'
    )
    runp.add(f'<path d="{d_run}" fill="none" stroke="#009E73" stroke-width="1.2"/>')
    return (
        plot.svg(label="node memory in use vs capacity over time")
        + legend(items)
        + runp.svg(label="tasks running over time")
        + legend([("#009E73", "box", f"tasks running at once (at most {fmt_number(n_top)})")])
    )


def chart_waste(summaries: Sequence[sm.CategorySummary], colours: dict[str, str]) -> str:
    """Return horizontal bars per category: allocated memory·s (pale) and used (solid)."""
    rows = [s for s in summaries if s.allocated_byte_s > 0 or s.used_byte_s > 0]
    if not rows:
        return '<p class="empty">No memory·time to show.</p>'
    top = max(max(s.allocated_byte_s, s.used_byte_s) for s in rows)
    row_h = 34
    plot = Plot(
        width=1200, height=16 + 48 + row_h * len(rows), x_max=top, y_max=1.0, left=150, right=260
    )
    ticks, unit, factor = size_ticks(top, 6)
    plot.x_max = ticks[-1]
    for t in ticks:
        px = plot.x(t)
        plot.add(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{plot.top}" '
            f'y2="{plot.top + plot.inner_h:.1f}" class="grid"/>'
        )
    plot.x_axis(ticks, [fmt_number(t / factor) for t in ticks], f"memory × time ({unit}·s)")
    for i, s in enumerate(rows):
        y = plot.top + i * row_h + 6
        colour = colours.get(s.category, "#555555")
        wa = plot.x(s.allocated_byte_s) - plot.left
        wu = plot.x(s.used_byte_s) - plot.left
        tip = (
            f"{s.category}: allocated {fmt_bytes(s.allocated_byte_s)}·s, used "
            f"{fmt_bytes(s.used_byte_s)}·s, waste {fmt_bytes(s.waste_byte_s)}·s "
            f"({sm.format_percent(s.waste_fraction)} of the allocation)"
        )
        plot.add(
            f"<g><title>{escape(tip)}</title>"
            f'<rect x="{plot.left}" y="{y}" width="{wa:.1f}" height="{row_h - 12}" fill="{colour}" '
            f'fill-opacity="0.25" stroke="{colour}"/>'
            f'<rect x="{plot.left}" y="{y + 5}" width="{wu:.1f}" height="{row_h - 22}" '
            f'fill="{colour}"/>'
            "</g>"
        )
        plot.add(
            f'<text x="{plot.left - 8}" y="{y + row_h / 2:.1f}" text-anchor="end" class="label">'
            f"{escape(s.category)}</text>"
        )
        waste = (
            f"waste {fmt_bytes(s.waste_byte_s)}·s ({sm.format_percent(s.waste_fraction)})"
            if s.allocated_byte_s > 0
            else "no memory limit"
        )
        plot.add(
            f'<text x="{plot.left + max(wa, wu) + 8:.1f}" y="{y + row_h / 2:.1f}" class="label">'
            f"{escape(waste)}</text>"
        )
    items = [
        ("#888888", "hollow", "pale bar: allocated memory × wall time"),
        ("#888888", "box", "solid bar: measured peak × wall time"),
    ]
    return plot.svg(label="memory waste per category") + legend(items)
