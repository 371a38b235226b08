"""The planner: the allocation of every task's first attempt and of its retries.

Runs in the client's scheduler thread, once per task placed and once per
finished attempt; never in the zygote or a task's process. It is not
thread-safe: one thread (the scheduler's) owns a Planner.

It reads each category's earlier observations from the history once, on that
category's first use (``history.observations(category)``), and keeps them in a
:class:`~loadmaster.plan.strategy.CategoryState` that :meth:`Planner.observe`
extends with this run's finished attempts. It writes nothing: storing reports
in the history is the executor's job.

Cost: the scheduler asks for every task, so the answer is cached per category
(and per distinct ``requested``) and recomputed only after :meth:`Planner.observe`
changed that category. Measured on the project's 2-core VM with ``timeit``
(Python 3.11): a cached ``first_allocation`` costs ~0.2 µs (~0.4 µs with a
stated request); a ``size-aware`` one with an input size ~5 µs (the fitted line
is cached; only the prediction is computed per task). Counts, maxima, histogram
buckets and the fitted lines' points are running totals
(``strategies.Running``), extended per observation, so a refresh re-scans
nothing but the newest ``strategies.EXHAUSTION_WINDOW`` observations. An
``observe`` + ``first_allocation`` + ``predicted_wall_time``, amortised over
2,000 observations of a 1,000-observation window (``timeit``, same VM): ~4 µs
(``learned``, ``size-aware``), ~6 µs (Tovar's) without input sizes, against
27, 29 and 84 µs when every refresh re-scanned the window. With input sizes,
~22 µs (``learned``, Tovar's) and ~44 µs (``size-aware``), against 79, 122 and
160 µs: the least-squares lines (wall time, shared by ``size-aware`` and the
longest-first order; memory) are refitted over the window's points at each
refresh, in two passes, to keep the numbers exact. Once a
category holds ``RECOMPUTE_ALWAYS_BELOW`` observations, an observation that sets
no new maximum and exhausted nothing refreshes the category only every ~2 % of
the window.

This module covers: per-category strategy choice, loading history, caching,
keeping user-stated limits fixed on retry, never exceeding the node (the
planner's own, or the one the scheduler is about to place the task on, passed
as ``node=``), and the
``describe`` summary for ``loadmaster history``. It does *not* cover the
strategies' formulas (``plan/strategies/``), the database (``plan/history/``)
or placement (the scheduler).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

# Importing the module registers the strategies by name.
import loadmaster.plan.strategies as _strategies
from loadmaster.errors import InvalidSpec
from loadmaster.plan.strategy import STRATEGIES, CategoryState, Observation, SizingStrategy
from loadmaster.spec import Resources

logger = logging.getLogger("loadmaster.plan")

DEFAULT_STRATEGY: Final = "size-aware"
"""The strategy of every category not named in ``per_category`` (see ``docs/sizing.md``)."""

RESOURCES: Final = ("memory", "disk", "wall_time")
"""The resources an attempt can exhaust, and so the ones a retry may grow."""

WINDOW = 1000
"""Observations kept per category (the newest), loaded from history and added in this run."""

RECOMPUTE_ALWAYS_BELOW = 100
"""Below this many observations, every observation refreshes the category's allocation."""

RECOMPUTE_FRACTION = 0.02
"""Above it, an ordinary observation refreshes it once this share of the window is new."""


class ObservationSource(Protocol):
    """What the planner needs of the history: a category's earlier observations."""

    def observations(self, category: str, limit: int = 1000) -> list[Observation]:
        """Return up to ``limit`` of the newest observations of ``category``, oldest first."""
        ...


class _Unset:
    """Marks an argument that was not passed (``None`` means "the user stated nothing")."""


UNSET: Final = _Unset()


@dataclass(frozen=True, slots=True)
class _WallModel:
    """A category's wall-time model for the longest-first order (internal).

    ``line``: wall time on input size, used where its R² is at least
    ``SIZE_MIN_R2``; ``mean``: the mean wall time of completed attempts
    (``None`` if there are none).
    """

    line: _strategies.LineFit | None
    mean: float | None


