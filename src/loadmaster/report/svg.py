"""Pure-Python SVG charts for the offline HTML report: axes, ticks, bars, steps, legends.

Runs in the client (``loadmaster report``, ``run --report``, ``demo``). It writes
strings only: no files, no network, no plotting library. The SVG is meant to be
inlined in an HTML5 page, so it carries no ``xmlns`` (no URL appears in the page).

This module covers: nice tick values for numbers, byte sizes (in a binary unit
chosen for the range) and seconds; a :class:`Plot` that maps data to pixels and
collects SVG elements; category colours. Tooltips are SVG ``<title>`` elements.

This module does *not* cover: what is charted (``report/html.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from loadmaster.report.summary import short_size

# Okabe–Ito palette (distinguishable with the common colour-vision deficiencies),
# reordered so that the first categories get the most distinct hues.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#D55E00",
    "#56B4E9",
    "#8C6D1F",
    "#555555",
)
CAPACITY_COLOUR = "#C0392B"
FAIL_COLOUR = "#C0392B"

_UNITS = (("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40))


def category_colours(categories: Sequence[str]) -> dict[str, str]:
    """Return a colour per category, in the order given (hues repeat darker beyond 8)."""
    out = {}
    for i, cat in enumerate(categories):
        if i < len(PALETTE):
            out[cat] = PALETTE[i]
        else:
            hue = (i * 137.508) % 360  # golden angle: successive hues far apart
            out[cat] = f"hsl({hue:.0f},55%,40%)"
    return out


def nice_step(span: float, target_ticks: int = 5) -> float:
    """Return a step of 1, 2, 2.5 or 5 times a power of ten giving about ``target_ticks`` ticks."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(1, target_ticks)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def nice_ticks(hi: float, target_ticks: int = 5) -> list[float]:
    """Return ticks from 0 up to the first tick at or above ``hi``."""
    step = nice_step(hi, target_ticks)
    n = max(1, math.ceil(hi / step - 1e-9))
    return [i * step for i in range(n + 1)]


def size_unit(max_bytes: float) -> tuple[str, int]:
    """Return the binary unit (name, bytes) in which ``max_bytes`` reads best."""
    name, factor = _UNITS[0]
    for n, f in _UNITS:
        if max_bytes >= f:
            name, factor = n, f
    return name, factor


def size_ticks(max_bytes: float, target_ticks: int = 5) -> tuple[list[float], str, int]:
    """Return (ticks in bytes, unit name, unit bytes) for an axis from 0 to ``max_bytes``."""
    name, factor = size_unit(max_bytes)
    ticks = nice_ticks(max(max_bytes, 1) / factor, target_ticks)
    return [t * factor for t in ticks], name, factor


def fmt_number(x: float) -> str:
    """Return ``x`` without trailing zeros (``2.5``, ``10``, ``0.25``)."""
    if abs(x - round(x)) < 1e-9:
        return str(round(x))
    return f"{x:.3g}"


def fmt_bytes(n: float) -> str:
    """Return a byte count in the unit that suits it, e.g. ``"301 MiB"``, ``"1.25 GiB"``."""
    return short_size(n)


