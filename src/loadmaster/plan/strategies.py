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

This module covers, each registered by name:

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

This module does *not* cover: which allocation a user stated but the node cannot
hold (the scheduler rejects those), loading history (``plan/planner.py``), or
keeping a user-stated limit fixed on retry (the planner refuses to grow it before
a strategy is asked). See ``docs/sizing.md`` for the formulas and the reasons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from loadmaster.errors import InvalidSpec
from loadmaster.plan.strategy import CategoryState, Observation, register
from loadmaster.spec import Resources

MiB = 1024 * 1024

GRAIN = 16 * MiB
"""Every memory and disk allocation is a multiple of this (16 MiB): finer
than Work Queue's 250 MB histogram buckets, coarse enough that allocations of
one category repeat and pack well."""

MIN_MEMORY = 32 * MiB
"""No memory allocation is smaller (an interpreter and its libraries need this much)."""

FAIR_SHARE_FLOOR = 256 * MiB
"""The fair share of an unmeasured category is at least this, even on a node with
little memory per core."""

DISK_FLOOR = 1024 * MiB
"""A learned disk allocation is at least 1 GiB: disk is rarely the scarce
resource, and an early disk kill costs a whole attempt."""

DISK_FACTOR = 2.0
"""A learned disk allocation is twice the most written by a measured attempt."""

RETRY_GROWTH = 2.0
"""A retry after exhaustion gets at least this many times the previous allocation..."""

RETRY_OVER_USED = 1.25
"""...and at least this many times what the exhausted attempt had used."""

NEAR_NODE = 0.75
"""A memory retry whose doubling would pass this share of the node grows by
``RETRY_OVER_USED`` × what was used instead (at least to this share), once: an
attempt that takes the whole node runs alone and first waits for the node to
empty, so the step before it is worth trying."""

MIN_TASK_TIME_S = 1e-3
"""Tovar's formulas weight each observed peak by its tasks' wall time; an instant
task still counts for 1 ms so that the weights never all vanish."""


