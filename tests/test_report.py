"""The offline HTML report, its numbers, and the ``report``/``history`` subcommands.

Reports are synthetic TaskReports stored in a real SQLite history file; the page
is rendered by Debian's real headless Chromium and the screenshot decoded and
checked for content (skipped, with the reason, where Chromium is missing).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from loadmaster.cli import main
from loadmaster.plan.history import History
from loadmaster.report import summary as sm
from loadmaster.report.html import ReportError, load_runs, memory_timeline, write_report
from loadmaster.report.svg import PALETTE, nice_ticks, size_ticks
from loadmaster.results import MeasureMethod, Outcome, TaskReport
from loadmaster.spec import Resources

MiB = 1 << 20
GiB = 1 << 30
T0 = 1_700_000_000.0


def _report(
    task_id: int,
    category: str,
    peak: int,
    alloc: int | None,
    start: float,
    wall: float,
    *,
    attempts: int = 1,
    outcome: Outcome = Outcome.OK,
    exhausted: str | None = None,
    input_size: int | None = None,
) -> TaskReport:
    return TaskReport(
        task_id=task_id,
        category=category,
        peak_memory=peak,
        cpu_time=wall * 0.3,
        wall_time=wall,
        cores=0.3,
        disk=4096,
        max_processes=1,
        allocation=Resources(cores=0.25, memory=alloc),
        attempts=attempts,
        exit_status=0 if outcome is Outcome.OK else (-9 if exhausted else 1),
        host="node-a",
        measure_method=MeasureMethod.CGROUP_V1,
        outcome=outcome,
        exhausted=exhausted,
        started_at=start,
        finished_at=start + wall,
        error="" if outcome is Outcome.OK else "boom",
        input_size=input_size,
    )


def synthetic_run(seed: int = 7, n: int = 200, *, learned: bool = False) -> list[TaskReport]:
    """Three categories; the first tasks of each get 2 GiB, later ones peak × 1.3; some retries."""
    rng = random.Random(seed)
    out: list[TaskReport] = []
    seen: dict[str, int] = {}
    t = T0 + 0.5
    for i in range(n):
        cat = rng.choice(["align", "simulate", "summarize"])
        k = seen[cat] = seen.get(cat, 0) + 1
        peak = {
            "align": rng.randint(180, 240) * MiB,
            "simulate": rng.randint(50, 600) * MiB,
            "summarize": rng.randint(15, 25) * MiB,
        }[cat]
        wall = {"align": 0.3, "simulate": 0.5, "summarize": 0.05}[cat] * rng.uniform(0.8, 1.2)
        alloc = 2 * GiB if (k <= 2 and not learned) else int(peak * 1.3)
        if cat == "simulate" and k > 2 and rng.random() < 0.1:
            out.append(
                _report(
                    i,
                    cat,
                    int(peak * 0.6),
                    int(peak * 0.6),
                    t,
                    wall / 2,
                    outcome=Outcome.EXHAUSTED,
                    exhausted="memory",
                )
            )
            out.append(_report(i, cat, peak, int(peak * 1.5), t + wall / 2, wall, attempts=2))
        elif i == 50:
            out.append(_report(i, cat, peak // 2, alloc, t, wall, outcome=Outcome.FAILED))
        else:
            out.append(_report(i, cat, peak, alloc, t, wall))
        t += 0.05
    return out


# The known line of the sized category: peak = 300 MiB + 0.75 · input size (+ noise).
LINE_A = 300 * MiB
LINE_B = 0.75
NOISE = 20 * MiB


def sized_run(seed: int = 11) -> list[TaskReport]:
    """Categories with input sizes: a line (``tract``), noise (``register``), too few (``tiny``).

    ``tract``: 60 tasks, sizes 200 MiB..3 GiB, peak on the known line ± ~20 MiB;
    five ran out of memory first (stored exhausted attempt, then the retry), one
    failed. ``register``: 30 tasks whose peak does not depend on size. ``tiny``:
    3 tasks. ``plain``: 10 tasks without an input size.
    """
    rng = random.Random(seed)
    out: list[TaskReport] = []
    t = T0 + 0.5
    tid = 0
    for k in range(60):
        tid += 1
        size = rng.randint(200 * MiB, 3 * GiB)
        peak = int(LINE_A + LINE_B * size + rng.gauss(0, NOISE))
        if k % 12 == 5:
            small = int(peak * 0.7)
            exhausted = _report(
                tid, "tract", small, small, t, 0.2,
                outcome=Outcome.EXHAUSTED, exhausted="memory", input_size=size,
            )  # fmt: skip
            out.append(exhausted)
            out.append(
                _report(tid, "tract", peak, 2 * small, t + 0.2, 0.4, attempts=2, input_size=size)
            )
        elif k == 40:
            failed = _report(
                tid, "tract", peak, peak + 64 * MiB, t, 0.4, outcome=Outcome.FAILED, input_size=size
            )
            out.append(failed)
        else:
            out.append(_report(tid, "tract", peak, peak + 64 * MiB, t, 0.4, input_size=size))
        t += 0.1
    for _ in range(30):
        tid += 1
        size = rng.randint(10 * MiB, 500 * MiB)
        peak = rng.randint(100, 900) * MiB
        out.append(_report(tid, "register", peak, 1 * GiB, t, 0.3, input_size=size))
        t += 0.1
    for size in (100 * MiB, 150 * MiB, 400 * MiB):
        tid += 1
        out.append(_report(tid, "tiny", 50 * MiB, 128 * MiB, t, 0.1, input_size=size))
        t += 0.1
    for _ in range(10):
        tid += 1
        out.append(_report(tid, "plain", 30 * MiB, 64 * MiB, t, 0.1))
        t += 0.1
    return out


@pytest.fixture
def sized_history(tmp_path: Path) -> Path:
    """A real history file with one run of :func:`sized_run`."""
    path = tmp_path / "sized.sqlite"
    h = History(path)
    rid = h.start_run(label="sized", capacity=Resources(cores=2, memory=8 * GiB, disk=100 * GiB))
    h.record(rid, sized_run())
    h.finish_run(rid)
    h.close()
    return path


@pytest.fixture
def history_file(tmp_path: Path) -> Path:
    """A real history file with two runs of synthetic reports (run 2 starts learned)."""
    path = tmp_path / "history.sqlite"
    h = History(path)
    cap = Resources(cores=2, memory=4 * GiB, disk=100 * GiB, gpus=0)
    for learned in (False, True):
        rid = h.start_run(label="synthetic", capacity=cap)
        h.record(rid, synthetic_run(seed=rid, learned=learned))
        h.finish_run(rid)
    h.close()
    return path


# ---------------------------------------------------------------- numbers


def test_summary_counts_tasks_retries_and_byte_seconds() -> None:
    reports = [
        _report(1, "a", 100 * MiB, 200 * MiB, T0, 2.0),
        _report(2, "a", 300 * MiB, 400 * MiB, T0, 1.0),
        _report(3, "a", 50 * MiB, 50 * MiB, T0, 1.0, outcome=Outcome.EXHAUSTED, exhausted="memory"),
        _report(3, "a", 120 * MiB, 200 * MiB, T0 + 1, 1.0, attempts=2),
        _report(4, "b", 10 * MiB, None, T0, 1.0, outcome=Outcome.FAILED),
    ]
    a, b = sm.summarize(reports)
    assert (a.category, a.tasks, a.failures, a.retries, a.exhausted) == ("a", 3, 0, 1, 1)
    assert a.peak_max == 300 * MiB
    assert a.peak_p50 == 120 * MiB
    assert a.mean_allocated == (200 + 400 + 200) * MiB // 3
    # memory·seconds over every attempt: allocated 400+400+50+200, used 200+300+50+120 (MiB·s)
    assert a.allocated_byte_s == pytest.approx(1050 * MiB)
    assert a.used_byte_s == pytest.approx(670 * MiB)
    assert a.waste_fraction == pytest.approx(380 / 1050)
    assert a.efficiency == pytest.approx(670 / 1050)
    assert (b.tasks, b.failures, b.mean_allocated, b.efficiency) == (1, 1, None, None)
    table = sm.format_summary_table([a, b])
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["category", "tasks", "failed", "retries"]
    assert lines[2].split()[:4] == ["a", "3", "0", "1"]
    assert lines[-1].split()[:4] == ["all", "4", "1", "1"]
    assert "64%" in lines[2]  # efficiency of a


def test_axis_ticks_are_round_numbers_in_binary_units() -> None:
    assert nice_ticks(9.3) == [0, 2, 4, 6, 8, 10]
    ticks, unit, factor = size_ticks(3.3 * GiB)
    assert unit == "GiB" and factor == GiB
    assert ticks[-1] >= 3.3 * GiB and all(t / GiB == round(t / GiB, 2) for t in ticks)
    assert size_ticks(700 * MiB)[1] == "MiB"


def test_timeline_sums_allocations_of_running_tasks() -> None:
    from loadmaster.report.html import RunView

    reports = [
        _report(1, "a", 100 * MiB, 200 * MiB, T0, 2.0),
        _report(2, "a", 50 * MiB, 300 * MiB, T0 + 1, 2.0),
    ]
    alloc, used, running = memory_timeline(RunView(run_id=1, reports=tuple(reports)))
    assert alloc == [(0.0, 200 * MiB), (1.0, 500 * MiB), (2.0, 300 * MiB), (3.0, 0.0)]
    assert used == [(0.0, 100 * MiB), (1.0, 150 * MiB), (2.0, 50 * MiB), (3.0, 0.0)]
    assert [n for _, n in running] == [1, 2, 1, 0]


# ---------------------------------------------------------------- the page


def _external_refs(html: str) -> list[str]:
    return re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", html) + re.findall(r"@import|<script|<link|<img|url\(", html)


def test_report_page_from_history_has_three_charts_and_no_network(history_file: Path, tmp_path: Path) -> None:
    h = History(history_file)
    runs = load_runs(h, [1, 2], sources={"memory": "MemTotal", "cores": "affinity"})
    out = write_report(tmp_path / "r.html", runs, history_path=h.path)
    h.close()
    html = out.read_text()
    for label in (
        "allocated vs used memory per task",
        "node memory in use vs capacity over time",
        "memory waste per category",
    ):
        assert html.count(f'aria-label="{label}"') == 2, label  # one per run
    assert "http://" not in html and "https://" not in html
    assert _external_refs(html) == []
    assert "capacity 4 GiB" in html  # the capacity line of the timeline
    assert "Runs compared" in html
    for cat in ("align", "simulate", "summarize"):
        assert f"{cat}</td>" in html
    assert "cgroup-v1" in html and "memory: MemTotal" in html
    # Every task attempt is a bar with a tooltip.
    n_reports = sum(len(r.reports) for r in runs)
    assert html.count("attempt ") >= n_reports
    assert "ran out of memory" in html or "exhausted" in html


def test_report_command_writes_latest_run_and_names_it(
    history_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub dir" / "it's.html"
    assert main(["report", "--history", str(history_file), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert str(out.resolve()) in said and "run 2" in said
    assert "loadmaster report — run 2" in out.read_text()


def test_report_command_refuses_unknown_run_and_missing_history(
    history_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    assert main(["report", "--history", str(history_file), "--run", "9", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run 9 is not in the history" in err and "1, 2" in err
    assert not out.exists()
    missing = tmp_path / "nope.sqlite"
    assert main(["report", "--history", str(missing), "-o", str(out)]) == 2
    assert "no history at" in capsys.readouterr().err
    assert not missing.exists()  # not created by a mere read


def test_report_of_empty_history_says_so(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    History(path).close()
    with pytest.raises(ReportError, match="no runs yet"):
        h = History(path)
        try:
            load_runs(h)
        finally:
            h.close()


def test_history_command_table_and_json(history_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--history", str(history_file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["category"]: r for r in data["categories"]}
    assert set(rows) == {"align", "simulate", "summarize"}
    assert 180 * MiB <= rows["align"]["peak_memory_p50"] <= 240 * MiB
    assert rows["simulate"]["peak_memory_p90"] <= rows["simulate"]["peak_memory_max"]
    assert main(["history", "align", "--history", str(history_file)]) == 0
    text = capsys.readouterr().out
    assert "align" in text and "simulate" not in text and "peak p90" in text
    assert main(["history", "nothing-like-this", "--history", str(history_file)]) == 1


# ---------------------------------------------------------------- memory vs input size


def _figures(html: str) -> dict[str, dict[str, str]]:
    """Return each scatter figure's data- attributes (and its inner HTML), by category."""
    out = {}
    for m in re.finditer(r'<figure class="sizefit" ([^>]*)>(.*?)</figure>', html, re.S):
        attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', m.group(1)))
        attrs["html"] = m.group(2)
        out[attrs["category"]] = attrs
    return out