@dataclass
class Plot:
    """One chart: a plotting area inside margins, data→pixel scales, and its SVG elements.

    ``x_max``/``y_max`` are data-space upper bounds (lower bounds are 0).
    """

    width: int
    height: int
    x_max: float
    y_max: float
    left: int = 72
    right: int = 24
    top: int = 16
    bottom: int = 48
    elements: list[str] = field(default_factory=list)

    @property
    def inner_w(self) -> float:
        """Width of the plotting area, pixels."""
        return float(self.width - self.left - self.right)

    @property
    def inner_h(self) -> float:
        """Height of the plotting area, pixels."""
        return float(self.height - self.top - self.bottom)

    def x(self, value: float) -> float:
        """Return the pixel x of a data x."""
        return self.left + self.inner_w * (value / self.x_max if self.x_max > 0 else 0.0)

    def y(self, value: float) -> float:
        """Return the pixel y of a data y (0 at the bottom of the plotting area)."""
        frac = value / self.y_max if self.y_max > 0 else 0.0
        return self.top + self.inner_h * (1.0 - frac)

    def add(self, element: str) -> None:
        """Append raw SVG markup."""
        self.elements.append(element)

    def y_axis(self, ticks: Sequence[float], labels: Sequence[str], title: str) -> None:
        """Draw horizontal grid lines at ``ticks`` with ``labels`` and a rotated axis ``title``."""
        for t, label in zip(ticks, labels, strict=True):
            py = self.y(t)
            self.add(
                f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{py:.1f}" '
                f'y2="{py:.1f}" class="grid"/>'
            )
            self.add(
                f'<text x="{self.left - 6}" y="{py + 4:.1f}" text-anchor="end" '
                f'class="tick">{escape(label)}</text>'
            )
        cy = self.top + self.inner_h / 2
        self.add(
            f'<text transform="translate(16,{cy:.1f}) rotate(-90)" text-anchor="middle" '
            f'class="axis-title">{escape(title)}</text>'
        )

    def x_axis(self, ticks: Sequence[float], labels: Sequence[str], title: str) -> None:
        """Draw tick marks and ``labels`` under the plotting area, and the axis ``title``."""
        base = self.top + self.inner_h
        self.add(
            f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{base:.1f}" '
            f'y2="{base:.1f}" class="axis"/>'
        )
        for t, label in zip(ticks, labels, strict=True):
            px = self.x(t)
            self.add(
                f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{base:.1f}" y2="{base + 5:.1f}" '
                'class="axis"/>'
            )
            self.add(
                f'<text x="{px:.1f}" y="{base + 18:.1f}" text-anchor="middle" '
                f'class="tick">{escape(label)}</text>'
            )
        self.add(
            f'<text x="{self.left + self.inner_w / 2:.1f}" y="{self.height - 8}" '
            f'text-anchor="middle" class="axis-title">{escape(title)}</text>'
        )

    def size_y_axis(self, title: str) -> None:
        """Draw a y axis in bytes, labelled in the binary unit that suits ``y_max``."""
        ticks, unit, factor = size_ticks(self.y_max)
        self.y_max = ticks[-1]
        self.y_axis(ticks, [fmt_number(t / factor) for t in ticks], f"{title} ({unit})")

    def seconds_x_axis(self, title: str = "time since the run started (s)") -> None:
        """Draw an x axis in seconds."""
        ticks = nice_ticks(self.x_max, 8)
        self.x_max = ticks[-1]
        self.x_axis(ticks, [fmt_number(t) for t in ticks], title)

    def svg(self, *, label: str) -> str:
        """Return the chart as an inline ``<svg>`` element (scales to its container's width)."""
        body = "\n".join(self.elements)
        return (
            f'<svg viewBox="0 0 {self.width} {self.height}" width="100%" role="img" '
            f'aria-label="{escape(label)}" preserveAspectRatio="xMinYMin meet">\n{body}\n</svg>'
        )


def legend(items: Sequence[tuple[str, str, str]]) -> str:
    """Return an HTML legend of ``(colour, style, text)`` items.

    ``style`` is ``box`` (solid), ``hollow`` (pale), ``line`` or ``dash``.
    """
    parts = []
    for colour, style, text in items:
        if style == "line":
            swatch = f'<span class="sw line" style="border-top-color:{colour}"></span>'
        elif style == "dash":
            swatch = f'<span class="sw dash" style="border-top-color:{colour}"></span>'
        elif style == "dot":
            swatch = ""
        elif style == "hollow":
            swatch = (
                f'<span class="sw box" style="border-color:{colour};background:{colour}33"></span>'
            )
        else:
            swatch = (
                f'<span class="sw box" style="background:{colour};border-color:{colour}"></span>'
            )
        parts.append(f'<span class="item">{swatch}{escape(text)}</span>')
    return '<div class="legend">' + "".join(parts) + "</div>"


def step_path(plot: Plot, points: Sequence[tuple[float, float]]) -> str:
    """Return an SVG path ``d`` for a step function through ``points`` (x ascending).

    Each value holds from its x until the next point's x.
    """
    if not points:
        return ""
    x0, y0 = points[0]
    d = [f"M{plot.x(x0):.1f},{plot.y(y0):.1f}"]
    for x, y in points[1:]:
        d.append(f"H{plot.x(x):.1f}V{plot.y(y):.1f}")
    return "".join(d)
