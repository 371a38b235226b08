"""Peak memory against input size, per category: the points, the fitted line, its margin.

Runs in the client (``loadmaster report``, ``run --report``, the demo, and
``loadmaster history``). It reads task reports and writes strings (SVG, HTML,
text); no files, no network.

This module covers: which reports are points and how each ended
(:func:`size_points`), the ``size-aware`` strategy's line over them — computed
by the strategy's own :func:`~loadmaster.plan.strategies.memory_size_fit`, not
a copy of it (:func:`size_model`) — the model as one line of text
(:func:`format_model`, shared with ``loadmaster history``), and the scatter chart
with the line, its safety-margin band, or, where the strategy falls back to the
distribution, the p50 and max peaks (:func:`chart_size_scatter`).

This module does *not* cover: the fitting itself (``plan/strategies/sizefit.py``), the
rest of the page (``report/html.py``), chart primitives (``report/svg.py``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from loadmaster.plan.strategies import GRAIN, SIZE_K_RESIDUAL, SIZE_Z, LineFit, memory_size_fit
from loadmaster.plan.strategy import Observation
from loadmaster.report.summary import last_attempts, quantile, short_size
from loadmaster.report.svg import FAIL_COLOUR, Plot, fmt_number, legend, size_ticks, size_unit
from loadmaster.results import Outcome, TaskReport

OK_COLOUR = "#0072B2"
RETRIED_COLOUR = "#E69F00"
LINE_COLOUR = "#222222"
BAND_COLOUR = "#009E73"
P50_COLOUR = "#555555"
MAX_COLOUR = "#CC79A7"

BAND_SAMPLES = 41
"""The margin grows away from the mean input size, so its band is drawn through this many sizes."""

POINT_KINDS = ("ok", "retried", "exhausted", "failed")
"""How a point's attempt ended: ``ok`` the first time; ``retried``: succeeded after
running out and being retried bigger; ``exhausted``: ran out and was retried (its
peak is a lower bound of the need); ``failed``: the task's last attempt did not succeed."""


@dataclass(frozen=True)
class SizePoint:
    """One measured attempt with an input size: where it sits on the scatter and how it ended."""

    input_size: int
    peak_memory: int
    kind: str
    report: TaskReport


@dataclass(frozen=True)
class SizeModel:
    """The ``size-aware`` line of one category, or why it is not used.

    Attributes:
        category: the category.
        points: the attempts with an input size (lost ones left out).
        line: the least-squares line ``peak = a + b·size`` over the completed
            points, or ``None`` (fewer than 5, or all of one size).
        reason: ``""`` when ``size-aware`` uses ``line``; otherwise why not
            (``"poor fit: R² ..."``, ``"3 measurements ... fewer than 5"``).
        typical_size: the median input size of the completed points (of all
            points if none completed), bytes; 0 without points.
        peak_p50, peak_max: of every completed attempt of the category, sized
            or not (what the fallback sizes from), bytes.
    """

    category: str
    points: tuple[SizePoint, ...]
    line: LineFit | None
    reason: str
    typical_size: float
    peak_p50: float
    peak_max: float

    @property
    def used(self) -> bool:
        """``True`` when ``size-aware`` sizes this category's tasks by the line."""
        return self.line is not None and not self.reason

    @property
    def status(self) -> str:
        """``"fit"``, ``"poor fit"``, ``"too few points"``, ``"one size"`` or ``"no size data"``."""
        if not self.points:
            return "no size data"
        if self.used:
            return "fit"
        if self.line is not None:
            return "poor fit"
        if "same input size" in self.reason:
            return "one size"
        return "too few points"

    def margin_at(self, size: float) -> float | None:
        """Return the strategy's safety margin for a task of ``size`` bytes (``None`` without a line)."""
        return self.line.margin(size) if self.line is not None else None

    def as_dict(self) -> dict[str, object]:
        """Return the model as JSON-ready numbers (bytes, bytes per byte)."""
        line = self.line
        return {
            "status": self.status,
            "used": self.used,
            "reason": self.reason or None,
            "points": len(self.points),
            "completed_points": sum(1 for p in self.points if p.report.exhausted is None),
            "typical_input_size": int(self.typical_size) if self.points else None,
            "a": line.a if line else None,
            "b": line.b if line else None,
            "r2": line.r2 if line else None,
            "n": line.n if line else None,
            "se": line.se if line else None,
            "max_abs_residual": line.max_abs_residual if line else None,
            "margin_at_typical": line.margin(self.typical_size) if line else None,
        }


