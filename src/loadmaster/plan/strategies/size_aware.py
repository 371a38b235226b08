"""``size-aware`` (the default strategy): memory as a line of the task's input size, ``learned`` elsewhere.

Who runs this code: the client's engine (scheduler) thread. Registered by name on import.

This module does *not* cover: the fitting itself (``sizefit.py``). See ``docs/sizing.md``.
"""

from __future__ import annotations

from typing import Any

from loadmaster.plan.strategies.learned import Learned, _GrowOnRetry, learned_disk
from loadmaster.plan.strategies.rules import complete, round_up
from loadmaster.plan.strategies.running import summarize
from loadmaster.plan.strategies.sizefit import LineFit, memory_fit_of, sized_points, wall_time_fit
from loadmaster.plan.strategy import CategoryState, register
from loadmaster.spec import Resources


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
