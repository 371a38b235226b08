"""``loadmaster history`` as a user runs it: a real process over a real SQLite history.

The history is filled through ``History.record`` with synthetic TaskReports
whose peaks follow a known line of their input size plus noise
(``tests.test_report.sized_run``), so the fitted model the command prints can
be checked against the line the data was made from.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from loadmaster.plan.history import History
from loadmaster.plan.planner import Planner
from loadmaster.plan.strategies import round_up
from loadmaster.results import Outcome
from loadmaster.spec import Resources
from tests.test_report import LINE_A, LINE_B, NOISE, GiB, MiB, sized_run


@pytest.fixture(scope="module")
def sized_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A history file (with a space in its path) holding one run of ``sized_run``."""
    path = tmp_path_factory.mktemp("hist dir") / "it's history.sqlite"
    h = History(path)
    rid = h.start_run(label="sized", capacity=Resources(cores=2, memory=8 * GiB, disk=100 * GiB))
    h.record(rid, sized_run())
    h.finish_run(rid)
    h.close()
    return path


def _history(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadmaster.cli", "history", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def as_json(sized_file: Path) -> dict[str, Any]:
    """``loadmaster history --json --strategy learned`` (the default is size-aware), parsed."""
    proc = _history("--history", str(sized_file), "--json", "--strategy", "learned")
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def test_json_has_the_fitted_line_near_the_known_one(as_json: dict[str, Any]) -> None:
    rows = {r["category"]: r for r in as_json["categories"]}
    assert set(rows) == {"tract", "register", "tiny", "plain"}
    assert as_json["default_strategy"] == "size-aware"
    assert as_json["strategies"] == ["size-aware", "learned"]
    tract = rows["tract"]
    model = tract["size_model"]
    assert model["status"] == "fit" and model["used"] is True and model["reason"] is None
    assert model["b"] == pytest.approx(LINE_B, abs=0.02)
    assert model["a"] == pytest.approx(LINE_A, abs=30 * MiB)
    assert model["r2"] > 0.98
    assert (model["points"], model["completed_points"], model["n"]) == (65, 60, 60)
    assert 1.25 * NOISE < model["margin_at_typical"] < 10 * NOISE
    assert "per GiB of input" in model["text"] and "R² 0.99" in model["text"]
    # Counts and distribution.
    assert (tract["tasks"], tract["failures"], tract["retries"], tract["count"]) == (60, 1, 5, 65)
    assert tract["peak_memory_p50"] <= tract["peak_memory_p90"] <= tract["peak_memory_max"]
    # The typical input is the median of the completed attempts' sizes.
    sizes = [
        r.input_size
        for r in sized_run()
        if r.category == "tract" and r.exhausted is None and r.input_size is not None
    ]
    assert tract["typical_input_size"] == int(statistics.median(sizes))


def test_json_first_allocations_are_the_planners(
    as_json: dict[str, Any], sized_file: Path
) -> None:
    rows = {r["category"]: r for r in as_json["categories"]}
    node = Resources(**as_json["node"])
    h = History(sized_file)
    try:
        for name in ("learned", "size-aware"):
            planner = Planner(node, h, strategy=name)
            for cat, row in rows.items():
                shown = row["first_allocation"][name]
                assert shown["input_size"] == row["typical_input_size"]
                expected = planner.first_allocation(cat, None, row["typical_input_size"])
                assert shown["memory"] == expected.memory, (name, cat)
    finally:
        h.close()
    tract = rows["tract"]
    m = tract["size_model"]
    # size-aware at the median input: the line plus its margin there, rounded up to 16 MiB.
    line_alloc = round_up(m["a"] + m["b"] * tract["typical_input_size"] + m["margin_at_typical"])
    assert tract["first_allocation"]["size-aware"]["memory"] == line_alloc
    # learned ignores the size: the largest peak plus 10 % (60 completed attempts).
    assert tract["first_allocation"]["learned"]["memory"] == round_up(
        tract["peak_memory_max"] * 1.10
    )
    # Without a usable line, size-aware sizes from the distribution, as learned does.
    for cat in ("register", "tiny", "plain"):
        alloc = rows[cat]["first_allocation"]
        assert alloc["size-aware"]["memory"] == alloc["learned"]["memory"], cat


def test_json_says_why_there_is_no_line(as_json: dict[str, Any]) -> None:
    rows = {r["category"]: r for r in as_json["categories"]}
    register = rows["register"]["size_model"]
    assert register["status"] == "poor fit" and register["used"] is False
    assert register["r2"] < 0.8 and "poor fit: R²" in register["reason"]
    assert register["text"].endswith("→ distribution")
    tiny = rows["tiny"]["size_model"]
    assert tiny["status"] == "too few points" and tiny["a"] is None
    assert "fewer than 5" in tiny["reason"]
    plain = rows["plain"]
    assert plain["size_model"]["status"] == "no size data"
    assert plain["typical_input_size"] is None
    assert plain["size_model"]["text"] == "no size data"


def test_table_prints_the_model_and_both_first_allocations(sized_file: Path) -> None:
    proc = _history("--history", str(sized_file), "--strategy", "learned")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"history: {sized_file}" in out
    assert "first alloc (learned)" in out and "first alloc (size-aware)" in out
    assert "peak p50" in out and "peak p90" in out and "peak max" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    # The size table's row of tract: sized, n, median input, a, b per GiB, R², margin, used.
    tract_rows = [ln for ln in out.splitlines() if ln.startswith("tract") and "per GiB" in ln]
    assert len(tract_rows) == 1, out
    m = re.search(r"([\d.]+) MiB per GiB\s+(0\.\d{3})\s+.*\bused$", tract_rows[0])
    assert m is not None, tract_rows[0]
    assert float(m.group(1)) == pytest.approx(LINE_B * 1024, rel=0.03)
    assert float(m.group(2)) > 0.98
    assert "poor fit → distribution" in out
    assert "too few points → distribution" in out
    assert "no size data" in out
    assert "median input size" in out  # says which input size the first allocations are for
    assert "plain" in lines


def test_one_category_and_errors(sized_file: Path, tmp_path: Path) -> None:
    proc = _history("tract", "--history", str(sized_file))
    assert proc.returncode == 0, proc.stderr
    assert "tract" in proc.stdout and "register" not in proc.stdout
    assert "first alloc (size-aware)" in proc.stdout and "(learned)" not in proc.stdout
    proc = _history("no-such-category", "--history", str(sized_file))
    assert proc.returncode == 1 and "no reports of category 'no-such-category'" in proc.stdout
    proc = _history("--history", str(sized_file), "--strategy", "biggest")
    assert proc.returncode == 2 and "size-aware" in proc.stderr and "learned" in proc.stderr
    missing = tmp_path / "missing.sqlite"
    proc = _history("--history", str(missing))
    assert proc.returncode == 2 and "no history at" in proc.stderr
    assert not missing.exists()


def test_lost_and_exhausted_attempts_are_not_fitted(tmp_path: Path) -> None:
    """A lost attempt is not a measurement; an exhausted one is a lower bound: neither is fitted."""
    reports = [r for r in sized_run() if r.category == "tract"]
    lost = [
        replace(r, task_id=1000 + i, peak_memory=0, outcome=Outcome.LOST)
        for i, r in enumerate(reports[:5])
    ]
    path = tmp_path / "h.sqlite"
    h = History(path)
    rid = h.start_run(label="lost", capacity=Resources(cores=2, memory=8 * GiB))
    h.record(rid, reports + lost)
    h.finish_run(rid)
    h.close()
    proc = _history("tract", "--history", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["categories"]
    assert row["count"] == 65  # lost ones are not measured attempts
    assert row["size_model"]["n"] == 60
    assert row["size_model"]["b"] == pytest.approx(LINE_B, abs=0.02)