def observation_of(report: TaskReport) -> Observation:
    """Return ``report`` as the planner sees it (as ``History.observations`` reads it)."""
    return Observation(
        peak_memory=report.peak_memory,
        wall_time=report.wall_time,
        cores=report.cores,
        disk=report.disk,
        allocated_memory=report.allocation.memory,
        exhausted=report.exhausted,
        input_size=report.input_size,
    )


def size_points(reports: Iterable[TaskReport]) -> list[SizePoint]:
    """Return the attempts that carry an input size (not lost), each with how it ended.

    An attempt that ran out and is not its task's last (a later attempt of the
    same task is in ``reports``) is ``exhausted``; a last attempt that did not
    end ``ok`` is ``failed``; one that did, after more than one attempt, ``retried``.
    """
    reports = list(reports)
    last = {(r.category, r.task_id): r for r in last_attempts(reports)}
    out = []
    for r in reports:
        if r.input_size is None or r.outcome is Outcome.LOST:
            continue
        final = last.get((r.category, r.task_id)) is r
        if not final and r.outcome is Outcome.EXHAUSTED:
            kind = "exhausted"
        elif r.outcome is not Outcome.OK:
            kind = "failed"
        elif r.attempts > 1:
            kind = "retried"
        else:
            kind = "ok"
        out.append(SizePoint(int(r.input_size), r.peak_memory, kind, r))
    return out


def size_model(category: str, reports: Sequence[TaskReport]) -> SizeModel:
    """Return the ``size-aware`` line of ``category`` over ``reports`` (other categories ignored)."""
    mine = [r for r in reports if r.category == category]
    points = tuple(size_points(mine))
    observations = [observation_of(r) for r in mine if r.outcome is not Outcome.LOST]
    line, reason = memory_size_fit(observations)
    completed_sizes = [p.input_size for p in points if p.report.exhausted is None]
    sizes = completed_sizes or [p.input_size for p in points]
    peaks = [float(o.peak_memory) for o in observations if o.exhausted is None]
    return SizeModel(
        category=category,
        points=points,
        line=line,
        reason=reason,
        typical_size=float(statistics.median(sizes)) if sizes else 0.0,
        peak_p50=quantile(peaks, 0.5),
        peak_max=max(peaks, default=0.0),
    )


def format_slope(b: float, typical_size: float) -> str:
    """Return ``b`` (bytes of memory per byte of input) readably, e.g. ``"307 MiB per GiB"``.

    The input unit is the binary unit that suits ``typical_size``.
    """
    unit, factor = size_unit(max(typical_size, 1.0))
    return f"{short_size(b * factor)} per {unit}"


def format_model(model: SizeModel) -> str:
    """Return the model as one line, e.g. ``"peak = 201 MiB + 1.5 MiB per MiB of input; ..."``.

    Without a usable line, says so and that the distribution sizes the category.
    """
    line = model.line
    if not model.points:
        return "no size data"
    if line is None:
        return f"{model.reason} → distribution"
    text = (
        f"peak = {short_size(line.a)} + {format_slope(line.b, model.typical_size)} of input; "
        f"R² {line.r2:.3f}, margin {short_size(line.margin(model.typical_size))} at "
        f"{short_size(model.typical_size)}, n={line.n}"
    )
    if not model.used:
        text += f"; {model.reason} → distribution"
    return text


def _point(plot: Plot, p: SizePoint) -> str:
    """Return one point's marker with its tooltip."""
    r = p.report
    x, y = plot.x(p.input_size), plot.y(p.peak_memory)
    tip = (
        f"#{r.task_id} attempt {r.attempts}: input {short_size(p.input_size)}, "
        f"peak {short_size(p.peak_memory)} of "
        f"{short_size(r.allocation.memory) if r.allocation.memory else 'no limit'}, "
        f"{r.outcome.value}" + (f" ({r.exhausted} exhausted)" if r.exhausted else "")
    )
    if p.kind == "failed":
        mark = (
            f'<path d="M{x - 5:.1f},{y - 5:.1f} l10,10 m0,-10 l-10,10" stroke="{FAIL_COLOUR}" '
            'stroke-width="2.4"/>'
        )
    elif p.kind == "exhausted":
        mark = (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#ffffff" '
            f'stroke="{RETRIED_COLOUR}" stroke-width="1.6"/>'
        )
    else:
        colour = OK_COLOUR if p.kind == "ok" else RETRIED_COLOUR
        mark = (
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" fill-opacity="0.85"/>'
        )
    return f'<g class="pt {p.kind}"><title>{escape(tip)}</title>{mark}</g>'


