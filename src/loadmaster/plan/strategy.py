"""The sizing policy's interface: how big a task's first and next attempts are.

Runs in the client's scheduler thread. A strategy sees a category's
observations (from this run and earlier ones) and the node's capacity, and
returns allocations; it never touches processes or the database.

This module covers: the :class:`SizingStrategy` protocol, the data it sees
(:class:`Observation`, :class:`CategoryState`) and the registry of strategies
by name. See also: ``plan/planner.py`` (keeps the per-category state and calls
the strategy), ``plan/strategies/`` (the strategies themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadmaster.spec import Resources


@dataclass(frozen=True, slots=True)
class Observation:
    """One finished attempt of a category, as a strategy sees it.

    ``peak_memory`` (bytes), ``wall_time`` (s), ``cores`` (average in use),
    ``disk`` (bytes); ``exhausted`` names the resource that ran out (then the
    true need is at least the allocation); ``input_size`` in bytes if known.
    """

    peak_memory: int
    wall_time: float
    cores: float
    disk: int
    allocated_memory: int | None = None
    exhausted: str | None = None
    input_size: int | None = None


@dataclass
class CategoryState:
    """What is known of one category: its observations, oldest first.

    ``cache`` holds values a strategy derived from ``observations`` (a fitted
    model, a histogram) so that they are computed once, not per task. Whoever
    changes ``observations`` must clear it: :meth:`add` and :meth:`trim` do.
    """

    name: str
    observations: list[Observation] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def completed(self) -> list[Observation]:
        """Observations of attempts that did not run out of a resource."""
        return [o for o in self.observations if o.exhausted is None]

    def add(self, obs: Observation) -> None:
        """Append one observation and forget derived values."""
        self.observations.append(obs)
        self.cache.clear()

    def trim(self, keep: int) -> None:
        """Keep only the newest ``keep`` observations and forget derived values."""
        if len(self.observations) > keep:
            del self.observations[: len(self.observations) - keep]
        self.cache.clear()


class SizingStrategy(Protocol):
    """Decides allocations for one category at a time.

    ``first_allocation`` returns the allocation of a task's first attempt;
    fields the user stated in ``requested`` are kept as given. ``retry_allocation``
    returns the allocation for the next attempt after ``previous`` ran out of
    ``resource``, or ``None`` when no bigger attempt fits the node (the task
    then fails with ``ResourceExhausted``).

    Optional members, looked up with ``getattr`` by the planner:

    * ``uses_input_size: bool`` — ``True`` when ``first_allocation`` depends on
      ``input_size`` (the planner then does not cache one answer per category).
    * ``describe(state, node) -> dict`` — the strategy's model of the category
      (fitted coefficients, chosen histogram bucket...), for ``loadmaster history``.

    Strategies keep no per-category state of their own: what they derive from
    the observations goes into ``state.cache``, so one instance can serve every
    category.
    """

    name: str

    def first_allocation(
        self,
        state: CategoryState,
        requested: Resources | None,
        node: Resources,
        input_size: int | None = None,
    ) -> Resources: ...

    def retry_allocation(
        self,
        state: CategoryState,
        previous: Resources,
        resource: str,
        used: float,
        node: Resources,
    ) -> Resources | None: ...


STRATEGIES: dict[str, Callable[[], SizingStrategy]] = {}


def register(name: str) -> Callable[[Callable[[], SizingStrategy]], Callable[[], SizingStrategy]]:
    """Class decorator: make a strategy available by ``name``."""

    def deco(factory: Callable[[], SizingStrategy]) -> Callable[[], SizingStrategy]:
        STRATEGIES[name] = factory
        return factory

    return deco
