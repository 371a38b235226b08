"""The engine's loop does no blocking work: history writes and users' callbacks run elsewhere.

Real executors and a real SQLite file locked by another process. Tasks must
keep dispatching and completing while the history's write lock is held
elsewhere (the rows land once it is released, none lost at shutdown), and a
future's callback that blocks must not stop other tasks from completing.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from loadmaster import Executor
from loadmaster.plan.history import History

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def _rows(path: Path, run_id: int) -> int:
    conn = sqlite3.connect(path)  # a reader: WAL lets it read under another's write lock
    try:
        return int(conn.execute("SELECT count(*) FROM reports WHERE run_id = ?", (run_id,)).fetchone()[0])
    finally:
        conn.close()


def test_tasks_complete_while_another_process_holds_the_history_lock(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    n = 700  # more than a batch (HISTORY_FLUSH_COUNT): both the count and the clock flush
    with Executor(history=str(path), sandbox=False) as ex:
        assert ex.submit(abs, -1).result(60) == 1  # the category's history is read before the lock
        run_id = ex.run_id
        holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            before = _rows(path, run_id)
            futs = [ex.submit(abs, -i) for i in range(n)]
            assert [f.result(60) for f in futs] == list(range(n))
            assert holder.poll() is None, "the lock was let go before the results came"
            assert _rows(path, run_id) == before, "rows landed under another process's lock?"
        finally:
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.close()
            holder.wait(60)
    assert holder.returncode == 0
    with History(path) as h:
        assert len(h.reports(run_id=run_id)) == n + 1, "reports were lost"


def test_a_blocking_callback_does_not_stop_other_tasks() -> None:
    entered, gate = threading.Event(), threading.Event()
    ran_on: list[str] = []

    def blocks(_fut: object) -> None:
        ran_on.append(threading.current_thread().name)
        entered.set()
        gate.wait(300)

    with Executor(history=":memory:", sandbox=False) as ex:
        try:
            first = ex.submit(abs, -1)
            first.add_done_callback(blocks)
            assert entered.wait(60)
            futs = [ex.submit(abs, -i) for i in range(50)]
            assert [f.result(60) for f in futs] == list(range(50))
        finally:
            gate.set()
    assert ran_on == ["loadmaster-callbacks"]


def test_callbacks_run_in_settling_order_and_shutdown_waits_for_them() -> None:
    seen: list[int] = []
    with Executor(history=":memory:", sandbox=False, cores=1) as ex:
        futs = [ex.submit(abs, -i) for i in range(20)]
        for f in futs:
            f.add_done_callback(lambda f: seen.append(f.result()))
    assert sorted(seen) == list(range(20))
    # A callback added once the future is done runs at once, in the adding thread (as
    # concurrent.futures does).
    here: list[str] = []
    futs[0].add_done_callback(lambda _f: here.append(threading.current_thread().name))
    assert here == [threading.current_thread().name]