def _hline(plot: Plot, value: float, colour: str, label: str, *, at_left: bool = False) -> str:
    """Return a dashed horizontal line across the plot at ``value``, labelled at one end."""
    y = plot.y(value)
    right = plot.width - plot.right
    tx, anchor = (plot.left + 4, "start") if at_left else (right - 4, "end")
    return (
        f'<g><title>{escape(label)}</title><line x1="{plot.left}" x2="{right}" y1="{y:.1f}" '
        f'y2="{y:.1f}" stroke="{colour}" stroke-width="1.8" stroke-dasharray="7 4"/>'
        f'<text x="{tx}" y="{y - 5:.1f}" text-anchor="{anchor}" class="note" '
        f'fill="{colour}">{escape(label)}</text></g>'
    )


def caption(model: SizeModel) -> str:
    """Return the chart's caption (HTML): the fit's numbers, or why the distribution is used."""
    line = model.line
    counts = {k: sum(1 for p in model.points if p.kind == k) for k in POINT_KINDS}
    shown = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    parts = [f"{len(model.points)} attempts with an input size ({shown})."]
    if line is not None and not model.used:
        parts.append(
            f"Least-squares line over the n = {line.n} completed ones: peak = "
            f"{escape(short_size(line.a))} + {escape(format_slope(line.b, model.typical_size))} "
            f"of input, R² = <b>{line.r2:.3f}</b>: input size explains too little of the peaks."
        )
    elif line is not None:
        margin = line.margin(model.typical_size)
        fit = (
            f"Least-squares fit over the n = {line.n} completed ones: peak = "
            f"<b>{escape(short_size(line.a))}</b> + "
            f"<b>{escape(format_slope(line.b, model.typical_size))}</b> of input "
            f"(a = {line.a:.0f} B, b = {line.b:.4g} B/B), R² = <b>{line.r2:.3f}</b>; "
            f"safety margin <b>{escape(short_size(margin))}</b> at the median input "
            f"{escape(short_size(model.typical_size))} = max({SIZE_K_RESIDUAL:g} × largest "
            f"residual {escape(short_size(line.max_abs_residual))}, {SIZE_Z:g} × the "
            f"prediction's standard error, s.e. {escape(short_size(line.se))}), growing away "
            f"from the sizes measured. A task of input size s is given a + b·s + margin(s), "
            f"rounded up to {GRAIN >> 20} MiB."
        )
        parts.append(fit)
    if not model.used:
        parts.append(
            f'<span class="warn">No line is used: {escape(model.reason or "no size data")}. '
            f"The size-aware strategy sizes this category from the distribution of its peaks "
            f"instead (as learned: the largest peak plus a margin); the dashed lines are the "
            f"median ({escape(short_size(model.peak_p50))}) and the largest "
            f"({escape(short_size(model.peak_max))}) peak.</span>"
        )
    return '<p class="caption">' + " ".join(parts) + "</p>"