def test_report_scatter_recovers_the_known_line(sized_history: Path, tmp_path: Path) -> None:
    h = History(sized_history)
    out = write_report(tmp_path / "r.html", load_runs(h), history_path=h.path)
    html = out.read_text()
    figs = _figures(html)
    # Only categories with an input size get a scatter.
    assert set(figs) == {"tract", "register", "tiny"}
    tract = figs["tract"]
    assert tract["status"] == "fit"
    assert float(tract["b"]) == pytest.approx(LINE_B, abs=0.02)
    assert float(tract["a"]) == pytest.approx(LINE_A, abs=30 * MiB)
    assert float(tract["r2"]) > 0.98
    assert int(tract["fit-n"]) == 60  # completed attempts: the 5 exhausted ones are left out
    # The caption states the slope readably, per GiB of input here (~768 MiB per GiB).
    slope = re.search(r"<b>([\d.]+) MiB per GiB</b> of input", tract["html"])
    assert slope is not None, tract["html"][-1500:]
    assert float(slope.group(1)) == pytest.approx(LINE_B * 1024, rel=0.03)
    assert re.search(r"R² = <b>0\.99\d</b>", tract["html"])
    # Margin: at least 1.25 × the largest residual of ~3σ noise, and well under 10σ.
    assert 1.25 * NOISE < float(tract["margin"]) < 10 * NOISE
    # One marker per measured attempt with a size, classed by how it ended.
    kinds = re.findall(r'<g class="pt (\w+)">', tract["html"])
    assert len(kinds) == 65
    assert (kinds.count("exhausted"), kinds.count("retried"), kinds.count("failed")) == (5, 5, 1)
    assert '<g class="fit">' in tract["html"] and '<g class="band">' in tract["html"]
    # The figure's numbers are the size-aware strategy's own, over the same observations.
    from loadmaster.plan.strategies import LineFit, SizeAware
    from loadmaster.plan.strategy import CategoryState

    memory_fit, _ = SizeAware().fits(CategoryState("tract", h.observations("tract")))
    h.close()
    assert isinstance(memory_fit, LineFit)
    assert float(tract["b"]) == pytest.approx(memory_fit.b, rel=1e-5)
    assert float(tract["a"]) == pytest.approx(memory_fit.a, rel=1e-5)
    # No line where the strategy falls back to the distribution: p50/max lines and a note.
    for cat, status, why in (
        ("register", "poor fit", "poor fit: R²"),
        ("tiny", "too few points", "fewer than 5"),
    ):
        fig = figs[cat]
        assert fig["status"] == status
        assert '<g class="fit">' not in fig["html"] and '<g class="band">' not in fig["html"]
        assert why in fig["html"] and "from the distribution" in fig["html"]
        assert ">max " in fig["html"] and ">p50 " in fig["html"]
    assert float(figs["register"]["r2"]) < 0.8
    assert "r2" not in figs["tiny"]
    assert "Peak memory vs input size" in html
    assert _external_refs(html) == []
    assert "http://" not in html and "https://" not in html