def round_up(nbytes: float, grain: int = GRAIN) -> int:
    """Return ``nbytes`` rounded up to a multiple of ``grain`` (0 stays 0)."""
    whole = math.ceil(nbytes)
    return -(-whole // grain) * grain


def margin_for(completed: int) -> float:
    """Return the ``learned`` margin over the largest peak after ``completed`` measurements.

    50 % after one measurement, 25 % after two to four, 10 % from five on: one
    sample says little about the spread of a category; five say enough that the
    largest of them plus 10 % covers the bulk of the rest (and retries cover the tail).
    """
    if completed <= 1:
        return 0.50
    if completed <= 4:
        return 0.25
    return 0.10


def node_memory(node: Resources) -> int:
    """Return the node's memory grant in bytes.

    Raises:
        InvalidSpec: the node states no memory (the planner needs a finite grant).
    """
    if node.memory is None:
        raise InvalidSpec(
            f"node {node!r} states no memory; the planner sizes tasks against the node's "
            "grant, so pass the detected capacity (node.capacity.detect_capacity())"
        )
    return node.memory


def fair_share(node: Resources, cores: float) -> int:
    """Return the memory an unmeasured task of ``cores`` cores gets: its share of the node.

    ``node.memory / node.cores × cores``, rounded down to :data:`GRAIN`, at least
    :data:`FAIR_SHARE_FLOOR`, at most the node's memory. A node without a core count
    counts as one core.
    """
    memory = node_memory(node)
    node_cores = node.cores or 1.0
    share = int(memory * min(cores, node_cores) / node_cores) // GRAIN * GRAIN
    return min(memory, max(FAIR_SHARE_FLOOR, share))


def task_cores(requested: Resources | None, node: Resources) -> float:
    """Return the cores a task gets: as requested, else one (or the node's, if fewer)."""
    if requested is not None and requested.cores is not None:
        return requested.cores
    return min(1.0, node.cores) if node.cores is not None else 1.0


def complete(
    requested: Resources | None, node: Resources, memory: int, disk: int | None
) -> Resources:
    """Return the full allocation: the user's fields as stated, the rest filled in.

    ``memory`` and ``disk`` are the strategy's sizes (capped at the node here);
    cores default to 1, GPUs to 0, wall time to unlimited (``None``).
    """
    mem_cap = node_memory(node)
    memory = min(max(memory, MIN_MEMORY), mem_cap)
    if disk is not None and node.disk is not None:
        disk = min(disk, node.disk)
    if requested is None:
        cores = min(1.0, node.cores) if node.cores is not None else 1.0
        return Resources(cores=cores, memory=memory, disk=disk, gpus=0)
    return Resources(
        cores=requested.cores if requested.cores is not None else task_cores(None, node),
        memory=requested.memory if requested.memory is not None else memory,
        disk=requested.disk if requested.disk is not None else disk,
        gpus=requested.gpus if requested.gpus is not None else 0,
        wall_time=requested.wall_time,
    )


def grow(previous: Resources, resource: str, used: float, node: Resources) -> Resources | None:
    """Return ``previous`` with ``resource`` grown for a retry, or ``None`` if it cannot grow.

    The new size is ``max(2 × previous, 1.25 × used)``, rounded up to :data:`GRAIN`
    (memory, disk), capped at the node. Memory near the node grows in a smaller
    step first: when ``previous`` is under :data:`NEAR_NODE` (¾) of the node and
    the doubling would pass it, ``max(1.25 × used, ¾ node)``. ``None`` when the
    previous allocation was already the node's (or was unlimited, so nothing
    bigger exists).

    Raises:
        InvalidSpec: ``resource`` is not ``"memory"``, ``"disk"`` or ``"wall_time"``.
    """
    if resource == "memory":
        cap: float | None = node_memory(node)
    elif resource == "disk":
        cap = node.disk
    elif resource == "wall_time":
        cap = None
    else:
        raise InvalidSpec(
            f"retry: unknown resource {resource!r}; expected 'memory', 'disk' or 'wall_time'"
        )
    prev = getattr(previous, resource)
    if prev is None or (cap is not None and prev >= cap):
        return None
    target = max(prev * RETRY_GROWTH, used * RETRY_OVER_USED)
    if resource == "memory" and cap is not None and prev < cap * NEAR_NODE < target:
        target = max(used * RETRY_OVER_USED, cap * NEAR_NODE)
    if resource == "wall_time":
        return replace(previous, wall_time=float(target))
    new = round_up(target)
    if cap is not None:
        new = min(new, int(cap))
    if new <= prev:
        return None
    return replace(previous, **{resource: new})


EXHAUSTION_WINDOW = 10
"""An exhausted attempt raises ``learned``'s floor only while it is among the
category's newest this-many observations: long enough to cover the tasks
started while its retry runs, short enough that one old outlier (a task that
finally failed, kept in the history) does not inflate every later task."""


@dataclass(frozen=True, slots=True)
class Summary:
    """What the simple strategies need of a category, computed once per change.

    ``completed``: measured attempts that ran to the end. ``max_peak`` and
    ``max_disk``: the largest of those (0 if none). ``max_peak_any``: the largest
    peak of any attempt, exhausted ones included. ``exhausted_memory`` and
    ``exhausted_disk``: the allocations (memory) or amounts written (disk) of the
    exhausted attempts among the newest :data:`EXHAUSTION_WINDOW` observations
    that no completed measurement explains (at or above its largest).
    """

    completed: int
    max_peak: int
    max_peak_any: int
    max_disk: int
    exhausted_memory: tuple[int, ...]
    exhausted_disk: tuple[int, ...]


class Running:
    """Totals over a category's observations, extended as observations are appended.

    Kept in ``state.cache`` under a key starting with :data:`RUNNING_PREFIX`, which
    :func:`forget_derived` keeps: an observation appended costs O(1) here instead
    of a re-scan of the whole window at every refresh (the planner refreshes up to
    every observation; a re-scan of 1,000 observations costs ~100 µs). The totals
    catch up lazily (:meth:`catch_up`) with whatever was appended since, so a
    caller that appends without telling anyone is still counted; a list that
    shrank or whose absorbed part was replaced (``CategoryState.trim``) is noticed
    and the totals are rebuilt from the start. Subclasses say what one observation
    adds (:meth:`absorb`); the results are the same, to the bit, as a full scan in
    order (integer maxima and counts; float sums are only ever formed by the
    consumers, from lists kept in observation order).
    """

    __slots__ = ("_absorbed", "_first", "_last")

    def __init__(self) -> None:
        self._absorbed = 0
        self._first: Observation | None = None
        self._last: Observation | None = None

    def absorb(self, o: Observation) -> None:
        """Add one observation to the totals (called in observation order)."""
        raise NotImplementedError

    def catch_up(self, observations: list[Observation]) -> bool:
        """Absorb the observations appended since the last call.

        Returns ``False`` (absorbing nothing) when ``observations`` is no longer
        the list absorbed so far plus new ones at its end: the caller must then
        start from a fresh instance.
        """
        n = self._absorbed
        total = len(observations)
        if n and (total < n or observations[0] is not self._first or observations[n - 1] is not self._last):
            return False
        if total == n:
            return True
        absorb = self.absorb
        for i in range(n, total):
            absorb(observations[i])
        self._absorbed = total
        self._first = observations[0]
        self._last = observations[-1]
        return True


RUNNING_PREFIX = "running:"
"""``state.cache`` keys of :class:`Running` totals start with this; :func:`forget_derived` keeps them."""

_R = TypeVar("_R", bound=Running)


def running(state: CategoryState, key: str, factory: Callable[[], _R]) -> _R:
    """Return the :class:`Running` totals ``key`` of ``state``, caught up with its observations.

    ``key`` must start with :data:`RUNNING_PREFIX`. Created (and filled with every
    observation) on first use or when the observations were changed other than
    by appending.
    """
    totals = state.cache.get(key)
    if totals is None or not totals.catch_up(state.observations):
        totals = factory()
        totals.catch_up(state.observations)
        state.cache[key] = totals
    return cast(_R, totals)


def forget_derived(state: CategoryState) -> None:
    """Clear ``state.cache`` of everything derived, keeping the :class:`Running` totals.

    What the planner calls when a category's allocation must be recomputed:
    summaries, histograms and fitted lines are derived afresh from the totals,
    which catch up with the new observations instead of being rebuilt.
    """
    cache = state.cache
    kept = {k: v for k, v in cache.items() if k.startswith(RUNNING_PREFIX)}
    cache.clear()
    cache.update(kept)


class _SummaryTotals(Running):
    """Running totals behind :class:`Summary` (internal)."""

    __slots__ = ("completed", "max_disk", "max_peak", "max_peak_any")

    def __init__(self) -> None:
        super().__init__()
        self.completed = 0
        self.max_peak = 0
        self.max_peak_any = 0
        self.max_disk = 0

    def absorb(self, o: Observation) -> None:
        """Count ``o`` and raise the maxima it exceeds."""
        peak = o.peak_memory
        if peak > self.max_peak_any:
            self.max_peak_any = peak
        if o.exhausted is None:
            self.completed += 1
            if peak > self.max_peak:
                self.max_peak = peak
            if o.disk > self.max_disk:
                self.max_disk = o.disk


def summarize(state: CategoryState) -> Summary:
    """Return (and cache in ``state.cache``) the :class:`Summary` of ``state``.

    Counts and maxima come from running totals (:class:`Running`); only the
    newest :data:`EXHAUSTION_WINDOW` observations are looked at here.
    """
    cached = state.cache.get("summary")
    if cached is not None:
        return cached
    totals = running(state, RUNNING_PREFIX + "summary", _SummaryTotals)
    max_peak = totals.max_peak
    max_disk = totals.max_disk
    exhausted_mem: list[int] = []
    exhausted_disk: list[int] = []
    for o in state.observations[-EXHAUSTION_WINDOW:]:
        if o.exhausted == "memory":
            exhausted_mem.append(o.allocated_memory or o.peak_memory)
        elif o.exhausted == "disk":
            exhausted_disk.append(o.disk)
    # An exhausted attempt below the largest completed peak is explained by it
    # (its retry succeeded at a size we already cover); one at or above it is
    # not, and its need is known only to exceed its allocation: plan for its retry.
    summary = Summary(
        totals.completed,
        max_peak,
        totals.max_peak_any,
        max_disk,
        tuple(a for a in exhausted_mem if a >= max_peak),
        tuple(d for d in exhausted_disk if d >= max_disk),
    )
    state.cache["summary"] = summary
    return summary


EXHAUSTION_FLOOR_FACTOR = 1.25
"""An unexplained recent exhaustion at allocation A makes ``learned`` give the
category's next first attempts at least A × this: that task needed more than A,
but its siblings may need less (memory grows with input), so not the 2 × A its
own retry gets — doubling a fair share on 2 cores is the whole node, and every
waiting sibling would then run alone (seen in ``bench/packing.py``)."""


def exhaustion_floor(exhausted: tuple[int, ...], cap: int | None) -> int:
    """Return :data:`EXHAUSTION_FLOOR_FACTOR` × the largest unexplained exhaustion below ``cap`` (0 if none).

    One that already had the whole node (``>= cap``) is ignored: no allocation
    can help that task, and it should not make every other task take the node.
    """
    return int(EXHAUSTION_FLOOR_FACTOR * max((a for a in exhausted if cap is None or a < cap), default=0))


def learned_disk(summary: Summary, node: Resources) -> int | None:
    """Return the learned disk allocation: ``None`` (unlimited) until measured.

    Then ``max(1 GiB, 2 × the most written)``, rounded up, and at least 1.25 ×
    an unexplained recent disk exhaustion.
    """
    floor = exhaustion_floor(summary.exhausted_disk, node.disk)
    if summary.completed == 0 and floor == 0:
        return None
    return max(DISK_FLOOR, round_up(summary.max_disk * DISK_FACTOR), round_up(floor))


def learned_memory(summary: Summary, node: Resources, cores: float) -> int:
    """Return the ``learned`` first-attempt memory (see :class:`Learned`)."""
    if summary.completed == 0:
        base = fair_share(node, cores)
    else:
        base = round_up(summary.max_peak * (1.0 + margin_for(summary.completed)))
    floor = round_up(exhaustion_floor(summary.exhausted_memory, node_memory(node)))
    return max(base, floor, MIN_MEMORY)


class _GrowOnRetry:
    """A retry grows the resource that ran out (:func:`grow`), up to the node."""

    def retry_allocation(
        self,
        state: CategoryState,
        previous: Resources,
        resource: str,
        used: float,
        node: Resources,
    ) -> Resources | None:
        """Return ``previous`` grown by :func:`grow`, or ``None`` at the node."""
        return grow(previous, resource, used, node)


@register("learned")
class Learned(_GrowOnRetry):
    """The default: measure generously, then learn from few tasks; history first.

    First attempt, memory:

    * no completed measurement: the node's fair share for the task's cores,
      ``node.memory / node.cores × cores`` (at least 256 MiB) — generous, but it
      never makes memory the scarcer resource than cores, so the node stays full
      while the category is measured (Work Queue gives each of a new category's
      first 25 tasks a whole worker);
    * after ``n ≥ 1`` completed: ``max peak × (1 + margin(n))``, margin 50 % at
      n = 1, 25 % at n = 2–4, 10 % from n = 5, rounded up to 16 MiB, at least 32 MiB;
    * an exhausted attempt among the newest 10 observations, not explained by a
      completed peak and not already at the whole node, raises the allocation to
      at least 1.25 × its allocation (its own retry gets twice).

    Disk: unlimited until measured, then ``max(1 GiB, 2 × the most written)``.
    Retry: :func:`grow` (``max(2 × previous, 1.25 × used)`` up to the node, one
    smaller step below it); ``None`` at the node.
    """

    name = "learned"

    def first_allocation(
        self,
        state: CategoryState,
        requested: Resources | None,
        node: Resources,
        input_size: int | None = None,
    ) -> Resources:
        """Return the first attempt's allocation (see the class docstring)."""
        s = summarize(state)
        cores = task_cores(requested, node)
        return complete(requested, node, learned_memory(s, node, cores), learned_disk(s, node))

    def describe(self, state: CategoryState, node: Resources) -> dict[str, Any]:
        """Return the numbers behind the first allocation."""
        s = summarize(state)
        return {
            "rule": "fair share" if s.completed == 0 else "max peak × (1 + margin)",
            "completed": s.completed,
            "max_peak": s.max_peak,
            "margin": margin_for(s.completed) if s.completed else None,
            "exhausted_floor": exhaustion_floor(s.exhausted_memory, node_memory(node)),
        }


@register("fixed")
class Fixed(_GrowOnRetry):
    """No learning: what the user said, else the fair share; retries double.

    Memory is the user's, else ``node.memory / node.cores × cores`` (at least
    256 MiB); disk the user's, else unlimited. A retry doubles (at least
    ``1.25 × used``) up to the node, unless the user fixed that resource (the
    planner then refuses before asking).
    """

    name = "fixed"

    def first_allocation(
        self,
        state: CategoryState,
        requested: Resources | None,
        node: Resources,
        input_size: int | None = None,
    ) -> Resources:
        """Return the requested fields, the fair share for memory otherwise."""
        return complete(requested, node, fair_share(node, task_cores(requested, node)), None)


@register("max-seen")
class MaxSeen(_GrowOnRetry):
    """The largest peak seen, rounded up (Work Queue's ``max`` allocation mode).

    First attempt: the fair share until a measurement exists, then
    ``round_up(max peak + 16 MiB / 3)`` over every attempt, exhausted ones
    included (their peak is a lower bound of their need), as Work Queue adds a
    third of its bucket before rounding up. Disk as ``learned``. Retry as ``learned``.
    """

    name = "max-seen"

    def first_allocation(
        self,
        state: CategoryState,
        requested: Resources | None,
        node: Resources,
        input_size: int | None = None,
    ) -> Resources:
        """Return the largest peak seen, rounded up; the fair share before any."""
        s = summarize(state)
        if not state.observations:
            memory = fair_share(node, task_cores(requested, node))
        else:
            memory = round_up(s.max_peak_any + GRAIN // 3)
        return complete(requested, node, memory, learned_disk(s, node))

    def describe(self, state: CategoryState, node: Resources) -> dict[str, Any]:
        """Return the largest peak the allocation is based on."""
        return {"max_peak_any": summarize(state).max_peak_any}


@dataclass(frozen=True, slots=True)
class Histogram:
    """Completed peaks bucketed for Tovar's formulas.

    ``values``: distinct bucket values (bytes, each a completed peak rounded up to
    :data:`GRAIN`, at least :data:`MIN_MEMORY`), ascending. ``counts``: tasks per
    bucket. ``times``: summed wall time per bucket (seconds, each task at least
    :data:`MIN_TASK_TIME_S`).
    """

    values: tuple[int, ...]
    counts: tuple[int, ...]
    times: tuple[float, ...]


class _HistogramTotals(Running):
    """Running buckets behind :class:`Histogram`: bucket -> [tasks, summed wall time] (internal)."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        super().__init__()
        self.buckets: dict[int, list[float]] = {}

    def absorb(self, o: Observation) -> None:
        """Add a completed ``o`` to its bucket (exhausted ones are not counted)."""
        if o.exhausted is not None:
            return
        key = max(MIN_MEMORY, round_up(o.peak_memory))
        entry = self.buckets.get(key)
        if entry is None:
            entry = self.buckets[key] = [0, 0.0]
        entry[0] += 1
        entry[1] += max(o.wall_time, MIN_TASK_TIME_S)


def histogram(state: CategoryState) -> Histogram:
    """Return (and cache) the :class:`Histogram` of ``state``'s completed peaks."""
    cached = state.cache.get("histogram")
    if cached is not None:
        return cached
    buckets = running(state, RUNNING_PREFIX + "histogram", _HistogramTotals).buckets
    keys = sorted(buckets)
    h = Histogram(
        tuple(keys), tuple(int(buckets[k][0]) for k in keys), tuple(buckets[k][1] for k in keys)
    )
    state.cache["histogram"] = h
    return h


def tovar_scores(h: Histogram, objective: str) -> list[float]:
    """Return Tovar's objective for each candidate first allocation ``h.values[i]``.

    With ``N`` tasks, ``a_m = max(values)``, ``P(r ≤ a)`` the share of tasks whose
    peak fits in ``a``, ``τ = Σ times / N`` (the mean task time) and
    ``τ_>(a) = Σ_{r > a} times / N`` (the mean time, per task, of those that do
    not fit and run again at ``a_m``):

    * ``"waste"``: expected resource-time per task, to minimise:
      ``E(a) = a·τ + a_m·τ_>(a)`` (every task first holds ``a``; those that do
      not fit hold ``a_m`` again).
    * ``"throughput"``: expected tasks per unit of time per ``a_m`` of resource,
      to maximise: ``T(a) = (P(r ≤ a)·a_m / a + P(r > a)) / (τ + τ_>(a))``.
    """
    n_total = sum(h.counts)
    a_m = h.values[-1]
    tau = sum(h.times) / n_total
    scores: list[float] = []
    time_above = sum(h.times)
    count_upto = 0
    for value, count, time in zip(h.values, h.counts, h.times, strict=True):
        count_upto += count
        time_above -= time
        tau_above = max(time_above, 0.0) / n_total
        if objective == "waste":
            scores.append(value * tau + a_m * tau_above)
        else:
            p_fit = count_upto / n_total
            scores.append((p_fit * a_m / value + (1.0 - p_fit)) / (tau + tau_above))
    return scores


class _Tovar:
    """Shared body of ``max-throughput`` and ``min-waste``."""

    name = ""
    objective = ""

    def choose(self, state: CategoryState) -> tuple[int, int] | None:
        """Return ``(first allocation, a_m)`` chosen from the histogram, or ``None`` if empty."""
        cached = state.cache.get(f"tovar-{self.objective}")
        if cached is not None:
            return cached
        h = histogram(state)
        if not h.values:
            return None
        scores = tovar_scores(h, self.objective)
        best = 0
        for i, score in enumerate(scores):
            # Strict comparison: on a tie the smaller allocation wins, as in Work Queue.
            better = score < scores[best] if self.objective == "waste" else score > scores[best]
            if better:
                best = i
        chosen = (h.values[best], h.values[-1])
        state.cache[f"tovar-{self.objective}"] = chosen
        return chosen

    def first_allocation(
        self,
        state: CategoryState,
        requested: Resources | None,
        node: Resources,
        input_size: int | None = None,
    ) -> Resources:
        """Return the chosen observed peak; the ``learned`` sizes before any measurement."""
        s = summarize(state)
        chosen = self.choose(state)
        if chosen is None:
            memory = learned_memory(s, node, task_cores(requested, node))
        else:
            memory = chosen[0]
        return complete(requested, node, memory, learned_disk(s, node))

    def retry_allocation(
        self,
        state: CategoryState,
        previous: Resources,
        resource: str,
        used: float,
        node: Resources,
    ) -> Resources | None:
        """Memory: the largest peak seen (``a_m``), then the whole node; disk: :func:`grow`."""
        if resource != "memory":
            return grow(previous, resource, used, node)
        cap = node_memory(node)
        prev = previous.memory or 0
        if prev >= cap:
            return None
        chosen = self.choose(state)
        if chosen is not None and chosen[1] > prev:
            return replace(previous, memory=min(chosen[1], cap))
        return replace(previous, memory=cap)

    def describe(self, state: CategoryState, node: Resources) -> dict[str, Any]:
        """Return the histogram size, the chosen allocation and ``a_m``."""
        chosen = self.choose(state)
        h = histogram(state)
        return {
            "objective": self.objective,
            "buckets": len(h.values),
            "chosen": chosen[0] if chosen else None,
            "a_m": chosen[1] if chosen else None,
        }


@register("max-throughput")
class MaxThroughput(_Tovar):
    """Tovar et al.'s first allocation maximising expected throughput (:func:`tovar_scores`).

    Before any measurement, the ``learned`` sizes. Retry: the largest peak seen,
    then the whole node.
    """

    name = "max-throughput"
    objective = "throughput"


@register("min-waste")
class MinWaste(_Tovar):
    """Tovar et al.'s first allocation minimising expected waste (:func:`tovar_scores`).

    Before any measurement, the ``learned`` sizes. Retry: the largest peak seen,
    then the whole node.
    """

    name = "min-waste"
    objective = "waste"


SIZE_MIN_POINTS = 5
"""``size-aware`` fits a line only over at least this many completed measurements
that carry an input size..."""

SIZE_MIN_R2 = 0.8
"""...and uses it only if it explains at least this share of the variance (R²)."""

SIZE_K_RESIDUAL = 1.25
"""Margin: at least this many times the largest absolute residual of the fit..."""

SIZE_Z = 3.0
"""...and at least this many standard errors of a new prediction (which grows away
from the sizes measured, so extrapolating to a bigger input adds margin)."""


@dataclass(frozen=True, slots=True)
class LineFit:
    """A least-squares line ``y = a + b·x`` with what its margin needs.

    ``r2``: coefficient of determination; ``max_abs_residual``; ``se``: the residual
    standard error (``sqrt(SSE / (n − 2))``); ``mean_x``, ``sxx``: for the
    prediction's standard error at a new ``x``.
    """

    a: float
    b: float
    r2: float
    max_abs_residual: float
    se: float
    n: int
    mean_x: float
    sxx: float

    def predict(self, x: float) -> float:
        """Return ``a + b·x``."""
        return self.a + self.b * x

    def margin(self, x: float) -> float:
        """Return the safety margin at ``x``.

        ``max(1.25·max|res|, 3·se·sqrt(1 + 1/n + (x − x̄)²/Sxx))``.
        """
        spread = self.se * math.sqrt(1.0 + 1.0 / self.n + (x - self.mean_x) ** 2 / self.sxx)
        return max(SIZE_K_RESIDUAL * self.max_abs_residual, SIZE_Z * spread)

    def as_dict(self) -> dict[str, float]:
        """Return the fit's numbers for ``describe``."""
        return {
            "a": self.a,
            "b": self.b,
            "r2": self.r2,
            "max_abs_residual": self.max_abs_residual,
            "residual_margin": SIZE_K_RESIDUAL * self.max_abs_residual,
            "se": self.se,
            "n": self.n,
        }


def fit_line(xs: list[float], ys: list[float]) -> LineFit | str:
    """Return the least-squares line through ``(xs, ys)``, or why there is none."""
    n = len(xs)
    if n < SIZE_MIN_POINTS:
        return f"{n} measurements with an input size, fewer than {SIZE_MIN_POINTS}"
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    syy = sum((y - mean_y) ** 2 for y in ys)
    if sxx <= 0.0:
        return "every measurement has the same input size"
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx
    a = mean_y - b * mean_x
    residuals = [y - (a + b * x) for x, y in zip(xs, ys, strict=True)]
    sse = sum(r * r for r in residuals)
    r2 = 1.0 - sse / syy if syy > 0.0 else 0.0
    se = math.sqrt(sse / (n - 2))
    return LineFit(a, b, r2, max(abs(r) for r in residuals), se, n, mean_x, sxx)


def memory_size_fit(observations: Iterable[Observation]) -> tuple[LineFit | None, str]:
    """Return ``size-aware``'s line of peak memory on input size, and why it is not used.

    The points are the completed observations (none exhausted) that carry an
    input size. Returns ``(line, "")`` when ``size-aware`` uses the line,
    ``(line, reason)`` when it exists but explains too little (R² below
    :data:`SIZE_MIN_R2`), ``(None, reason)`` when there is none (fewer than
    :data:`SIZE_MIN_POINTS` points, or all of one size). Pure: the report and
    ``loadmaster history`` call it to show exactly what the strategy fits.
    """
    points = [o for o in observations if o.exhausted is None and o.input_size is not None]
    fit = fit_line([float(o.input_size or 0) for o in points], [float(o.peak_memory) for o in points])
    if isinstance(fit, str):
        return None, fit
    if fit.r2 < SIZE_MIN_R2:
        return fit, f"poor fit: R² {fit.r2:.3f} < {SIZE_MIN_R2}"
    return fit, ""


class SizedPoints(Running):
    """The completed observations' numbers, in observation order, for the fitted lines.

    ``walls``: wall time of every completed observation. Of those that carry an
    input size: ``sizes`` (bytes, as floats), ``peaks`` (bytes, as floats) and
    ``sized_walls`` (s). Exhausted observations are left out.
    """

    __slots__ = ("peaks", "sized_walls", "sizes", "walls")

    def __init__(self) -> None:
        super().__init__()
        self.walls: list[float] = []
        self.sizes: list[float] = []
        self.peaks: list[float] = []
        self.sized_walls: list[float] = []

    def absorb(self, o: Observation) -> None:
        """Add ``o``'s numbers if it completed."""
        if o.exhausted is not None:
            return
        self.walls.append(o.wall_time)
        if o.input_size is not None:
            self.sizes.append(float(o.input_size))
            self.peaks.append(float(o.peak_memory))
            self.sized_walls.append(o.wall_time)


def sized_points(state: CategoryState) -> SizedPoints:
    """Return ``state``'s :class:`SizedPoints`, caught up with its observations.

    The lists are shared, not copied: callers must not change them.
    """
    return running(state, RUNNING_PREFIX + "points", SizedPoints)


def memory_fit_of(points: SizedPoints) -> LineFit | str:
    """Return ``size-aware``'s memory line over ``points``, or why it is not used.

    The same answer as :func:`memory_size_fit` over the same observations.
    """
    fit = fit_line(points.sizes, points.peaks)
    if isinstance(fit, str):
        return fit
    if fit.r2 < SIZE_MIN_R2:
        return f"poor fit: R² {fit.r2:.3f} < {SIZE_MIN_R2}"
    return fit


def wall_time_fit(state: CategoryState) -> LineFit | str:
    """Return (and cache) the least-squares line of wall time on input size, or why there is none.

    Over the completed observations that carry an input size; shown by
    ``size-aware``'s ``describe`` and used by the planner's longest-first order.
    """
    cached = state.cache.get("wall-fit")
    if cached is not None:
        return cached
    points = sized_points(state)
    fit = fit_line(points.sizes, points.sized_walls)
    state.cache["wall-fit"] = fit
    return fit


@register("size-aware")
class SizeAware(_GrowOnRetry):
    """Memory as a line of the input size, where one fits; ``learned`` elsewhere.

    Over the completed measurements that carry an input size, fit
    ``peak = a + b·size`` by least squares. For a task of size ``s`` the memory is
    ``a + b·s + max(1.25·max|residual|, 3·se·sqrt(1 + 1/n + (s − s̄)²/Sxx))``,
    rounded up to 16 MiB, at least 32 MiB, at most the node. Falls back to
    ``learned`` when the task has no input size, fewer than 5 points carry one,
    all sizes are equal, or R² < 0.8. Wall time is fitted the same way and shown
    by ``describe`` (not imposed: a wall-time limit is only ever the user's).
    Retry as ``learned``.
    """

    name = "size-aware"
    uses_input_size = True

    def __init__(self) -> None:
        self._fallback = Learned()

    def fits(self, state: CategoryState) -> tuple[LineFit | str, LineFit | str]:
        """Return (and cache) the memory and wall-time fits, or why there are none."""
        cached = state.cache.get("size-fit")
        if cached is not None:
            return cached
        result = (memory_fit_of(sized_points(state)), wall_time_fit(state))
        state.cache["size-fit"] = result
        return result

    def first_allocation(
        self,
        state: CategoryState,
        requested: Resources | None,
        node: Resources,
        input_size: int | None = None,
    ) -> Resources:
        """Return the fitted memory for ``input_size``; ``learned`` where there is no fit."""
        if input_size is None:
            return self._fallback.first_allocation(state, requested, node)
        memory_fit = self.fits(state)[0]
        if isinstance(memory_fit, str):
            return self._fallback.first_allocation(state, requested, node)
        x = float(input_size)
        memory = round_up(max(memory_fit.predict(x) + memory_fit.margin(x), 0.0))
        return complete(requested, node, memory, learned_disk(summarize(state), node))

    def describe(self, state: CategoryState, node: Resources) -> dict[str, Any]:
        """Return the fitted lines (memory, wall time) or why there are none."""
        memory_fit, wall_fit = self.fits(state)
        return {
            "memory_model": memory_fit.as_dict() if isinstance(memory_fit, LineFit) else None,
            "memory_fallback": memory_fit if isinstance(memory_fit, str) else None,
            "wall_time_model": wall_fit.as_dict() if isinstance(wall_fit, LineFit) else None,
            "fallback": self._fallback.describe(state, node),
        }


__all__ = [
    "DISK_FLOOR",
    "FAIR_SHARE_FLOOR",
    "GRAIN",
    "MIN_MEMORY",
    "RUNNING_PREFIX",
    "Fixed",
    "Histogram",
    "Learned",
    "LineFit",
    "MaxSeen",
    "MaxThroughput",
    "MinWaste",
    "Running",
    "SizeAware",
    "SizedPoints",
    "Summary",
    "complete",
    "fair_share",
    "fit_line",
    "forget_derived",
    "grow",
    "histogram",
    "margin_for",
    "memory_fit_of",
    "memory_size_fit",
    "round_up",
    "running",
    "sized_points",
    "summarize",
    "tovar_scores",
    "wall_time_fit",
]
