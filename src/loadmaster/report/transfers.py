"""The transfers view of a run's HTML report: per node, each input fetched, over the run's time.

Runs in the client, called by ``report/html.py`` while it writes the page.
It reads what each task report already carries about its declared inputs
(``TaskReport.data``: per input, when its staging began, seconds, bytes
moved and from where; cache hits move nothing) and draws one lane per node:
a bar per fetch from its start to its end, coloured by its source (the
submitter, ``"client"``, or the node it came from), with a table of bytes in
per node and source, and cache hits.

Reports read back from a history carry no data report (the history keeps
the measured numbers only), so the view shows runs whose reports were handed
in directly (``loadmaster run --report``, ``write_report`` with the
executor's reports).

Does not cover: the page (``report/html.py``), chart primitives (``report/svg.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from loadmaster.report.svg import Plot, category_colours, fmt_bytes, legend
from loadmaster.results import TaskReport

LANE = 34  # pixels per node


@dataclass(frozen=True, slots=True)
class Transfer:
    """One input fetched into a node's cache for a task."""

    node: str
    task_id: int
    key: str
    source: str
    bytes: int
    start: float  # wall clock
    seconds: float


def transfers_of(reports: Sequence[TaskReport]) -> tuple[list[Transfer], dict[str, int]]:
    """The fetches the reports record (bytes moved, a start time known), and cache hits per node."""
    out: list[Transfer] = []
    hits: dict[str, int] = {}
    for r in reports:
        d = r.data
        if d is None:
            continue
        for s in d.inputs:
            if s.hit or not s.bytes_copied:
                hits[d.node] = hits.get(d.node, 0) + (1 if s.hit else 0)
                continue
            if s.started_at > 0:
                out.append(Transfer(d.node, r.task_id, s.key, s.source or "?", s.bytes_copied, s.started_at,
                                    max(0.0, s.seconds)))
    return out, hits


def section(reports: Sequence[TaskReport], origin: float) -> str:
    """The "Transfers over time" section (``""`` when no report recorded a fetch); ``origin``: the run's t = 0."""
    moved, hits = transfers_of(reports)
    if not moved:
        return ""
    first = min(t.start for t in moved)
    t0 = origin if 0 < origin <= first else first
    nodes = sorted({t.node for t in moved} | set(hits))
    sources = sorted({t.source for t in moved})
    colours = category_colours(sources)
    end = max(t.start - t0 + t.seconds for t in moved)
    plot = Plot(width=1200, height=LANE * len(nodes) + 64, x_max=end or 1.0, y_max=float(len(nodes)),
                left=140)
    plot.seconds_x_axis()
    for i, node in enumerate(nodes):
        y = plot.y(len(nodes) - i) + 4
        plot.add(f'<text x="{plot.left - 8}" y="{y + LANE / 2:.1f}" text-anchor="end" class="tick" '
                 f'data-node="{escape(node)}">{escape(node)}</text>')
        for t in (t for t in moved if t.node == node):
            x0, x1 = plot.x(t.start - t0), plot.x(t.start - t0 + t.seconds)
            tip = (f"task {t.task_id} on {t.node}: {t.key}, {fmt_bytes(t.bytes)} from {t.source} "
                   f"in {t.seconds:.2f} s, from {t.start - t0:.2f} s")
            plot.add(f'<g class="transfer" data-node="{escape(node)}" data-bytes="{t.bytes}" '
                     f'data-source="{escape(t.source)}"><title>{escape(tip)}</title>'
                     f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(1.5, x1 - x0):.1f}" height="{LANE - 8}" '
                     f'fill="{colours[t.source]}" fill-opacity="0.75"/></g>')
    rows = []
    for node in nodes:
        mine = [t for t in moved if t.node == node]
        per: dict[str, int] = {}
        for t in mine:
            per[t.source] = per.get(t.source, 0) + t.bytes
        frm = ", ".join(f"{fmt_bytes(n)} from {escape(s)}" for s, n in sorted(per.items())) or "—"
        rows.append(f"<tr><td>{escape(node)}</td><td class=\"num\">{len(mine)}</td>"
                    f"<td class=\"num\">{fmt_bytes(sum(per.values()))}</td><td>{frm}</td>"
                    f"<td class=\"num\">{hits.get(node, 0)}</td></tr>")
    table = ("<table class=\"transfers\"><thead><tr><th>node</th><th>fetches</th><th>bytes in</th>"
             "<th>from</th><th>cache hits</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return f"""<section class="chart" id="transfers">
<h3>Transfers over time, per node</h3>
<p class="how">One lane per node; one bar per input fetched into that node's cache for a task, from
when its staging began to when its bytes were all there, coloured by where they came from
(<code>client</code>: the submitter). Hover a bar for the task, the file, the bytes and the seconds.
An input already in the node's cache moves nothing and has no bar (counted as a cache hit below).</p>
{plot.svg(label="transfers over time per node")}
{legend([(colours[s], "box", f"from {s}") for s in sources])}
{table}
</section>
"""
