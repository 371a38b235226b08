"""An executor's run from start to end, as a program meets it: exit, a dropped executor, failures, temp dirs.

The exit cases run real scripts in a fresh interpreter: what happens when a
program ends without ``shutdown()``, after ``shutdown(wait=False)``, or while
a thread still submits. The rest check, in this process, that a run always
ends whole: zygotes gone, run finished in the history, its work directory
removed, nothing left when the constructor fails.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import weakref
from pathlib import Path

import pytest

import loadmaster
from loadmaster import Executor
from loadmaster.errors import WorkerLost
from loadmaster.node.process import zygote_client
from loadmaster.plan.history import History

SRC = str(Path(__file__).resolve().parents[1] / "src")


def sleep(s: float) -> float:
    time.sleep(s)
    return s


def children() -> set[int]:
    """The live child processes of this process (every thread's)."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            text = Path(f"/proc/self/task/{tid}/children").read_text()
        except OSError:
            continue
        out.update(int(p) for p in text.split())
    return out


def run_script(tmp_path: Path, body: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=SRC, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)


EXIT_PROGRAM = """
    import sys, time
    import loadmaster

    def mark(path):
        time.sleep(0.5)
        with open(path, "w") as fh:
            fh.write("ran to the end")

    out = sys.argv[1]
    ex = loadmaster.Executor(history=out + "/h.sqlite", cores=1, ledger=False, label="exit")
    futures = [ex.options(outputs=[out], resources={{"cores": 1}}).submit(mark, f"{{out}}/mark-{{i}}")
               for i in range(4)]
    {ending}
    print("main thread ends", flush=True)
"""


@pytest.mark.parametrize("ending", ["pass", "ex.shutdown(wait=False)"], ids=["no-shutdown", "shutdown-nowait"])
def test_the_program_exit_finishes_pending_and_running_tasks(tmp_path: Path, ending: str) -> None:
    # One core, four tasks: at exit one runs and three wait; all four must run to their end.
    proc = run_script(tmp_path, EXIT_PROGRAM.format(ending=ending))
    assert proc.returncode == 0, proc.stderr
    assert "main thread ends" in proc.stdout
    marks = sorted(p.name for p in tmp_path.glob("mark-*") if p.read_text() == "ran to the end")
    assert marks == [f"mark-{i}" for i in range(4)], proc.stderr
    with History(tmp_path / "h.sqlite") as hist:
        (run,) = hist.runs()
        assert run.finished_at is not None and run.tasks == 4
        assert all(r.outcome is loadmaster.Outcome.OK for r in hist.reports(run_id=run.run_id))
    assert [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("loadmaster-")] == []


def test_a_submit_during_interpreter_shutdown_raises_runtime_error(tmp_path: Path) -> None:
    # A thread that keeps submitting after the main thread ended: its submits are refused
    # once the exit has begun, and every task it did get accepted still ends.
    proc = run_script(tmp_path, """
        import threading, time
        import loadmaster

        def double(x):
            return 2 * x

        ex = loadmaster.Executor(history=":memory:", ledger=False, sandbox=False)
        accepted = []

        def feeder():
            while True:
                try:
                    accepted.append(ex.submit(double, len(accepted)))
                except RuntimeError as exc:
                    print("refused:", type(exc).__name__, exc, flush=True)
                    break
                time.sleep(0.01)
            ok = all(f.result() == 2 * i for i, f in enumerate(accepted))
            print(f"accepted {len(accepted)}, all results right: {ok}", flush=True)

        threading.Thread(target=feeder).start()
    """, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "refused: ExecutorShutdown cannot schedule new futures after interpreter shutdown" in proc.stdout
    assert "all results right: True" in proc.stdout


def _run_state(ex: Executor) -> tuple[str, list[int], object, int]:
    rt = ex.backend.runtime  # type: ignore[attr-defined]
    return rt.workdir, [z.proc.pid for z in rt.zygotes], ex._engine.thread, ex.run_id


def _assert_ended(history: Path, run_id: int, workdir: str, pids: list[int]) -> None:
    assert not os.path.exists(workdir), "the run's temporary work directory is still there"
    alive = [p for p in pids if p in children()]
    assert alive == [], f"zygotes still running: {alive}"
    with History(history) as hist:
        run = hist.run(run_id)
        assert run is not None and run.finished_at is not None, "the run is not finished in the history"


def test_an_executor_dropped_without_shutdown_is_collected_and_its_run_ends(tmp_path: Path) -> None:
    history = tmp_path / "h.sqlite"
    ex = Executor(history=str(history), zygotes=1, ledger=False, sandbox=False)
    workdir, pids, thread, run_id = _run_state(ex)
    fut = ex.submit(sleep, 0.3)
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None, "something still holds the executor: it can never be cleaned up"
    thread.join(120)  # type: ignore[attr-defined]
    assert not thread.is_alive()  # type: ignore[attr-defined]
    assert fut.result(0) == 0.3  # its task ran to its end first
    _assert_ended(history, run_id, workdir, pids)


def test_shutdown_without_wait_finishes_its_run_when_the_last_task_ends(tmp_path: Path) -> None:
    history = tmp_path / "h.sqlite"
    ex = Executor(history=str(history), zygotes=1, ledger=False, sandbox=False)
    workdir, pids, thread, run_id = _run_state(ex)
    fut = ex.submit(sleep, 0.3)
    ex.shutdown(wait=False)
    thread.join(120)  # type: ignore[attr-defined]
    assert fut.result(0) == 0.3
    _assert_ended(history, run_id, workdir, pids)
    ex.shutdown(wait=True)  # and a later shutdown with wait is fine


def test_a_bad_strategy_leaves_no_unfinished_run_and_no_process(tmp_path: Path) -> None:
    history = tmp_path / "h.sqlite"
    before = children()
    with pytest.raises(ValueError, match="does not exist; choose one of"):
        Executor(history=str(history), strategy="bogus", ledger=False)
    assert children() - before == set()
    with History(history) as hist:
        assert [r for r in hist.runs() if r.finished_at is None] == []


def test_a_zygote_that_fails_to_start_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first zygote starts; the second's interpreter exits at once (a real process).
    real = zygote_client.ZygoteClient.__init__

    def second_fails(self: zygote_client.ZygoteClient, **kw: object) -> None:
        if kw.get("index") == 1:
            monkeypatch.setattr(sys, "executable", "/bin/false")
        real(self, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(zygote_client.ZygoteClient, "__init__", second_fails)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    history = tmp_path / "h.sqlite"
    before = children()
    with pytest.raises(WorkerLost, match="exited during start-up"):
        Executor(history=str(history), zygotes=2, ledger=False)
    assert children() - before == set(), "a zygote that started is still running"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("loadmaster-")] == []
    assert not history.exists() or all(r.finished_at is not None for r in History(history).runs())


def test_an_executor_leaves_no_loadmaster_dir_in_tmp(tmp_path: Path) -> None:
    # In a fresh interpreter whose TMPDIR is ours (other test runs share /tmp).
    proc = run_script(tmp_path, """
        import loadmaster, os, tempfile
        with loadmaster.Executor(history=":memory:", ledger=False) as ex:
            assert ex.submit(len, "abc").result() == 3
            assert ex.submit_command("echo hi").result().stdout == "hi\\n"
            print("tmp:", tempfile.gettempdir())
    """, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"tmp: {tmp_path / 'tmp'}" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("loadmaster-")) == []


def test_report_says_a_run_was_empty_or_has_not_finished(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loadmaster.cli import main

    history = tmp_path / "h.sqlite"
    with Executor(history=str(history), ledger=False, zygotes=1, sandbox=False, label="nothing"):
        pass  # an executor that ran no task
    out = tmp_path / "empty.html"
    assert main(["report", "--history", str(history), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "run 1: it was empty: no task report was recorded" in said
    assert "has not finished" not in said
    assert "it was empty" in out.read_text()
    with History(history) as hist:  # a run whose process died before its end was recorded
        hist.start_run(label="crashed", capacity=loadmaster.Resources(cores=1))
    assert main(["report", "--history", str(history), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "run 2: it has not finished" in said and "run 2: it was empty" in said
    assert "it has not finished" in out.read_text()
