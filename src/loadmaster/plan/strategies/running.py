"""Running totals of a category's observations: extended per new observation, not re-scanned.

Who runs this code: the client's engine (scheduler) thread, via the strategies.
What it reads and writes: ``CategoryState.observations`` and ``state.cache``,
where each :class:`Running` total and the :class:`Summary` derived from it live
until the observations change (a refresh costs O(1) per new observation).

This module does *not* cover: turning a summary into an allocation (the strategies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

from loadmaster.plan.strategy import CategoryState, Observation

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