def test_report_without_input_sizes_has_no_scatter(history_file: Path, tmp_path: Path) -> None:
    h = History(history_file)
    html = write_report(tmp_path / "r.html", load_runs(h), history_path=h.path).read_text()
    h.close()
    assert "sizefit" not in html.split("</style>")[1]
    assert "Peak memory vs input size" not in html


# ---------------------------------------------------------------- a real browser


def _decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """Return (width, height, bytes per pixel, unfiltered pixel rows) of an 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8, f"bit depth {depth}"
            bpp = {2: 3, 6: 4, 0: 1, 4: 2}[colour]
        elif kind == b"IDAT":
            idat += chunk
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        out += line
        prev = line
    return width, height, bpp, bytes(out)


def _screenshot(page: Path, tmp_path: Path, size: tuple[int, int]) -> Path:
    """Render ``page`` in Debian's headless Chromium; return the PNG (skip if it is missing)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make system-deps installs it)")
    shot = tmp_path / f"shot-{page.stem}.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={shot}",
        f"--window-size={size[0]},{size[1]}",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"no screenshot; chromium said: {proc.stderr[-2000:]}"
    return shot


def _sample(shot: Path, step: int = 4) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Return (width, height, every ``step``-th pixel's RGB) of a screenshot."""
    width, height, bpp, pixels = _decode_png(shot.read_bytes())
    stride = width * bpp
    sample = []
    for y in range(0, height, step):
        for x in range(0, width, step):
            i = y * stride + x * bpp
            sample.append((pixels[i], pixels[i + 1], pixels[i + 2]))
    return width, height, sample


def _near(sample: list[tuple[int, int, int]], colour: str, tol: int = 12) -> int:
    """Return how many sampled pixels are within ``tol`` of ``colour`` (``#rrggbb``)."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return sum(1 for p in sample if max(abs(p[0] - r), abs(p[1] - g), abs(p[2] - b)) <= tol)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(history_file: Path, tmp_path: Path) -> None:
    h = History(history_file)
    page = write_report(tmp_path / "report.html", load_runs(h, [1]), history_path=h.path)
    h.close()
    shot = _screenshot(page, tmp_path, (1400, 2400))
    width, height, sample = _sample(shot)
    assert (width, height) == (1400, 2400)
    assert len(set(sample)) > 50, "the page looks blank"
    mean = sum(sum(p) for p in sample) / (3 * len(sample))
    var = sum((sum(p) / 3 - mean) ** 2 for p in sample) / len(sample)
    assert var > 100, f"too little contrast (variance {var:.0f})"
    # The three categories' solid colours are drawn (bars), in the chart area.
    for colour in PALETTE[:3]:
        assert _near(sample, colour) > 20, f"no {colour} bars in the screenshot"


@pytest.mark.slow
def test_size_scatter_renders_in_headless_chromium(sized_history: Path, tmp_path: Path) -> None:
    """The scatter section alone, in the page's CSS: points, line, band and p50/max are drawn."""
    from loadmaster.report import sizefit
    from loadmaster.report.html import CSS

    h = History(sized_history)
    reports = h.reports()
    h.close()
    page = tmp_path / "scatter.html"
    page.write_text(
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><style>{CSS}</style></head>'
        f"<body><main>{sizefit.section(reports)}</main></body></html>",
        encoding="utf-8",
    )
    shot = _screenshot(page, tmp_path, (1400, 1500))
    _, _, sample = _sample(shot, step=2)
    # Colours only this section uses: ok points, retried points, the band's dashed edge,
    # the failed cross, the max-peak line of the categories without a usable line.
    for colour, what in (
        (sizefit.OK_COLOUR, "ok points"),
        (sizefit.RETRIED_COLOUR, "retried points"),
        (sizefit.BAND_COLOUR, "the margin band"),
        (sizefit.MAX_COLOUR, "the max-peak line"),
        (sizefit.FAIL_COLOUR, "the failed marker"),
    ):
        assert _near(sample, colour, tol=24) > 3, f"no {what} ({colour}) in the screenshot"
    assert _near(sample, sizefit.OK_COLOUR, tol=24) > 200  # ~90 ok points of ~40 px each


# ---------------------------------------------------------------- the demo, end to end


@pytest.mark.slow
def test_demo_runs_small_workload_and_names_its_report_last(tmp_path: Path) -> None:
    report = tmp_path / "demo report.html"
    history = tmp_path / "demo.sqlite"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadmaster.cli",
            "demo",
            "--tasks",
            "24",
            "--memory",
            "1GiB",
            "--history",
            str(history),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"report written to {report.resolve()}"
    html = report.read_text()
    assert "Runs compared" in html and html.count('aria-label="memory waste per category"') == 2
    assert "http://" not in html and "https://" not in html
    h = History(history)
    try:
        runs = h.runs()
        assert len(runs) == 2
        cats = {r.category for r in h.reports(run_id=runs[1].run_id)}
    finally:
        h.close()
    assert cats <= {"align", "simulate", "summarize"} and len(cats) >= 2
    # Learning: the second run sized align from the first one's measurements, not generously.
    second = [r for r in h_reports(history, runs[1].run_id) if r.category == "align"]
    if second:
        assert all(r.allocation.memory is not None for r in second)
        assert max(r.allocation.memory or 0 for r in second) < 512 * MiB


def h_reports(path: Path, run_id: int) -> list[TaskReport]:
    h = History(path)
    try:
        return h.reports(run_id=run_id)
    finally:
        h.close()


def test_the_full_demo_ends_with_no_failed_task(tmp_path: Path) -> None:
    """`make demo` as a user runs it: 300 tasks of three functions, several at once per
    zygote, handed ahead between categories; any lost function or order fails tasks."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadmaster.cli", "demo", "--history", str(tmp_path / "h.sqlite"),
         "--report", str(tmp_path / "r.html")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo finished" in proc.stdout and ", 0 tasks failed." in proc.stdout
