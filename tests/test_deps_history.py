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
