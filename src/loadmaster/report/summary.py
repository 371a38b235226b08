"""Per-category summaries of task reports, as numbers and as plain-text tables.

Runs in the client (the CLI after a run, and the HTML report builder). It reads
a list of :class:`~loadmaster.results.TaskReport` and writes nothing; printing is
the caller's.

This module covers: grouping reports into tasks (a task retried after running
out of memory may have one report per attempt in the history, or only its last
one: both are handled), the per-category numbers the closing table and the HTML
report show (:class:`CategorySummary`), memory waste in byte·seconds, the
closing table as text (:func:`format_summary_table`) and one task's report in the
style of ``/usr/bin/time -v`` (:func:`format_task_report`).

This module does *not* cover: charts (``report/svg.py``), the page
(``report/html.py``), reading the history (``plan/history/``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loadmaster.results import Outcome, TaskReport
from loadmaster.sizes import format_size


@dataclass(frozen=True)
class CategorySummary:
    """What one category's tasks used and were given, in one run (or several).

    Attributes:
        category: the category's name.
        tasks: distinct tasks (not attempts).
        failures: tasks whose last attempt did not end ``ok``.
        retries: extra attempts beyond the first, summed over tasks.
        exhausted: attempts that ran out of a resource (and were retried or failed).
        peak_p50, peak_p90, peak_max: peak memory of the tasks' last attempts, bytes.
        mean_allocated: mean memory allocation of the last attempts, bytes
            (``None`` when no attempt had a memory limit).
        mean_peak: mean peak memory of the last attempts, bytes.
        efficiency: ``sum(peak · wall) / sum(allocated · wall)`` over attempts
            with a memory allocation, in 0..1 (``None`` when none had one).
        allocated_byte_s: memory·seconds allocated (every attempt counted).
        used_byte_s: memory·seconds of measured peaks (every attempt counted).
        wall_p50: median wall time of the last attempts, seconds.
        cpu_time: CPU seconds of every attempt.
    """

    category: str
    tasks: int
    failures: int
    retries: int
    exhausted: int
    peak_p50: int
    peak_p90: int
    peak_max: int
    mean_allocated: int | None
    mean_peak: int
    efficiency: float | None
    allocated_byte_s: float
    used_byte_s: float
    wall_p50: float
    cpu_time: float

    @property
    def waste_byte_s(self) -> float:
        """Allocated minus used memory·seconds (never negative)."""
        return max(0.0, self.allocated_byte_s - self.used_byte_s)

    @property
    def waste_fraction(self) -> float | None:
        """Waste as a fraction of what was allocated, or ``None`` if nothing was."""
        if self.allocated_byte_s <= 0:
            return None
        return self.waste_byte_s / self.allocated_byte_s

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (bytes as ints, seconds as floats)."""
        return {
            "category": self.category,
            "tasks": self.tasks,
            "failures": self.failures,
            "retries": self.retries,
            "exhausted": self.exhausted,
            "peak_memory_p50": self.peak_p50,
            "peak_memory_p90": self.peak_p90,
            "peak_memory_max": self.peak_max,
            "mean_allocated_memory": self.mean_allocated,
            "mean_peak_memory": self.mean_peak,
            "efficiency": self.efficiency,
            "allocated_byte_seconds": self.allocated_byte_s,
            "used_byte_seconds": self.used_byte_s,
            "waste_byte_seconds": self.waste_byte_s,
            "waste_fraction": self.waste_fraction,
            "wall_time_p50": self.wall_p50,
            "cpu_time": self.cpu_time,
        }


