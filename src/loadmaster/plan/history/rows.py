"""Rows of the history: the columns, the dataclasses read back, and the conversions.

Who runs this code: whichever thread calls :class:`~loadmaster.plan.history.History`
(the client's or the engine's), under the History's lock; pure functions, no I/O.

What it reads and writes: nothing itself; it turns a :class:`TaskReport` into the
``reports`` row ``store.py`` inserts and rows back into reports and
:class:`RunInfo`. The columns are those of the newest schema (``schema.py``).

This module does *not* cover: the SQL of summaries and observations
(``queries.py``), the schema and its migrations (``schema.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadmaster.results import MeasureMethod, Outcome, TaskReport
from loadmaster.spec import Resources

# Columns of `reports` in the order _report_row writes and _row_report reads them.
# Columns of `reports` in the order _report_row writes and _row_report reads them.
REPORT_COLUMNS = (
    "run_id",
    "task_id",
    "category",
    "peak_memory",
    "cpu_time",
    "wall_time",
    "cores",
    "disk",
    "max_processes",
    "alloc_cores",
    "alloc_memory",
    "alloc_disk",
    "alloc_gpus",
    "alloc_wall_time",
    "attempts",
    "exit_status",
    "host",
    "measure_method",
    "outcome",
    "exhausted",
    "started_at",
    "finished_at",
    "input_size",
    "error",
    "extra",
    "peak_charged",  # schema version 2
)
INSERT_REPORT = (
    f"INSERT INTO reports ({', '.join(REPORT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(REPORT_COLUMNS))})"
)
REPORT_FIELDS = ", ".join(REPORT_COLUMNS[1:])

RUN_COLUMNS = (
    "r.run_id, r.label, r.host, r.started_at, r.finished_at, "
    "r.cap_cores, r.cap_memory, r.cap_disk, r.cap_gpus, r.cap_wall_time, "
    "(SELECT count(*) FROM reports p WHERE p.run_id = r.run_id)"
)


@dataclass(frozen=True)
class RunInfo:
    """One executor session recorded in the history.

    ``started_at``/``finished_at`` are ``time.time()`` values (``finished_at``
    is ``None`` while the run is going on or if it never finished);
    ``capacity`` is what the node granted the run; ``tasks`` counts its stored
    reports.
    """

    run_id: int
    label: str
    host: str
    started_at: float
    finished_at: float | None
    capacity: Resources
    tasks: int


@dataclass(frozen=True)
class CategorySummary:
    """What one category did, over the whole history or one run.

    Attributes:
        category: the category's name.
        tasks: stored reports (one per task).
        failures: tasks whose outcome was not ``ok`` (failed, exhausted, lost).
        retries: extra attempts, ``sum(attempts - 1)``.
        exhausted: tasks whose last attempt ran out of a resource.
        peak_memory_p50: the lower median of ``peak_memory`` in bytes (an
            observed value), over tasks that were not lost; 0 if none.
        peak_memory_max: the largest ``peak_memory`` in bytes, same tasks.
        mean_allocated_memory: mean allocated memory in bytes over the tasks
            that had a memory allocation, or ``None``.
        unused_memory_byte_seconds: allocated but unused memory integrated over
            time, ``sum(max(alloc_memory - peak_memory, 0) * wall_time)`` over
            tasks with a memory allocation: the waste an allocation policy
            should shrink.
        total_wall_time: seconds, summed.
        total_cpu_time: CPU seconds, summed.
    """

    category: str
    tasks: int
    failures: int
    retries: int
    exhausted: int
    peak_memory_p50: int
    peak_memory_max: int
    mean_allocated_memory: float | None
    unused_memory_byte_seconds: float
    total_wall_time: float
    total_cpu_time: float


#: TaskReport gains ``peak_charged`` with the page-cache measurement (issue 17); until
#: that field exists the column is written NULL and not read back. Drop this and use
#: the field directly once results.py has it.
_HAS_PEAK_CHARGED = "peak_charged" in {f.name for f in dataclasses.fields(TaskReport)}


def filters(*, category: str | None = None, run_id: int | None = None) -> tuple[str, list[Any]]:
    """Return a ``WHERE`` clause (or ``""``) and its parameters for these filters."""
    clauses: list[str] = []
    params: list[Any] = []
    if category is not None:
        clauses.append("category = ?")
        params.append(category)
    if run_id is not None:
        clauses.append("run_id = ?")
        params.append(run_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def nan_float(value: Any) -> float:
    """Return ``value`` as a float, ``NULL`` as NaN."""
    # SQLite stores NaN as NULL; a NOT NULL float comes back as NaN.
    return math.nan if value is None else float(value)


def _json_default(value: Any) -> str:
    return repr(value)


def report_row(run_id: int, r: TaskReport) -> tuple[Any, ...]:
    """Return the ``reports`` row of ``r`` in :data:`REPORT_COLUMNS` order."""
    a = r.allocation
    return (
        run_id,
        r.task_id,
        r.category,
        r.peak_memory,
        r.cpu_time,
        r.wall_time,
        r.cores,
        r.disk,
        r.max_processes,
        a.cores,
        a.memory,
        a.disk,
        a.gpus,
        a.wall_time,
        r.attempts,
        r.exit_status,
        r.host,
        MeasureMethod(r.measure_method).value,
        Outcome(r.outcome).value,
        r.exhausted,
        r.started_at,
        r.finished_at,
        r.input_size,
        r.error,
        json.dumps(r.extra, default=_json_default, ensure_ascii=False),
        getattr(r, "peak_charged", None),
    )


def row_report(row: Sequence[Any]) -> TaskReport:
    """Return the TaskReport of a row selected as :data:`REPORT_FIELDS`."""
    (
        task_id,
        category,
        peak_memory,
        cpu_time,
        wall_time,
        cores,
        disk,
        max_processes,
        a_cores,
        a_memory,
        a_disk,
        a_gpus,
        a_wall_time,
        attempts,
        exit_status,
        host,
        measure_method,
        outcome,
        exhausted,
        started_at,
        finished_at,
        input_size,
        error,
        extra,
        peak_charged,
    ) = row[:25]
    more: dict[str, Any] = {"peak_charged": peak_charged} if _HAS_PEAK_CHARGED else {}
    return TaskReport(
        task_id=task_id,
        category=category,
        peak_memory=peak_memory,
        cpu_time=nan_float(cpu_time),
        wall_time=nan_float(wall_time),
        cores=nan_float(cores),
        disk=disk,
        max_processes=max_processes,
        allocation=cached_resources(a_cores, a_memory, a_disk, a_gpus, a_wall_time),
        attempts=attempts,
        exit_status=exit_status,
        host=host,
        measure_method=MeasureMethod(measure_method),
        outcome=Outcome(outcome),
        exhausted=exhausted,
        started_at=nan_float(started_at),
        finished_at=nan_float(finished_at),
        input_size=input_size,
        error=error,
        extra=json.loads(extra),
        **more,
    )


@functools.lru_cache(maxsize=4096)
def cached_resources(
    cores: float | None,
    memory: int | None,
    disk: int | None,
    gpus: int | None,
    wall_time: float | None,
) -> Resources:
    """Return the (shared, immutable) Resources of these column values."""
    # Cached: Resources is immutable and a history holds few distinct allocations;
    # this halves the time reports() takes for 100,000 rows.
    return Resources(cores=cores, memory=memory, disk=disk, gpus=gpus, wall_time=wall_time)


def row_run(row: Sequence[Any]) -> RunInfo:
    """Return the RunInfo of a row selected as :data:`RUN_COLUMNS`."""
    run_id, label, host, started, finished, cores, memory, disk, gpus, wall, tasks = row
    return RunInfo(
        run_id=int(run_id),
        label=str(label),
        host=str(host),
        started_at=float(started),
        finished_at=None if finished is None else float(finished),
        capacity=cached_resources(cores, memory, disk, gpus, wall),
        tasks=int(tasks),
    )
