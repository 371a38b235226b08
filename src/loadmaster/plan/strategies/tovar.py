"""``max-throughput`` and ``min-waste``: the job-sizing strategies of Tovar et al.

"A Job Sizing Strategy for High-Throughput Scientific Workflows", IEEE TPDS
29(2), 2018: the first allocation is an observed peak chosen from the empirical
distribution; retries go to the largest peak seen, then to the whole node.

Who runs this code: the client's engine (scheduler) thread. Registered by name on import.

This module does *not* cover: the other strategies. See ``docs/sizing.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from loadmaster.plan.strategies.learned import learned_disk, learned_memory
from loadmaster.plan.strategies.rules import (
    MIN_MEMORY,
    MIN_TASK_TIME_S,
    complete,
    grow,
    node_memory,
    round_up,
    task_cores,
)
from loadmaster.plan.strategies.running import RUNNING_PREFIX, Running, running, summarize
from loadmaster.plan.strategy import CategoryState, Observation, register
from loadmaster.spec import Resources


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
