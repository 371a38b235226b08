"""The sizing strategies: how much memory (and disk) a task's attempts get.

Runs in the client's scheduler thread, called by :class:`~loadmaster.plan.planner.Planner`
(never by the zygote or a task's process). A strategy reads a category's
observations (``CategoryState``) and the node's grant (``Resources``) and
returns allocations; it writes nothing but ``state.cache``, where it keeps what
it derived (a summary, a histogram, a fitted line) until the observations change,
and the running totals these are derived from (:class:`Running`: maxima, counts,
histogram buckets, the fitted lines' points), which are extended as observations
are appended rather than re-scanned: a refresh costs O(1) per new observation,
not O(window).

The package, one module per job (each strategy registers itself by name on import):

* ``rules.py``: grain, floors, fair share, growth on retry; ``running.py``: running totals;
* ``learned.py``, ``tovar.py``, ``size_aware.py``: the strategies; ``sizefit.py``: the fitting math.

The strategies:

* ``learned`` (the default): a generous fair share until the category has been
  measured once, then the largest peak seen plus a margin that shrinks with the
  number of measurements; retries double.
* ``fixed``: what the user said, else the fair share; retries double.
* ``max-seen``: the largest peak seen, rounded up (Work Queue's ``max`` mode).
* ``max-throughput`` and ``min-waste``: the job-sizing strategies of Tovar et al.,
  "A Job Sizing Strategy for High-Throughput Scientific Workflows", IEEE TPDS 29(2),
  2018 — the first allocation is an observed peak chosen from the empirical
  distribution; retries go to the largest peak seen, then to the whole node.
* ``size-aware``: memory as a least-squares line of the task's input size, with a
  margin from the residuals; ``learned`` where no good line exists.

Every strategy rounds memory up to :data:`GRAIN` (16 MiB), never returns more
than the node grants, and keeps the fields the user stated. Cores default to 1,
GPUs to 0, wall time to unlimited: strategies size memory and disk only.

This package does *not* cover: which allocation a user stated but the node cannot
hold (the scheduler rejects those), loading history (``plan/planner.py``), or
keeping a user-stated limit fixed on retry (the planner refuses to grow it before
a strategy is asked). See ``docs/sizing.md`` for the formulas and the reasons.
"""


from __future__ import annotations

from loadmaster.plan.strategies.learned import (
    EXHAUSTION_FLOOR_FACTOR,
    Fixed,
    Learned,
    MaxSeen,
    exhaustion_floor,
    learned_disk,
    learned_memory,
)
from loadmaster.plan.strategies.rules import (
    DISK_FACTOR,
    DISK_FLOOR,
    FAIR_SHARE_FLOOR,
    GRAIN,
    MIN_MEMORY,
    MIN_TASK_TIME_S,
    NEAR_NODE,
    RETRY_GROWTH,
    RETRY_OVER_USED,
    MiB,
    complete,
    fair_share,
    grow,
    margin_for,
    node_memory,
    round_up,
    task_cores,
)
from loadmaster.plan.strategies.running import (
    EXHAUSTION_WINDOW,
    RUNNING_PREFIX,
    Running,
    Summary,
    forget_derived,
    running,
    summarize,
)
from loadmaster.plan.strategies.size_aware import (
    SizeAware,
)
from loadmaster.plan.strategies.sizefit import (
    SIZE_K_RESIDUAL,
    SIZE_MIN_POINTS,
    SIZE_MIN_R2,
    SIZE_Z,
    LineFit,
    SizedPoints,
    fit_line,
    memory_fit_of,
    memory_size_fit,
    sized_points,
    wall_time_fit,
)
from loadmaster.plan.strategies.tovar import (
    Histogram,
    MaxThroughput,
    MinWaste,
    histogram,
    tovar_scores,
)

__all__ = [
    "DISK_FACTOR",
    "DISK_FLOOR",
    "EXHAUSTION_FLOOR_FACTOR",
    "EXHAUSTION_WINDOW",
    "FAIR_SHARE_FLOOR",
    "GRAIN",
    "MIN_MEMORY",
    "MIN_TASK_TIME_S",
    "NEAR_NODE",
    "RETRY_GROWTH",
    "RETRY_OVER_USED",
    "RUNNING_PREFIX",
    "SIZE_K_RESIDUAL",
    "SIZE_MIN_POINTS",
    "SIZE_MIN_R2",
    "SIZE_Z",
    "Fixed",
    "Histogram",
    "Learned",
    "LineFit",
    "MaxSeen",
    "MaxThroughput",
    "MiB",
    "MinWaste",
    "Running",
    "SizeAware",
    "SizedPoints",
    "Summary",
    "complete",
    "exhaustion_floor",
    "fair_share",
    "fit_line",
    "forget_derived",
    "grow",
    "histogram",
    "learned_disk",
    "learned_memory",
    "margin_for",
    "memory_fit_of",
    "memory_size_fit",
    "node_memory",
    "round_up",
    "running",
    "sized_points",
    "summarize",
    "task_cores",
    "tovar_scores",
    "wall_time_fit",
]
