"""Tests of the SQLite task history: real files in tmp_path, real processes."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loadmaster.errors import HistoryError
from loadmaster.plan.history import (
    APPLICATION_ID,
    HISTORY_ENV,
    SCHEMA_VERSION,
    CategorySummary,
    History,
    default_history_path,
)
from loadmaster.plan.strategy import Observation
from loadmaster.results import MeasureMethod, Outcome, TaskReport
from loadmaster.spec import Resources

MiB = 1024 * 1024

HOSTILE_CATEGORIES = [
    "plain",
    "a'; DROP TABLE reports; --",
    'double "quoted" name',
    "with spaces  and\ttab",
    "Δ脑 tractography 🧠",
    "100%_like_wildcards\\",
    "new\nline",
    "",
]


def make_report(task_id: int = 1, category: str = "c", **kw: Any) -> TaskReport:
    """A report with every field set to something distinctive."""
    fields: dict[str, Any] = {
        "task_id": task_id,
        "category": category,
        "peak_memory": 300 * MiB + task_id,
        "cpu_time": 1.25 + task_id / 7,
        "wall_time": 2.5 + task_id / 3,
        "cores": 0.5,
        "disk": 4096 * task_id,
        "max_processes": 3,
        "allocation": Resources(cores=1, memory=512 * MiB, disk="1GiB", gpus=0, wall_time=60),
        "attempts": 1,
        "exit_status": 0,
        "host": "node-1",
        "measure_method": MeasureMethod.CGROUP_V1,
    }
    fields.update(kw)
    return TaskReport(**fields)


def snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes, its mtime in ns, and what its directory holds."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


def assert_refused(path: Path, *words: str) -> HistoryError:
    """Opening (and using) ``path`` raises HistoryError naming it; the file is untouched."""
    before = snapshot(path)
    with pytest.raises(HistoryError) as info:
        h = History(path)
        try:  # damage the opening checks did not see must still surface
            h.reports()
        finally:
            h.close()
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    message = str(info.value).replace(str(path), "<path>")  # tmp_path holds the test's name
    for word in words:
        assert word in message, message
    assert snapshot(path) == before
    return info.value


def write_history(path: Path, n: int) -> None:
    with History(path) as h:
        run = h.start_run(label="fill", capacity=Resources(cores=2))
        h.record(run, [make_report(i, f"cat{i % 3}") for i in range(n)])
        h.finish_run(run)


# ---------------------------------------------------------------- round trip


def test_reports_round_trip_exactly_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    originals = [
        make_report(1),
        make_report(
            2,
            "other",
            peak_memory=2**62,
            cpu_time=0.1 + 0.2,  # not representable exactly in decimal
            allocation=Resources(memory=1),
            attempts=3,
            exit_status=-9,
            measure_method=MeasureMethod.HWM_SAMPLED,
            outcome=Outcome.EXHAUSTED,
            exhausted="memory",
            started_at=1.7e9 + 0.123456789,
            finished_at=1.7e9 + 9.87654321,
            input_size=12345,
            error="MemoryError: näive 'quote' \"dq\"",
            extra={"nested": {"list": [1, 2.5, None, True]}, "ü": "ß"},
        ),
        make_report(3, allocation=Resources(), outcome=Outcome.LOST, input_size=0),
        make_report(4, measure_method=MeasureMethod.CGROUP_V2, outcome=Outcome.FAILED),
    ]
    with History(path) as h:
        run = h.start_run(label="r", capacity=Resources(cores=2))
        h.record(run, originals[:1])
        h.record(run, originals[1:])
        assert h.reports() == originals
    with History(path) as h:
        got = h.reports()
    assert got == originals
    assert [type(r.measure_method) for r in got] == [MeasureMethod] * 4
    assert got[1].allocation.cores is None and got[1].allocation.memory == 1


def test_extra_that_json_cannot_hold_is_stored_as_repr(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(label="r", capacity=Resources())
        h.record(run, [make_report(1, extra={"path": Path("/x y"), "n": 1})])
        assert h.reports()[0].extra == {"path": repr(Path("/x y")), "n": 1}


def test_reports_filter_by_category_and_run_and_limit(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        r1 = h.start_run(label="one", capacity=Resources())
        r2 = h.start_run(label="two", capacity=Resources())
        h.record(r1, [make_report(i, "a" if i % 2 else "b") for i in range(10)])
        h.record(r2, [make_report(i, "a") for i in range(10, 15)])
        assert [r.task_id for r in h.reports(category="a")] == [1, 3, 5, 7, 9, 10, 11, 12, 13, 14]
        assert [r.task_id for r in h.reports(run_id=r1, category="a")] == [1, 3, 5, 7, 9]
        assert [r.task_id for r in h.reports(run_id=r2)] == [10, 11, 12, 13, 14]
        # limit keeps the newest, still oldest first
        assert [r.task_id for r in h.reports(limit=3)] == [12, 13, 14]
        assert [r.task_id for r in h.reports(category="b", limit=2)] == [6, 8]
        assert h.reports(limit=0) == []
        assert h.reports(category="nope") == []


@pytest.mark.parametrize("category", HOSTILE_CATEGORIES)
def test_hostile_category_names(tmp_path: Path, category: str) -> None:
    path = tmp_path / "it's a \"history\" dir" / "h istory.sqlite"
    with History(path) as h:
        run = h.start_run(label=category, capacity=Resources())
        h.record(run, [make_report(1, category), make_report(2, "zz-other")])
        assert h.categories() == sorted([category, "zz-other"])
        assert [r.task_id for r in h.reports(category=category)] == [1]
        assert len(h.observations(category)) == 1
        assert [s.category for s in h.category_summary()] == sorted([category, "zz-other"])
        assert h.runs()[0].label == category
    # the injection attempt did nothing
    with History(path) as h:
        assert len(h.reports()) == 2


# ---------------------------------------------------------------- runs


def test_runs_and_latest_run(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        assert h.runs() == [] and h.latest_run() is None and h.categories() == []
        cap = Resources(cores=2, memory="24GiB", disk="100GB", gpus=1, wall_time="2h")
        before = time.time()
        r1 = h.start_run(label="first", capacity=cap)
        r2 = h.start_run(label="second", capacity=Resources(cores=0.5))
        h.record(r1, [make_report(i) for i in range(7)])
        h.record(r2, [make_report(i) for i in range(3)])
        h.finish_run(r1)
        runs = h.runs()
        assert [r.run_id for r in runs] == [r1, r2] and r1 < r2
        first = runs[0]
        assert first.label == "first" and first.capacity == cap and first.tasks == 7
        assert before <= first.started_at <= first.finished_at <= time.time()  # type: ignore[operator]
        assert first.host == os.uname().nodename
        assert runs[1].finished_at is None and runs[1].tasks == 3
        assert h.latest_run() == runs[1]
        assert h.run(r1) == first
        assert h.run(r2 + 100) is None


def test_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        with pytest.raises(HistoryError, match="no run 42"):
            h.finish_run(42)
        with pytest.raises(HistoryError, match="no run 42"):
            h.record(42, [make_report(1)])
        assert h.reports() == []  # the failed batch left nothing behind
        h.record(42, [])  # an empty batch needs no run


def test_a_bad_report_fails_its_whole_batch(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(label="r", capacity=Resources())
        h.record(run, [make_report(0)])
        batch = [make_report(i) for i in range(1, 100)]
        batch[50] = make_report(51, category=None)  # type: ignore[arg-type]
        with pytest.raises(HistoryError, match="NOT NULL") as info:
            h.record(run, batch)
        assert "no run" not in str(info.value)
        assert [r.task_id for r in h.reports()] == [0]  # all or nothing
        h.record(run, batch[:50])  # the connection is still usable
        assert len(h.reports()) == 51


# ---------------------------------------------------------------- observations


def test_observations_newest_first_limited_oldest_first(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(label="r", capacity=Resources())
        reports = []
        for i in range(30):
            kw: dict[str, Any] = {"peak_memory": i * MiB, "input_size": i * 10}
            if i == 25:
                kw.update(outcome=Outcome.LOST)
            if i == 27:
                kw.update(outcome=Outcome.EXHAUSTED, exhausted="memory")
            reports.append(make_report(i, "x" if i % 3 else "y", **kw))
        for start in range(0, 30, 4):  # several batches: order is by insertion
            h.record(run, reports[start : start + 4])
        obs = h.observations("x", limit=5)
        # newest five "x" attempts that are not lost: 29, 28, 26, 23, 22 -> oldest first
        assert [o.peak_memory // MiB for o in obs] == [22, 23, 26, 28, 29]
        assert len(h.observations("x")) == 20 - 1  # 20 "x" reports, one lost
        assert h.observations("x", limit=0) == []
        assert h.observations("missing") == []
        r = reports[26]
        assert obs[2] == Observation(
            peak_memory=r.peak_memory,
            wall_time=r.wall_time,
            cores=r.cores,
            disk=r.disk,
            allocated_memory=512 * MiB,
            exhausted=None,
            input_size=260,
        )
        exhausted = [o for o in h.observations("x") if o.exhausted]
        assert exhausted == []  # the exhausted attempt (27) is a "y"
        assert [o.exhausted for o in h.observations("y")] == [None] * 9 + ["memory"]


def test_observations_use_the_category_index_and_are_fast(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with History(path) as h:
        run = h.start_run(label="big", capacity=Resources())
        alloc = Resources(memory=MiB)
        h.record(run, [make_report(i, f"cat{i % 20}", allocation=alloc) for i in range(1600)])
    conn = sqlite3.connect(path)  # double the rows six times: 102,400, categories interleaved
    cols = ", ".join(r[1] for r in conn.execute("PRAGMA table_info(reports)") if r[1] != "id")
    for _ in range(6):
        conn.execute(f"INSERT INTO reports ({cols}) SELECT {cols} FROM reports ORDER BY id")
    conn.commit()
    conn.close()
    with History(path) as h:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            obs = h.observations("cat7", limit=1000)
            times.append(time.perf_counter() - t0)
        assert len(h.observations("cat7", limit=10**6)) == 102_400 // 20
        assert len(obs) == 1000
        assert obs[-1].peak_memory == 300 * MiB + 1587  # the newest cat7 task
        # measured ~2 ms here; a full scan with a sort is ~40 ms
        assert min(times) < 0.03, times
    conn = sqlite3.connect(path)
    plan = " | ".join(
        str(row[-1])
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT peak_memory FROM reports "
            "WHERE category = ? AND outcome != ? ORDER BY id DESC LIMIT ?",
            ("cat7", "lost", 1000),
        )
    )
    conn.close()
    assert "reports_by_category" in plan and "TEMP B-TREE" not in plan, plan


def test_record_of_100_reports_takes_a_few_ms(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(label="r", capacity=Resources())
        batch = [make_report(i) for i in range(100)]
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            h.record(run, batch)
            times.append(time.perf_counter() - t0)
        assert len(h.reports(limit=10_000)) == 5000
    # measured ~1 ms median here; generous for a loaded CI machine
    assert statistics.median(times) < 0.02, times


# ---------------------------------------------------------------- summary


def test_category_summary_numbers(tmp_path: Path) -> None:
    alloc = Resources(memory=1000)
    with History(tmp_path / "h.sqlite") as h:
        r1 = h.start_run(label="one", capacity=Resources())
        r2 = h.start_run(label="two", capacity=Resources())
        h.record(
            r1,
            [
                make_report(1, "a", peak_memory=100, wall_time=2.0, cpu_time=1.0, allocation=alloc),
                make_report(2, "a", peak_memory=400, wall_time=1.0, cpu_time=0.5,
                            allocation=Resources(memory=2000), attempts=2),
                make_report(3, "a", peak_memory=1200, wall_time=4.0, cpu_time=4.0,
                            allocation=alloc, attempts=3, outcome=Outcome.EXHAUSTED,
                            exhausted="memory"),
                make_report(4, "a", peak_memory=0, wall_time=0.5, cpu_time=0.0,
                            allocation=alloc, outcome=Outcome.LOST),
                make_report(5, "b", peak_memory=50, wall_time=10.0, cpu_time=9.0,
                            allocation=Resources(), outcome=Outcome.FAILED, exit_status=1),
            ],
        )
        h.record(r2, [make_report(6, "a", peak_memory=700, wall_time=1.0, cpu_time=1.0,
                                  allocation=alloc)])
        everything = h.category_summary()
        only_r1 = h.category_summary(run_id=r1)
        only_r2 = h.category_summary(run_id=r2)
    # category a, both runs: peaks of tasks not lost: 100, 400, 700, 1200 -> lower median 400
    # unused: (1000-100)*2 + (2000-400)*1 + 0 (over) + (1000-0)*0.5 + (1000-700)*1 = 4200
    assert everything == [
        CategorySummary(
            category="a",
            tasks=5,
            failures=2,
            retries=3,
            exhausted=1,
            peak_memory_p50=400,
            peak_memory_max=1200,
            mean_allocated_memory=6000 / 5,
            unused_memory_byte_seconds=4200.0,
            total_wall_time=8.5,
            total_cpu_time=6.5,
        ),
        CategorySummary(
            category="b",
            tasks=1,
            failures=1,
            retries=0,
            exhausted=0,
            peak_memory_p50=50,
            peak_memory_max=50,
            mean_allocated_memory=None,
            unused_memory_byte_seconds=0.0,
            total_wall_time=10.0,
            total_cpu_time=9.0,
        ),
    ]
    a1 = only_r1[0]
    assert (a1.tasks, a1.peak_memory_p50, a1.peak_memory_max) == (4, 400, 1200)
    assert a1.unused_memory_byte_seconds == 3900.0
    assert [s.category for s in only_r2] == ["a"] and only_r2[0].peak_memory_p50 == 700


def test_summary_of_a_category_with_only_lost_tasks(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(label="r", capacity=Resources())
        h.record(run, [make_report(1, "gone", outcome=Outcome.LOST)])
        (s,) = h.category_summary()
        assert (s.tasks, s.failures, s.peak_memory_p50, s.peak_memory_max) == (1, 1, 0, 0)


# ---------------------------------------------------------------- concurrency


def _writer(path: str, seed: int, n: int, barrier: Any) -> None:
    """Run in a spawned process: record n reports in random batches of 1-50."""
    rng = random.Random(seed)
    barrier.wait(timeout=60)
    h = History(path)  # all open a file that does not exist yet, at once
    run = h.start_run(label=f"writer-{seed}", capacity=Resources(cores=1))
    i = 0
    while i < n:
        size = rng.randint(1, 50)
        batch = [make_report(t, f"w{seed}", host=f"p{seed}") for t in range(i, min(n, i + size))]
        h.record(run, batch)
        i += size
    h.finish_run(run)
    h.close()


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "shared" / "h.sqlite")
    ctx = multiprocessing.get_context("spawn")
    writers, per_writer = 4, 500
    barrier = ctx.Barrier(writers)
    procs = [
        ctx.Process(target=_writer, args=(path, s, per_writer, barrier)) for s in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * writers
    conn = sqlite3.connect(path)
    ids = [row[0] for row in conn.execute("SELECT id FROM reports")]
    conn.close()
    assert len(ids) == len(set(ids)) == writers * per_writer
    with History(path) as h:
        runs = h.runs()
        assert sorted(r.label for r in runs) == [f"writer-{s}" for s in range(writers)]
        assert all(r.tasks == per_writer and r.finished_at is not None for r in runs)
        for s in range(writers):
            got = [r.task_id for r in h.reports(category=f"w{s}")]
            assert got == list(range(per_writer))  # each writer's own order is kept


def test_threads_share_one_history(tmp_path: Path) -> None:
    with History(tmp_path / "h.sqlite") as h:
        run = h.start_run(label="threads", capacity=Resources())
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                for b in range(20):
                    h.record(run, [make_report(k * 1000 + b * 10 + i, f"t{k}") for i in range(10)])
                    h.observations(f"t{k}", limit=50)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(h.reports()) == 800
        assert h.categories() == ["t0", "t1", "t2", "t3"]


# ---------------------------------------------------------------- bad files


def test_random_bytes_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    path.write_bytes(os.urandom(8192))
    assert_refused(path, "not a SQLite database")


def test_text_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my precious notes\n" * 50)
    assert_refused(path, "not a SQLite database")


def test_tiny_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"SQLite format 3\x00")  # the magic, and nothing else
    assert_refused(path, "not a SQLite database", "16 bytes")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_history_refused(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "h.sqlite"
    write_history(path, 3000)
    assert not (tmp_path / "h.sqlite-wal").exists()  # checkpointed at close
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep) + 17)
    assert_refused(path, "truncated")


def test_damaged_pages_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    write_history(path, 3000)
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    rng = random.Random(7)
    for p in (len(data) // page // 2, len(data) // page // 2 + 1):
        data[p * page : (p + 1) * page] = rng.randbytes(page)
    path.write_bytes(bytes(data))
    assert_refused(path, "damaged")


def test_damaged_schema_page_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    write_history(path, 10)
    data = bytearray(path.read_bytes())
    data[100:1000] = random.Random(3).randbytes(900)  # page 1 after the header
    path.write_bytes(bytes(data))
    assert_refused(path)


def _foreign_db(path: Path, app_id: int, tables: bool) -> None:
    conn = sqlite3.connect(path)
    if tables:
        conn.execute("CREATE TABLE users (name TEXT, password TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada', 'secret')")
    conn.execute(f"PRAGMA application_id = {app_id}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("app_id", "tables"),
    [(0, True), (0x12345, False), (0x12345, True)],
    ids=["tables", "id", "both"],
)
def test_foreign_database_refused(tmp_path: Path, app_id: int, tables: bool) -> None:
    path = tmp_path / "other.db"
    _foreign_db(path, app_id, tables)
    exc = assert_refused(path, "another application")
    if tables and app_id == 0:
        assert "users" in str(exc)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()


def test_newer_schema_refused_with_upgrade_advice(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    write_history(path, 5)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    assert_refused(path, "newer loadmaster", "Upgrade loadmaster", f"{SCHEMA_VERSION + 1}")


def test_new_and_empty_files_are_initialised(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    blank_db = tmp_path / "blank.sqlite"
    sqlite3.connect(blank_db).close()  # SQLite file with no tables, application_id 0
    for path in (empty, blank_db, tmp_path / "new" / "deeper" / "h.sqlite"):
        with History(path) as h:
            assert h.path == str(path)
            h.record(h.start_run(label="x", capacity=Resources()), [make_report(1)])
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        with History(path) as h:
            assert len(h.reports()) == 1


def test_directory_path_refused(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="is a directory") as info:
        History(tmp_path)
    assert info.value.path == str(tmp_path)


def test_parent_that_is_a_file_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(HistoryError, match="cannot create the directory") as info:
        History(blocker / "h.sqlite")
    assert str(blocker / "h.sqlite") in str(info.value)
    assert blocker.read_text() == "x"


def _unwritable(directory: Path) -> Callable[[], None]:
    """Make ``directory`` unwritable even for root; return the undo."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return lambda: directory.chmod(0o755)
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a directory unwritable")
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i refused here: {done.stderr.strip()}")
    return lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_unwritable_directory_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    existing = locked / "old.sqlite"
    write_history(existing, 5)
    undo = _unwritable(locked)
    try:
        with pytest.raises(HistoryError, match="not writable") as info:
            History(locked / "h.sqlite")
        assert str(locked / "h.sqlite") in str(info.value)
        before = snapshot(existing)
        with pytest.raises(HistoryError, match="not writable"):
            History(existing)
        assert snapshot(existing) == before
    finally:
        undo()


