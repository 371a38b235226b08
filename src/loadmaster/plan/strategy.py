"""The sizing policy's interface: how big a task's first and next attempts are.

Runs in the client's scheduler thread. A strategy sees a category's
observations (from this run and earlier ones) and the node's capacity, and
returns allocations; it never touches processes or the database.

This module covers: the :class:`SizingStrategy` protocol, the data it sees
(:class:`Observation`, :class:`CategoryState`) and the registry of strategies
by name. See also: ``plan/planner.py`` (keeps the per-category state and calls
the strategy), ``plan/strategies.py`` (the strategies themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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
    """What is known of one category: its observations, oldest first."""

    name: str
    observations: list[Observation] = field(default_factory=list)

    @property
    def completed(self) -> list[Observation]:
        """Observations of attempts that did not run out of a resource."""
        return [o for o in self.observations if o.exhausted is None]


class SizingStrategy(Protocol):
    """Decides allocations for one category at a time.

    ``first_allocation`` returns the allocation of a task's first attempt;
    fields the user stated in ``requested`` are kept as given. ``retry_allocation``
    returns the allocation for the next attempt after ``previous`` ran out of
    ``resource``, or ``None`` when no bigger attempt fits the node (the task
    then fails with ``ResourceExhausted``).
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
