"""Schema migrations of the history, from a real version-1 file written by loadmaster 0.1's code.

The fixture ``tests/fixtures/history-v1.sqlite`` was made by the History of
commit 3b56d4b (see ``tests/fixtures/history_v1.py``), so these tests open a
file exactly as users have them today.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from loadmaster.errors import HistoryError
from loadmaster.plan.history import MIGRATIONS, SCHEMA_VERSION, History, Migration
from loadmaster.plan.history import schema as schema_mod
from loadmaster.plan.history import store as store_mod
from loadmaster.results import MeasureMethod, TaskReport
from loadmaster.spec import Resources
from tests.fixtures.history_v1 import FIXTURE, RUNS, reports
from tests.test_history import assert_refused, snapshot


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    """A copy of the version-1 fixture in tmp_path."""
    path = tmp_path / "v1.sqlite"
    shutil.copyfile(FIXTURE, path)
    return path


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _layout(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Each table's columns (name, type, not null, default, pk) and the indexes."""
    conn = sqlite3.connect(path)
    try:
        out = {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in ("runs", "reports")}
        out["indexes"] = conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        return out
    finally:
        conn.close()


def test_the_fixture_is_a_version_1_file() -> None:
    # Guards against the fixture being remade by newer code: it must stay what 0.1 wrote.
    assert _version(FIXTURE) == 1
    assert "peak_charged" not in {c[1] for c in _layout(FIXTURE)["reports"]}


def test_migrations_are_numbered_in_order_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(2, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION >= 2


def test_a_version_1_file_is_migrated_and_keeps_its_data(v1: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="loadmaster.history")
    with History(v1) as h:
        runs = h.runs()
        assert [(r.label, r.capacity, r.finished_at is not None) for r in runs] == RUNS
        assert [r.tasks for r in runs] == [8, 4]
        for index, run in enumerate(runs):
            assert h.reports(run_id=run.run_id) == [r for i, r in reports() if i == index]
        assert sorted(h.categories()) == sorted({r.category for _, r in reports()})
        assert sum(s.tasks for s in h.category_summary()) == 12
        # The migrated file takes new reports beside the old ones.
        new = h.start_run(label="after", capacity=Resources(cores=1))
        fresh = TaskReport(
            task_id=99,
            category="tract",
            peak_memory=5,
            cpu_time=0.0,
            wall_time=1.0,
            cores=0.0,
            disk=0,
            max_processes=1,
            allocation=Resources(),
            attempts=1,
            exit_status=0,
            host="node-2",
            measure_method=MeasureMethod.CGROUP_V1,
        )
        h.record(new, [fresh])
        assert h.reports(category="tract")[-1] == fresh
        assert len(h.reports()) == 13
    assert _version(v1) == SCHEMA_VERSION
    assert any("migrated from version 1 to 2" in r.getMessage() for r in caplog.records)
    # Migrating twice is a no-op: reopening leaves the data and the version alone.
    with History(v1) as h:
        assert len(h.reports()) == 13
    assert _version(v1) == SCHEMA_VERSION


def test_a_migrated_file_has_the_schema_of_a_new_one(v1: Path, tmp_path: Path) -> None:
    History(v1).close()
    History(tmp_path / "new.sqlite").close()
    assert _layout(v1) == _layout(tmp_path / "new.sqlite")
    assert "peak_charged" in {c[1] for c in _layout(v1)["reports"]}


def test_a_newer_version_is_refused_and_left_alone(v1: Path) -> None:
    conn = sqlite3.connect(v1)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    exc = assert_refused(v1, "newer loadmaster", f"schema version {SCHEMA_VERSION + 1}", "Upgrade loadmaster")
    assert f"reads up to {SCHEMA_VERSION}" in str(exc)


def test_a_damaged_version_1_file_is_refused_not_migrated(v1: Path) -> None:
    data = bytearray(v1.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page * 3 : page * 5] = random.Random(5).randbytes(2 * page)  # the reports' pages
    v1.write_bytes(bytes(data))
    assert_refused(v1, "damaged")
    assert _version(v1) == 1


def test_a_foreign_file_is_refused_not_migrated(v1: Path) -> None:
    conn = sqlite3.connect(v1)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    assert_refused(v1, "another application")
    assert _version(v1) == 1


def _failing_step(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE reports ADD COLUMN half_done INTEGER")
    conn.execute("UPDATE reports SET half_done = 1")
    raise sqlite3.OperationalError("disk I/O error (injected after the step's first statements)")


def test_a_failing_step_is_rolled_back_whole(v1: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step is one transaction: a step that fails half-way leaves the file at the step before."""
    steps = (*MIGRATIONS, Migration(version=SCHEMA_VERSION + 1, summary="injected", apply=_failing_step))
    monkeypatch.setattr(store_mod, "migrate", functools.partial(schema_mod.migrate, migrations=steps))
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setattr("loadmaster.plan.history.checks.SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(HistoryError) as info:
        History(v1)
    message = str(info.value)
    assert str(v1) in message and "disk I/O error" in message
    assert f"from schema version {SCHEMA_VERSION} to {SCHEMA_VERSION + 1}" in message
    assert f"whole at version {SCHEMA_VERSION}" in message
    # The real steps before it were committed; the failing one left no trace.
    assert _version(v1) == SCHEMA_VERSION
    columns = {c[1] for c in _layout(v1)["reports"]}
    assert "peak_charged" in columns and "half_done" not in columns
    monkeypatch.undo()
    with History(v1) as h:  # today's code opens it as a normal, current file
        assert len(h.reports()) == 12


def test_a_failing_first_step_leaves_version_1_byte_for_byte(v1: Path) -> None:
    before = snapshot(v1)[0]
    conn = sqlite3.connect(v1, isolation_level=None)
    steps = (Migration(version=2, summary="injected", apply=_failing_step),)
    with pytest.raises(schema_mod.MigrationFailed) as info:
        schema_mod.migrate(conn, str(v1), lambda f: f(), start=1, migrations=steps)
    conn.close()
    assert (info.value.at, info.value.step) == (1, 2)
    assert v1.read_bytes() == before


def _open_and_count(path: str, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    with History(path) as h:
        assert len(h.reports()) == 12


def test_processes_opening_one_old_file_at_once_migrate_it_once(v1: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 4
    barrier = ctx.Barrier(n)
    procs = [ctx.Process(target=_open_and_count, args=(str(v1), barrier)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * n
    assert _version(v1) == SCHEMA_VERSION
    with History(v1) as h:
        assert h.reports() == [r for _, r in reports()]