def chart_size_scatter(model: SizeModel) -> str:
    """Return the figure of ``model``'s category: scatter, line and band (or p50/max), caption.

    The figure carries the fit's numbers as ``data-`` attributes (bytes and
    bytes per byte), so that tools and tests read them without parsing text.
    """
    points = model.points
    if not points:
        return ""
    line = model.line if model.used else None
    xs = [p.input_size for p in points]
    lo, hi = min(xs), max(xs)
    samples = [lo + (hi - lo) * i / (BAND_SAMPLES - 1) for i in range(BAND_SAMPLES)]
    top = float(max(p.peak_memory for p in points))
    if line is not None:
        top = max(top, max(line.predict(s) + line.margin(s) for s in samples))
    else:
        top = max(top, model.peak_max)
    plot = Plot(width=1200, height=320, x_max=hi * 1.04 or 1.0, y_max=top * 1.08 or 1.0)
    plot.size_y_axis("peak memory")
    ticks, unit, factor = size_ticks(plot.x_max, 8)
    plot.x_max = ticks[-1]
    for t in ticks[1:]:
        px = plot.x(t)
        plot.add(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{plot.top}" '
            f'y2="{plot.top + plot.inner_h:.1f}" class="grid"/>'
        )
    plot.x_axis(ticks, [fmt_number(t / factor) for t in ticks], f"input size ({unit})")
    items: list[tuple[str, str, str]] = []
    if line is not None:

        def clamp(v: float) -> float:
            return min(max(v, 0.0), plot.y_max)

        fit_pts = [(s, clamp(line.predict(s))) for s in samples]
        upper = [(s, clamp(line.predict(s) + line.margin(s))) for s in samples]
        band = " ".join(f"{plot.x(s):.1f},{plot.y(v):.1f}" for s, v in fit_pts + upper[::-1])
        tip = (
            f"fit {short_size(line.a)} + {format_slope(line.b, model.typical_size)} of input; "
            f"margin {short_size(line.margin(model.typical_size))} at the median input"
        )
        plot.add(
            f'<g class="band"><title>{escape(tip)}</title><polygon points="{band}" '
            f'fill="{BAND_COLOUR}" fill-opacity="0.18"/>'
            f'<polyline points="{" ".join(f"{plot.x(s):.1f},{plot.y(v):.1f}" for s, v in upper)}"'
            f' fill="none" stroke="{BAND_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/></g>'
        )
        (x0, y0), (x1, y1) = fit_pts[0], fit_pts[-1]
        plot.add(
            f'<g class="fit"><title>{escape(tip)}</title><line x1="{plot.x(x0):.1f}" '
            f'y1="{plot.y(y0):.1f}" x2="{plot.x(x1):.1f}" y2="{plot.y(y1):.1f}" '
            f'stroke="{LINE_COLOUR}" stroke-width="2.2"/></g>'
        )
        items.append((LINE_COLOUR, "line", "fitted line a + b·size"))
        items.append((BAND_COLOUR, "dash", "line + safety margin (what a task is given)"))
    else:
        plot.add(_hline(plot, model.peak_max, MAX_COLOUR, f"max {short_size(model.peak_max)}"))
        plot.add(
            _hline(
                plot, model.peak_p50, P50_COLOUR, f"p50 {short_size(model.peak_p50)}", at_left=True
            )
        )
        items.append((MAX_COLOUR, "dash", "largest peak"))
        items.append((P50_COLOUR, "dash", "median peak"))
    # The rarer outcomes last, so that a failure is not hidden under the points around it.
    for p in sorted(points, key=lambda p: POINT_KINDS.index(p.kind)):
        plot.add(_point(plot, p))
    kinds = {p.kind for p in points}
    if "ok" in kinds:
        items.insert(0, (OK_COLOUR, "box", "ok"))
    if "retried" in kinds:
        items.append((RETRIED_COLOUR, "box", "ok after a retry"))
    if "exhausted" in kinds:
        items.append((RETRIED_COLOUR, "hollow", "ran out, then retried (peak is a lower bound)"))
    if "failed" in kinds:
        items.append((FAIL_COLOUR, "line", "× failed"))
    attrs = {
        "category": model.category,
        "status": model.status,
        "n": str(len(points)),
    }
    if model.line is not None:
        attrs.update(
            {
                "a": f"{model.line.a:.6g}",
                "b": f"{model.line.b:.6g}",
                "r2": f"{model.line.r2:.6f}",
                "margin": f"{model.line.margin(model.typical_size):.6g}",
                "fit-n": str(model.line.n),
            }
        )
    data = " ".join(f'data-{k}="{escape(v)}"' for k, v in attrs.items())
    label = f"peak memory vs input size: {model.category}"
    verdict = {
        "fit": f"sized by the line (R² {model.line.r2:.3f})" if model.line else "",
        "poor fit": "poor fit → sized from the distribution",
        "too few points": "too few points for a line → sized from the distribution",
        "one size": "one input size only → sized from the distribution",
    }.get(model.status, "")
    return (
        f'<figure class="sizefit" {data}><figcaption><b>{escape(model.category)}</b> — '
        f"{escape(verdict)}</figcaption>"
        + plot.svg(label=label)
        + legend(items)
        + caption(model)
        + "</figure>"
    )


def sized_categories(reports: Iterable[TaskReport]) -> list[str]:
    """Return the categories (sorted) with at least one measured attempt that has an input size."""
    return sorted(
        {r.category for r in reports if r.input_size is not None and r.outcome is not Outcome.LOST}
    )


def section(reports: Sequence[TaskReport]) -> str:
    """Return the figures of every category with an input size, or ``""`` if there is none."""
    return "\n".join(chart_size_scatter(size_model(c, reports)) for c in sized_categories(reports))
