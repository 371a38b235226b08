"""The simple strategies: ``learned`` (the default's fallback), ``fixed`` and ``max-seen``.

Who runs this code: the client's engine (scheduler) thread, through the
:class:`~loadmaster.plan.planner.Planner`. Registered by name on import.

This module does *not* cover: Tovar's strategies (``tovar.py``), ``size-aware``
(``size_aware.py``). See ``docs/sizing.md`` for the formulas.
"""

from __future__ import annotations

from typing import Any

from loadmaster.plan.strategies.rules import (
    DISK_FACTOR,
    DISK_FLOOR,
    GRAIN,
    MIN_MEMORY,
    complete,
    fair_share,
    grow,
    margin_for,
    node_memory,
    round_up,
    task_cores,
)
from loadmaster.plan.strategies.running import Summary, summarize
from loadmaster.plan.strategy import CategoryState, register
from loadmaster.spec import Resources

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