@dataclass
class _Category:
    """The planner's record of one category (internal)."""

    state: CategoryState
    strategy: SizingStrategy
    uses_input_size: bool
    first: dict[Resources | None, Resources] = field(default_factory=dict)
    # First allocations on nodes other than the planner's own, by (requested, node).
    first_on: dict[tuple[Resources | None, Resources], Resources] = field(default_factory=dict)
    pending: int = 0
    max_peak: int = 0
    max_disk: int = 0
    stated: dict[str, set[float]] = field(default_factory=dict)
    wall: _WallModel | None = None


def resolve_strategy(strategy: str | SizingStrategy) -> SizingStrategy:
    """Return the strategy instance named by ``strategy`` (or ``strategy`` itself).

    Raises:
        InvalidSpec: no strategy of that name is registered.
    """
    if not isinstance(strategy, str):
        return strategy
    factory = STRATEGIES.get(strategy)
    if factory is None:
        raise InvalidSpec(
            f"sizing strategy {strategy!r} does not exist; "
            f"choose one of: {', '.join(sorted(STRATEGIES))}"
        )
    return factory()


class Planner:
    """Sizes every task's attempts from its category's measurements.

    Args:
        node: the node's grant (``Capacity.as_resources()``); ``memory`` must be set.
        history: where earlier runs' observations come from (a
            :class:`~loadmaster.plan.history.History`), or ``None`` to start empty.
        strategy: the default strategy, by name (see ``STRATEGIES``) or an instance.
        per_category: strategies for particular categories.
        window: observations kept per category (the newest).

    Raises:
        InvalidSpec: the node states no memory, or a strategy name is unknown.
    """

    def __init__(
        self,
        node: Resources,
        history: ObservationSource | None = None,
        strategy: str | SizingStrategy = DEFAULT_STRATEGY,
        per_category: Mapping[str, str | SizingStrategy] | None = None,
        *,
        window: int = WINDOW,
    ) -> None:
        _strategies.node_memory(node)  # raises if the node has no memory grant
        self.node = node
        self.window = max(1, window)
        self._history = history
        self._instances: dict[str, SizingStrategy] = {}
        self._default = self._instance(strategy)
        self._per_category = {
            name: self._instance(s) for name, s in (per_category or {}).items()
        }
        self._categories: dict[str, _Category] = {}

    def _instance(self, strategy: str | SizingStrategy) -> SizingStrategy:
        """Return one shared instance per strategy name (strategies are stateless)."""
        if not isinstance(strategy, str):
            return strategy
        if strategy not in self._instances:
            self._instances[strategy] = resolve_strategy(strategy)
        return self._instances[strategy]

    def _category(self, category: str) -> _Category:
        """Return the record of ``category``, loading its history on first use."""
        record = self._categories.get(category)
        if record is not None:
            return record
        strategy = self._per_category.get(category, self._default)
        earlier = (
            list(self._history.observations(category, limit=self.window))
            if self._history is not None
            else []
        )
        state = CategoryState(category, earlier[-self.window :])
        record = _Category(state, strategy, bool(getattr(strategy, "uses_input_size", False)))
        for o in state.observations:
            record.max_peak = max(record.max_peak, o.peak_memory)
            record.max_disk = max(record.max_disk, o.disk)
        self._categories[category] = record
        logger.debug(
            "category %r: %d earlier observations loaded, strategy %s",
            category,
            len(state.observations),
            getattr(strategy, "name", type(strategy).__name__),
        )
        return record

    def first_allocation(
        self, category: str, requested: Resources | None, input_size: int | None = None,
        node: Resources | None = None,
    ) -> Resources:
        """Return the full allocation of a task's first attempt.

        Cores are 1 unless requested, memory always set, disk ``None``
        (unlimited) unless requested or learned, GPUs 0 unless requested, wall
        time ``None`` unless requested. Fields the user stated in ``requested``
        are kept as given. Call it when the task is placed (not when submitted),
        so that measurements that arrived in between are used.

        ``node`` is the capacity of the node the task would go to (the
        scheduler's ``alloc_for`` passes it): the task is sized for that node
        and capped at it (an unmeasured task gets that node's fair share).
        ``None`` is the planner's own node (the one it was made with).

        Raises:
            InvalidSpec: the node states no memory.
        """
        if node is not None and node is not self.node and node != self.node:
            return self._first_on(category, requested, input_size, node)
        record = self._categories.get(category) or self._category(category)
        sized_by_input = record.uses_input_size and input_size is not None
        if not sized_by_input:
            cached = record.first.get(requested)
            if cached is not None:
                return cached
        if requested is not None:
            _note_stated(record, requested)
        allocation = record.strategy.first_allocation(
            record.state, requested, self.node, input_size
        )
        if not sized_by_input:
            if len(record.first) >= 64:  # many distinct requests: keep the cache small
                record.first.clear()
            record.first[requested] = allocation
            if requested is None:
                logger.debug(
                    "category %r: first allocation %d MiB memory, disk %s, from %d observations",
                    category,
                    (allocation.memory or 0) // _strategies.MiB,
                    allocation.disk,
                    len(record.state.observations),
                )
        return allocation

    def _first_on(self, category: str, requested: Resources | None, input_size: int | None,
                  node: Resources) -> Resources:
        """``first_allocation`` on a node other than the planner's own (cached per node)."""
        _strategies.node_memory(node)  # raises if that node states no memory
        record = self._categories.get(category) or self._category(category)
        sized_by_input = record.uses_input_size and input_size is not None
        key = (requested, node)
        if not sized_by_input:
            cached = record.first_on.get(key)
            if cached is not None:
                return cached
        if requested is not None:
            _note_stated(record, requested)
        allocation = record.strategy.first_allocation(record.state, requested, node, input_size)
        if not sized_by_input:
            if len(record.first_on) >= 256:  # many nodes sizes or requests: keep the cache small
                record.first_on.clear()
            record.first_on[key] = allocation
        return allocation

    def retry_allocation(
        self,
        category: str,
        previous: Resources,
        resource: str,
        used: float,
        requested: Resources | _Unset | None = UNSET,
        node: Resources | None = None,
    ) -> Resources | None:
        """Return the allocation of the next attempt after ``previous`` ran out of ``resource``.

        ``resource`` is ``"memory"``, ``"disk"`` or ``"wall_time"``; ``used`` is how
        much the attempt had used (bytes or seconds). Returns ``None`` when no
        bigger attempt fits the node, or when the user stated that resource: a
        user-stated limit is never grown. Pass the task's ``requested`` to say
        exactly what the user stated; without it, a limit equal to a value users
        stated for this category counts as stated.

        ``node`` is the capacity to grow up to (the node the retry may go to;
        on many nodes, the biggest: ``ClusterScheduler.largest``); ``None`` is
        the planner's own node.

        Raises:
            InvalidSpec: ``resource`` is not one the planner grows, or ``node``
                states no memory.
        """
        node = self.node if node is None else node
        _strategies.node_memory(node)
        if resource not in RESOURCES:
            raise InvalidSpec(
                f"retry of category {category!r}: unknown resource {resource!r}; "
                f"expected one of {', '.join(RESOURCES)}"
            )
        record = self._category(category)
        prev = getattr(previous, resource)
        if isinstance(requested, _Unset):
            user_fixed = prev is not None and prev in record.stated.get(resource, ())
        else:
            user_fixed = requested is not None and getattr(requested, resource) is not None
        if user_fixed:
            logger.info(
                "category %r: %s limit %s was stated by the user; not growing it (used %s)",
                category,
                resource,
                prev,
                used,
            )
            return None
        new = record.strategy.retry_allocation(record.state, previous, resource, used, node)
        if new is None:
            return None
        cap = getattr(node, resource)
        grown = getattr(new, resource)
        if grown is None or (prev is not None and grown <= prev):
            return None
        if cap is not None and grown > cap:
            if prev is not None and prev >= cap:
                return None
            new = _replace(new, resource, cap)
        logger.info(
            "category %r: %s ran out at %s (used %s); retrying with %s",
            category,
            resource,
            prev,
            used,
            getattr(new, resource),
        )
        return new

    def observe(self, category: str, obs: Observation) -> None:
        """Record a finished attempt of this run (exhausted ones too)."""
        record = self._categories.get(category) or self._category(category)
        state = record.state
        state.observations.append(obs)
        record.pending += 1
        refresh = (
            obs.exhausted is not None
            or obs.peak_memory > record.max_peak
            or obs.disk > record.max_disk
            or len(state.observations) < RECOMPUTE_ALWAYS_BELOW
            or record.pending >= max(1, int(RECOMPUTE_FRACTION * len(state.observations)))
        )
        record.max_peak = max(record.max_peak, obs.peak_memory)
        record.max_disk = max(record.max_disk, obs.disk)
        if len(state.observations) > 2 * self.window:
            state.trim(self.window)
            refresh = True
        if refresh:
            _strategies.forget_derived(state)  # running totals stay and catch up
            record.first.clear()
            record.first_on.clear()
            record.wall = None
            record.pending = 0

    def predicted_wall_time(self, category: str, input_size: int | None = None) -> float | None:
        """Return how long a first attempt of ``category`` is expected to run (seconds), or ``None``.

        Where the category's completed attempts carry input sizes and a
        least-squares line of wall time on input size explains them (R² at least
        ``strategies.SIZE_MIN_R2``, at least ``SIZE_MIN_POINTS`` points), the
        line's value at ``input_size`` (at least 0); otherwise the mean wall
        time of the completed attempts; ``None`` before any completed. The
        scheduler's longest-first order ranks waiting tasks by it. Cached per
        category like ``first_allocation`` (~0.3 µs cached, ~1 µs with a size).
        """
        record = self._categories.get(category) or self._category(category)
        model = record.wall
        if model is None:
            model = record.wall = _wall_model(record.state)
        if model.line is not None and input_size is not None:
            return max(0.0, model.line.predict(float(input_size)))
        return model.mean

    def state(self, category: str) -> CategoryState:
        """Return what is known of ``category`` (loading its history on first use)."""
        return self._category(category).state

    def strategy_of(self, category: str) -> SizingStrategy:
        """Return the strategy that sizes ``category``."""
        return self._per_category.get(category, self._default)

    def describe(self, category: str) -> dict[str, Any]:
        """Return a summary of ``category`` for ``loadmaster history``.

        Keys: ``category``, ``strategy``, ``count`` (observations), ``completed``,
        ``exhausted`` (per resource), ``peak_memory`` (min, median, p90, max, mean
        of completed attempts, bytes; ``None`` if none), ``first_allocation``
        (as a dict, for a task that states nothing and has no input size) and
        ``model`` (the strategy's own numbers, or ``None``).
        """
        record = self._category(category)
        observations = record.state.observations
        peaks = sorted(o.peak_memory for o in observations if o.exhausted is None)
        exhausted: dict[str, int] = {}
        for o in observations:
            if o.exhausted is not None:
                exhausted[o.exhausted] = exhausted.get(o.exhausted, 0) + 1
        distribution: dict[str, float] | None = None
        if peaks:
            distribution = {
                "min": peaks[0],
                "median": statistics.median(peaks),
                "p90": peaks[min(len(peaks) - 1, int(0.9 * len(peaks)))],
                "max": peaks[-1],
                "mean": statistics.fmean(peaks),
            }
        describe = getattr(record.strategy, "describe", None)
        return {
            "category": category,
            "strategy": getattr(record.strategy, "name", type(record.strategy).__name__),
            "count": len(observations),
            "completed": len(peaks),
            "exhausted": exhausted,
            "peak_memory": distribution,
            "first_allocation": self.first_allocation(category, None).as_dict(),
            "model": describe(record.state, self.node) if describe is not None else None,
        }


def _wall_model(state: CategoryState) -> _WallModel:
    """Fit the wall-time model of a category's completed observations (see ``predicted_wall_time``).

    From the category's running lists (``strategies.sized_points``) and the
    wall-time line ``size-aware`` shares (``strategies.wall_time_fit``).
    """
    walls = _strategies.sized_points(state).walls
    if not walls:
        return _WallModel(None, None)
    mean = statistics.fmean(walls)
    line = _strategies.wall_time_fit(state)
    if isinstance(line, str) or line.r2 < _strategies.SIZE_MIN_R2:
        return _WallModel(None, mean)
    return _WallModel(line, mean)


def _replace(allocation: Resources, resource: str, value: float) -> Resources:
    """Return ``allocation`` with ``resource`` set to ``value`` (an int for byte sizes)."""
    if resource == "wall_time":
        return replace(allocation, wall_time=float(value))
    if resource == "disk":
        return replace(allocation, disk=int(value))
    return replace(allocation, memory=int(value))


def _note_stated(record: _Category, requested: Resources) -> None:
    """Remember which values a category's tasks stated for each resource (they are not sized)."""
    for name in RESOURCES:
        value = getattr(requested, name)
        if value is not None:
            record.stated.setdefault(name, set()).add(value)
