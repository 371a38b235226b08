"""The offline HTML report of a run: what each task was given and used, over time.

Runs in the client (``loadmaster report``, ``loadmaster run --report``, the demo).
It reads task reports and run facts (from a :class:`~loadmaster.plan.history.History`
or handed in directly) and writes one self-contained HTML file: inline CSS and
SVG, no script, no font, image or link fetched from anywhere, so it opens the
same with the network off.

This module covers, per run: the run's facts (host, capacity and where each
number came from, how peaks were measured), the per-category table, and the
charts — allocated vs used memory per task (in order of start), the node's
memory over time (sum of allocations and of measured peaks of the running tasks,
against the capacity), per-category waste (allocated − used memory·seconds) and,
for categories whose tasks had an input size, peak memory against input size with
the size-aware line and margin (``report/sizefit.py``), and, when the tasks
declared files, their transfers over time per node (``report/transfers.py``).
When the page covers several runs it opens with a comparison of them (the
learning across runs).

This module does *not* cover: the charts themselves (``report/charts.py``),
chart primitives (``report/svg.py``), the numbers per category (``report/summary.py``).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from loadmaster.errors import LoadmasterError
from loadmaster.report import sizefit, transfers
from loadmaster.report import summary as sm
from loadmaster.report.charts import (  # noqa: F401 (memory_timeline: for the demo and tests)
    chart_per_task,
    chart_timeline,
    chart_waste,
    memory_timeline,
    run_origin,
)
from loadmaster.report.svg import (
    category_colours,
    fmt_bytes,
    fmt_number,
)
from loadmaster.results import TaskReport
from loadmaster.sizes import format_size

if TYPE_CHECKING:
    from loadmaster.plan.history import History, RunInfo



@dataclass(frozen=True)
class RunView:
    """One run as the report shows it.

    ``info`` is the history's record of the run (``None`` if the reports came
    from elsewhere); ``sources`` says where each capacity number came from, when
    the caller knows (the executor's ``capacity.sources``).
    """

    run_id: int | None
    reports: tuple[TaskReport, ...]
    info: RunInfo | None = None
    sources: dict[str, str] = field(default_factory=dict)
    title: str = ""


class ReportError(LoadmasterError):
    """Raised when there is nothing to report (an empty history, an unknown run id)."""


def load_runs(
    history: History, run_ids: Sequence[int] | None = None, *, sources: dict[str, str] | None = None
) -> list[RunView]:
    """Return the runs ``run_ids`` (default: the latest) with their reports.

    Raises:
        ReportError: the history has no runs, or one of ``run_ids`` is not in it.
    """
    runs = {r.run_id: r for r in history.runs()}
    if not runs:
        raise ReportError(f"the history {history.path} has no runs yet; run some tasks first")
    if not run_ids:
        latest = history.latest_run()
        assert latest is not None
        run_ids = [latest.run_id]
    out = []
    for rid in run_ids:
        if rid not in runs:
            known = ", ".join(str(r) for r in sorted(runs))
            raise ReportError(
                f"run {rid} is not in the history {history.path}; runs there: {known}"
            )
        reports = tuple(history.reports(run_id=rid))
        out.append(
            RunView(run_id=rid, reports=reports, info=runs[rid], sources=dict(sources or {}))
        )
    return out


# ---------------------------------------------------------------- tables and facts


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def summary_table(summaries: Sequence[sm.CategorySummary], colours: dict[str, str]) -> str:
    """Return the per-category table (the CLI's closing table plus waste in memory·s)."""
    headers = [*sm.SUMMARY_HEADERS, "p90 peak", "waste (mem·s)", "median wall"]
    rows = []
    all_rows = list(summaries)
    if len(summaries) > 1:
        all_rows.append(sm.total(summaries))
    for s in all_rows:
        row = sm.summary_row(s)
        row += [
            sm.short_size(s.peak_p90) if s.category != "all" else "",
            f"{fmt_bytes(s.waste_byte_s)}·s",
            f"{s.wall_p50:.2f} s" if s.category != "all" else "",
        ]
        rows.append(row)
    html = _table(headers, rows, css="summary")
    # Colour the category cells so the table doubles as the charts' legend.
    for cat, colour in colours.items():
        cell = f"<tr><td>{escape(cat)}</td>"
        html = html.replace(
            cell,
            f'<tr><td><span class="dot" style="background:{colour}"></span>{escape(cat)}</td>',
            1,
        )
    return html


def run_notes(info: RunInfo | None, n_reports: int) -> list[str]:
    """What a reader of a run's report must know first: it ran no task; it has not finished."""
    notes = []
    if n_reports == 0:
        notes.append("it was empty: no task report was recorded (no task was submitted, or none ended)")
    if info is not None and info.finished_at is None:
        notes.append("it has not finished: it is still running, or its process ended without "
                     "its executor's end being recorded (killed, or crashed)")
    return notes


def facts(run: RunView) -> str:
    """Return the run's facts as a definition list."""
    methods = Counter(r.measure_method.value for r in run.reports)
    hosts = Counter(r.host for r in run.reports)
    items: list[tuple[str, str]] = []
    info = run.info
    if info is not None:
        items.append(("run", f"{info.run_id}" + (f" — {info.label}" if info.label else "")))
        items.append(("host", info.host))
        for note in run_notes(info, len(run.reports)):
            items.append(("note", note))
        dur = (info.finished_at - info.started_at) if info.finished_at else None
        items.append(
            (
                "started",
                _when(info.started_at) + (f", lasted {dur:.1f} s" if dur is not None else ""),
            )
        )
        cap = info.capacity
        items.append(
            (
                "capacity",
                ", ".join(
                    [
                        f"{fmt_number(cap.cores)} cores" if cap.cores is not None else "cores: any",
                        format_size(cap.memory) + " memory" if cap.memory else "memory: any",
                        format_size(cap.disk) + " disk" if cap.disk else "disk: any",
                        f"{cap.gpus} GPUs" if cap.gpus is not None else "GPUs: 0",
                    ]
                ),
            )
        )
    elif hosts:
        items.append(("host", ", ".join(hosts)))
    if run.sources:
        items.append(
            ("capacity from", "; ".join(f"{k}: {v}" for k, v in sorted(run.sources.items())))
        )
    items.append(("task reports", str(len(run.reports))))
    if methods:
        items.append(
            (
                "peak memory measured by",
                ", ".join(f"{m} ({n} attempts)" for m, n in methods.items()),
            )
        )
    if len(hosts) > 1:
        items.append(("hosts", ", ".join(f"{h} ({n})" for h, n in hosts.items())))
    return (
        '<dl class="facts">'
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
        + "</dl>"
    )


def runs_comparison(runs: Sequence[RunView]) -> str:
    """Return a table comparing the page's runs, category by category (learning across runs)."""
    rows = []
    for run in runs:
        for s in sm.summarize(run.reports):
            rows.append(
                [
                    str(run.run_id if run.run_id is not None else "-"),
                    s.category,
                    str(s.tasks),
                    str(s.retries),
                    sm.short_size(s.mean_allocated),
                    sm.short_size(s.mean_peak),
                    sm.format_percent(s.efficiency),
                    f"{fmt_bytes(s.waste_byte_s)}·s",
                ]
            )
    headers = [
        "run",
        "category",
        "tasks",
        "retries",
        "mean alloc",
        "mean peak",
        "efficiency",
        "waste",
    ]
    return _table(headers, rows, css="summary compare")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 color:#222;background:#fafafa;margin:0}
main{max-width:1260px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:34px 0 8px;border-bottom:2px solid #ddd;
 padding-bottom:4px}h3{font-size:16px;margin:22px 0 6px}
p.lead{color:#555;margin:0 0 12px}p.how{color:#555;margin:2px 0 8px;max-width:1100px}
section.chart{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px 14px;
 margin:10px 0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;background:#fff;
 border:1px solid #e3e3e3;border-radius:6px;padding:10px 14px}
dl.facts dt{font-weight:600;color:#444}dl.facts dd{margin:0}
table.summary{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums;
 margin:6px 0}
table.summary th,table.summary td{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.summary th{background:#f0f0f0}
table.summary td:first-child,table.summary th:first-child{text-align:left}
table.summary:not(.compare) tr:last-child td{font-weight:600}
table.compare td:nth-child(2),table.compare th:nth-child(2){text-align:left}
.dot{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
svg{display:block;font-family:inherit}
svg .grid{stroke:#e6e6e6;stroke-width:1}svg .axis{stroke:#888;stroke-width:1}
svg .tick{font-size:12px;fill:#555}svg .axis-title{font-size:13px;fill:#333}
svg .label{font-size:13px;fill:#222}svg .note{font-size:12px}
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;margin:6px 0 4px 72px;font-size:13px;color:#333}
.legend .item{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block}.sw.box{width:14px;height:12px;border:1px solid;border-radius:2px}
.sw.line{width:22px;border-top:3px solid}.sw.dash{width:22px;border-top:3px dashed}
p.empty{color:#888;font-style:italic}
figure.sizefit{margin:14px 0 20px}figure.sizefit figcaption{font-size:15px;margin:0 0 4px}
p.caption{color:#333;margin:4px 0 0 72px;max-width:1080px;font-size:13px}
p.caption .warn{color:#8a4b00}
footer{color:#888;margin-top:40px;font-size:12px}
"""


def render_run(run: RunView, *, heading: str, colours: dict[str, str] | None = None) -> str:
    """Return the HTML section of one run (``colours``: per category, shared by the page)."""
    summaries = sm.summarize(run.reports)
    colours = colours or category_colours(sorted({s.category for s in summaries}))
    return f"""
<h2>{escape(heading)}</h2>
{facts(run)}
<h3>Per category</h3>
<p class="how">One row per category: tasks, failed tasks, retries (attempts that ran out of their
allocation and were run again bigger), peak memory (median and highest), the mean allocation
against the mean measured peak, and efficiency = measured peak × time / allocated memory × time.
Waste is the rest of the allocation, reserved but never used.</p>
{summary_table(summaries, colours)}
<section class="chart">
<h3>Allocated vs used memory per task</h3>
<p class="how">One bar per task attempt, in order of start, coloured by category. The pale bar is
the memory the attempt was allocated, the solid bar the peak its whole process tree really used.
A pale bar well above the solid one is memory reserved for nothing; a solid bar reaching the top of
its pale one ran out of memory; a task retried bigger and then done is marked ●, a failed one ×.
As the planner learns a category, its pale bars come down to just above the solid ones.</p>
{chart_per_task(run, colours)}
</section>
<section class="chart">
<h3>Node memory over time</h3>
<p class="how">Blue: the sum of the allocations of the tasks running at each moment — what the
scheduler packed onto the node; it must stay under the dashed capacity line. Orange: the sum of the
same tasks' measured peaks (each task counted at its peak for its whole run, so an upper bound of
what was really in use). The gap between blue and orange is reserved but unused memory; the gap
between blue and the capacity line is memory left free. Below: how many tasks ran at once.</p>
{chart_timeline(run)}
</section>
<section class="chart">
<h3>Waste per category</h3>
<p class="how">Memory × wall time allocated (pale) and measured (solid) per category, over every
attempt. Waste = allocated − used, in memory·seconds and as a share of what was allocated.</p>
{chart_waste(summaries, colours)}
</section>
{_size_section(run)}
{transfers.section(run.reports, run_origin(run))}"""


def _size_section(run: RunView) -> str:
    """Return the "memory vs input size" section, or ``""`` when no task had an input size."""
    figures = sizefit.section(run.reports)
    if not figures:
        return ""
    return f"""<section class="chart">
<h3>Peak memory vs input size</h3>
<p class="how">Per category whose tasks declared an input size (their input files, or
<code>size=</code> at submit): one point per measured attempt — input size across, peak memory up,
coloured by how it ended. The black line is the least-squares line peak = a + b·size that the
size-aware strategy fits over the completed attempts of this run; the green band above it is its
safety margin (from the fit's residuals, wider away from the sizes measured): a task of size s is
given the top of the band at s. Points above the band would have run out. Where the line explains
too little (R² &lt; 0.8) or there are too few points, the strategy sizes from the distribution
instead, and the dashed lines show its median and largest peak.</p>
{figures}
</section>
"""


def render_html(runs: Sequence[RunView], *, history_path: str = "", title: str = "") -> str:
    """Return the whole page for ``runs`` (one section each; a comparison first when several)."""
    title = title or (
        f"loadmaster report — run {runs[0].run_id}" if len(runs) == 1 else "loadmaster report"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
        '<p class="lead">What each task was given and what it really used, measured by loadmaster. '
        "Hover a bar or a line for its numbers.</p>",
    ]
    if len(runs) > 1:
        parts.append("<h2>Runs compared</h2>")
        parts.append(
            '<p class="how">The same categories across runs: a later run starts from what earlier '
            "ones measured (kept in the history), so it needs fewer retries and allocates closer "
            "to "
            "what tasks use.</p>"
        )
        parts.append(runs_comparison(runs))
    # One colour per category for the whole page, so runs compare at a glance.
    colours = category_colours(sorted({r.category for run in runs for r in run.reports}))
    for run in runs:
        heading = run.title or (f"Run {run.run_id}" if run.run_id is not None else "Run")
        if run.info is not None and run.info.label and not run.title:
            heading += f" — {run.info.label}"
        parts.append(render_run(run, heading=heading, colours=colours))
    made = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    where = f" from {escape(history_path)}" if history_path else ""
    parts.append(f"<footer>Written by loadmaster on {made}{where}.</footer></main></body></html>")
    return "\n".join(parts)


def write_report(
    path: str | os.PathLike[str],
    runs: Sequence[RunView],
    *,
    history_path: str = "",
    title: str = "",
) -> Path:
    """Write the page for ``runs`` to ``path`` (parents created; atomically replaced); return it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(render_html(runs, history_path=history_path, title=title), encoding="utf-8")
    os.replace(tmp, out)
    return out.resolve()
