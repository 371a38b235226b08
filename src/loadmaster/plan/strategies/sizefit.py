"""The fitting math of ``size-aware``: least-squares lines of memory and wall time on input size.

Who runs this code: the client's engine (scheduler) thread (via ``size_aware.py``
and the planner's wall-time prediction) and ``loadmaster history`` /
``report/sizefit.py`` (which show the same fit the strategy uses).

This module does *not* cover: turning a fit into an allocation (``size_aware.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from loadmaster.plan.strategies.running import RUNNING_PREFIX, Running, running
from loadmaster.plan.strategy import CategoryState, Observation

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