def quantile(values: Sequence[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of ``values`` by linear interpolation; 0 if empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def last_attempts(reports: Iterable[TaskReport]) -> list[TaskReport]:
    """Return one report per task (the one with the most attempts), in first-seen order."""
    best: dict[tuple[str, int], TaskReport] = {}
    for r in reports:
        key = (r.category, r.task_id)
        seen = best.get(key)
        if seen is None or (r.attempts, r.finished_at) >= (seen.attempts, seen.finished_at):
            best[key] = r
    return list(best.values())


def _byte_seconds(r: TaskReport) -> tuple[float, float]:
    """Return (allocated, used) memory·seconds of one attempt; allocated is 0 if unlimited."""
    wall = max(0.0, r.wall_time)
    allocated = float(r.allocation.memory or 0) * wall
    return allocated, float(r.peak_memory) * wall


def summarize(reports: Iterable[TaskReport]) -> list[CategorySummary]:
    """Return one :class:`CategorySummary` per category, in order of first appearance."""
    by_cat: dict[str, list[TaskReport]] = {}
    for r in reports:
        by_cat.setdefault(r.category, []).append(r)
    out = []
    for cat, attempts in by_cat.items():
        tasks = last_attempts(attempts)
        peaks = [float(t.peak_memory) for t in tasks]
        allocs = [t.allocation.memory for t in tasks if t.allocation.memory is not None]
        # A report whose task has several stored attempts counts its retries once:
        # attempts - 1 of the last attempt already includes the earlier ones.
        retries = sum(max(0, t.attempts - 1) for t in tasks)
        exhausted_stored = sum(1 for a in attempts if a.exhausted is not None)
        exhausted = max(
            exhausted_stored,
            sum(max(0, t.attempts - 1) + (1 if t.exhausted is not None else 0) for t in tasks),
        )
        alloc_bs = used_bs = limited_alloc_bs = limited_used_bs = 0.0
        for a in attempts:
            ab, ub = _byte_seconds(a)
            alloc_bs += ab
            used_bs += ub
            if a.allocation.memory is not None:
                limited_alloc_bs += ab
                limited_used_bs += ub
        # Tasks that ran for ~0 s would give 0/0: fall back to plain peak/allocation.
        if limited_alloc_bs > 0:
            efficiency: float | None = limited_used_bs / limited_alloc_bs
        elif allocs:
            limited_peaks = [t.peak_memory for t in tasks if t.allocation.memory is not None]
            efficiency = sum(limited_peaks) / max(1, sum(allocs))
        else:
            efficiency = None
        out.append(
            CategorySummary(
                category=cat,
                tasks=len(tasks),
                failures=sum(1 for t in tasks if t.outcome is not Outcome.OK),
                retries=retries,
                exhausted=exhausted,
                peak_p50=int(quantile(peaks, 0.5)),
                peak_p90=int(quantile(peaks, 0.9)),
                peak_max=int(max(peaks, default=0)),
                mean_allocated=int(sum(allocs) / len(allocs)) if allocs else None,
                mean_peak=int(sum(peaks) / len(peaks)) if peaks else 0,
                efficiency=efficiency,
                allocated_byte_s=alloc_bs,
                used_byte_s=used_bs,
                wall_p50=quantile([t.wall_time for t in tasks], 0.5),
                cpu_time=sum(a.cpu_time for a in attempts),
            )
        )
    return out


def total(summaries: Sequence[CategorySummary]) -> CategorySummary:
    """Return a row that adds up ``summaries`` (quantiles are not additive: p50/p90 are ``0``)."""
    alloc_bs = sum(s.allocated_byte_s for s in summaries)
    used_bs = sum(s.used_byte_s for s in summaries)
    with_alloc = [s for s in summaries if s.mean_allocated is not None]
    n_alloc = sum(s.tasks for s in with_alloc)
    n = sum(s.tasks for s in summaries)
    return CategorySummary(
        category="all",
        tasks=n,
        failures=sum(s.failures for s in summaries),
        retries=sum(s.retries for s in summaries),
        exhausted=sum(s.exhausted for s in summaries),
        peak_p50=0,
        peak_p90=0,
        peak_max=max((s.peak_max for s in summaries), default=0),
        mean_allocated=(
            int(sum((s.mean_allocated or 0) * s.tasks for s in with_alloc) / n_alloc)
            if n_alloc
            else None
        ),
        mean_peak=int(sum(s.mean_peak * s.tasks for s in summaries) / n) if n else 0,
        efficiency=(used_bs / alloc_bs) if alloc_bs > 0 else None,
        allocated_byte_s=alloc_bs,
        used_byte_s=used_bs,
        wall_p50=0.0,
        cpu_time=sum(s.cpu_time for s in summaries),
    )


def short_size(nbytes: float | None) -> str:
    """Return a byte count with three significant digits, e.g. ``"201 MiB"``, ``"1.25 GiB"``."""
    if nbytes is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, i = float(nbytes), 0
    while abs(value) >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{value:.0f} {units[i]}" if value >= 100 or i == 0 else f"{value:.3g} {units[i]}"


def format_percent(fraction: float | None) -> str:
    """Return ``0.734`` as ``"73%"``, ``None`` as ``"-"``."""
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return a plain-text table; the first column is left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


SUMMARY_HEADERS = (
    "category",
    "tasks",
    "failed",
    "retries",
    "peak p50",
    "peak max",
    "mean alloc",
    "mean peak",
    "efficiency",
    "waste",
)


def summary_row(s: CategorySummary) -> list[str]:
    """Return one row of the closing table for ``s``."""
    return [
        s.category,
        str(s.tasks),
        str(s.failures),
        str(s.retries),
        short_size(s.peak_p50) if s.category != "all" else "",
        short_size(s.peak_max),
        short_size(s.mean_allocated),
        short_size(s.mean_peak),
        format_percent(s.efficiency),
        format_percent(s.waste_fraction),
    ]


def format_summary_table(summaries: Sequence[CategorySummary]) -> str:
    """Return the closing table: one row per category, plus a total row when there are several.

    ``efficiency`` is measured memory·seconds over allocated memory·seconds;
    ``waste`` is its complement (the share of the allocation never used).
    """
    rows = [summary_row(s) for s in summaries]
    if len(summaries) > 1:
        rows.append(summary_row(total(summaries)))
    return format_table(SUMMARY_HEADERS, rows)


def format_seconds(seconds: float) -> str:
    """Return seconds with a precision that suits their size, e.g. ``"0.0123 s"``, ``"12.3 s"``."""
    if seconds < 0.1:
        return f"{seconds:.4f} s"
    if seconds < 100:
        return f"{seconds:.2f} s"
    return f"{seconds:.0f} s"


def format_task_report(report: TaskReport, *, command: str = "") -> str:
    """Return one task's report, one ``name: value`` line per measure, like ``time -v``."""
    alloc = report.allocation
    limits = ", ".join(
        f"{k}={v}"
        for k, v in (
            ("cores", f"{alloc.cores:g}" if alloc.cores is not None else None),
            ("memory", format_size(alloc.memory) if alloc.memory is not None else None),
            ("disk", format_size(alloc.disk) if alloc.disk is not None else None),
            ("wall_time", format_seconds(alloc.wall_time) if alloc.wall_time else None),
        )
        if v is not None
    )
    lines = [
        ("Command", command),
        ("Category", report.category),
        ("Exit status", str(report.exit_status)),
        ("Outcome", report.outcome.value + (f" ({report.exhausted})" if report.exhausted else "")),
        (
            "Peak memory (whole tree)",
            f"{format_size(report.peak_memory)} ({report.peak_memory} bytes)",
        ),
        (
            "Charged to its cgroup (page cache included)",
            "" if report.peak_charged is None
            else f"{format_size(report.peak_charged)} ({report.peak_charged} bytes)",
        ),
        ("CPU time (user+system)", format_seconds(report.cpu_time)),
        ("Wall time", format_seconds(report.wall_time)),
        ("Cores in use (average)", f"{report.cores:.2f}"),
        ("Disk written", f"{format_size(report.disk)} ({report.disk} bytes)"),
        ("Max processes at once", str(report.max_processes)),
        ("Attempts", str(report.attempts)),
        ("Allocation", limits or "unlimited"),
        ("Host", report.host),
        ("Peak measured by", report.measure_method.value),
    ]
    if report.error:
        lines.append(("Error", report.error))
    return "\n".join(f"\t{name}: {value}" for name, value in lines if value != "")