# ---------------------------------------------------------------- paths, lifecycle


def test_memory_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with History(":memory:") as a, History(":memory:") as b:
        assert a.path == ":memory:"
        a.record(a.start_run(label="m", capacity=Resources()), [make_report(1)])
        assert len(a.reports()) == 1 and b.reports() == []
    assert os.listdir(tmp_path) == []


def test_default_path_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "from env" / "h.sqlite"
    monkeypatch.setenv(HISTORY_ENV, str(target))
    assert default_history_path() == str(target)
    with History() as h:
        assert h.path == str(target)
        h.start_run(label="env", capacity=Resources())
    assert target.exists()
    monkeypatch.setenv(HISTORY_ENV, ":memory:")
    with History() as h:
        assert h.path == ":memory:"


def test_default_path_under_user_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HISTORY_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    expected = tmp_path / "xdg" / "loadmaster" / "history.sqlite"
    assert default_history_path() == str(expected)
    assert not expected.parent.exists()  # computing the path creates nothing
    with History() as h:
        assert h.path == str(expected)
    assert expected.exists()


def test_closed_history_raises(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite")
    h.close()
    h.close()  # idempotent
    with pytest.raises(HistoryError, match="closed"):
        h.categories()


def test_forked_child_must_open_its_own(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite")
    try:
        pid = os.fork()
        if pid == 0:  # child: the inherited connection must be refused, cleanly
            code = 1
            try:
                h.categories()
            except HistoryError as exc:
                code = 0 if "forked child" in str(exc) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert h.categories() == []  # the parent's connection still works
    finally:
        h.close()
