"""What runs imported is kept per category in the history: migrated from a version-1 file and from today's.

Real SQLite files: the committed version-1 fixture (what loadmaster 0.1
wrote) and a file at version 2 (today's before this step), each opened by
this code, migrated, and then fed reports whose ``extra["imported"]`` the
node filled in.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from loadmaster.plan.history import SCHEMA_VERSION, History
from loadmaster.plan.history import schema as schema_mod
from loadmaster.results import MeasureMethod, TaskReport
from loadmaster.spec import Resources
from tests.fixtures.history_v1 import FIXTURE


def _report(category: str, imported: list[str], task_id: int = 1) -> TaskReport:
    return TaskReport(task_id=task_id, category=category, peak_memory=1, cpu_time=0.0, wall_time=0.1, cores=0.0,
                      disk=0, max_processes=1, allocation=Resources(), attempts=1, exit_status=0, host="n",
                      measure_method=MeasureMethod.CGROUP_V1, extra={"imported": imported} if imported else {})


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _at_version_2(path: Path) -> None:
    """A file as the code before this step made it: version 1 and step 2 only."""
    conn = sqlite3.connect(path)
    with conn:
        schema_mod.create(conn, schema_mod.MIGRATIONS[:1])
        conn.execute(f"PRAGMA application_id = {schema_mod.APPLICATION_ID}")
    conn.close()


def _learns(path: Path) -> None:
    with History(path) as h:
        assert h.learned_imports("align") == []
        run = h.start_run(label="t", capacity=Resources(cores=1))
        h.record(run, [_report("align", ["pandas", "tinypkg"]), _report("align", ["pandas"], 2),
                       _report("sort", [], 3)])
        assert h.learned_imports("align") == ["pandas", "tinypkg"]
        assert h.learned_imports("sort") == []
    with History(path) as h:  # kept across runs
        assert h.learned_imports("align") == ["pandas", "tinypkg"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT runs FROM learned_imports WHERE module = 'pandas'").fetchone()[0] == 2
    finally:
        conn.close()


def test_a_version_1_file_is_migrated_and_learns(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    shutil.copyfile(FIXTURE, path)
    assert _version(path) == 1
    _learns(path)
    assert _version(path) == SCHEMA_VERSION


def test_a_version_2_file_is_migrated_and_learns(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite"
    _at_version_2(path)
    assert _version(path) == 2
    with History(path) as h:
        assert h.runs() == []
    assert _version(path) == SCHEMA_VERSION
    _learns(path)


def test_a_new_file_learns(tmp_path: Path) -> None:
    _learns(tmp_path / "new.sqlite")


def _timed(category: str, imported: list[str], at: float, task_id: int) -> TaskReport:
    import dataclasses

    return dataclasses.replace(_report(category, imported, task_id), finished_at=at)


def test_learned_imports_keep_the_most_recent_per_category_and_no_more(tmp_path: Path) -> None:
    cap = schema_mod.LEARNED_MAX
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(label="t", capacity=Resources(cores=1))
        names = [f"m{i:03d}" for i in range(3 * cap)]
        # Runs that each imported 16 new modules, one after another; then an old one seen again.
        h.record(run, [_timed("align", names[i:i + 16], 1000.0 + i, i + 1) for i in range(0, len(names), 16)])
        h.record(run, [_timed("align", ["m000"], 5000.0, 999), _timed("sort", ["m000"], 1.0, 1000)])
        kept = h.learned_imports("align")
        assert len(kept) == cap
        assert "m000" in kept  # seen again last: recent
        assert set(kept) - {"m000"} < set(names[-cap:])  # the rest: from the most recent runs
        assert h.learned_imports("sort") == ["m000"]  # per category


def test_a_version_3_file_with_too_many_learned_imports_is_cut_to_the_most_recent(tmp_path: Path) -> None:
    cap = schema_mod.LEARNED_MAX
    path = tmp_path / "v3.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        schema_mod.create(conn, schema_mod.MIGRATIONS[:2])
        conn.execute(f"PRAGMA application_id = {schema_mod.APPLICATION_ID}")
        conn.executemany("INSERT INTO learned_imports VALUES (?, ?, 1, ?)",
                         [("align", f"m{i:03d}", float(i)) for i in range(cap + 40)] + [("sort", "numpy", 0.0)])
    conn.close()
    assert _version(path) == 3
    with History(path) as h:
        assert sorted(h.learned_imports("align")) == [f"m{i:03d}" for i in range(40, cap + 40)]
        assert h.learned_imports("sort") == ["numpy"]
    assert _version(path) == SCHEMA_VERSION
