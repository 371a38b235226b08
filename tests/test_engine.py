"""Tests of the engine thread's own bookkeeping, through a real Executor.

Real zygotes and real task processes (sandbox off, to keep them quick). What
is checked here is the engine's, not the zygote's: that it keeps listening to
every zygote after one is replaced, that reports and the planner's
observations carry what the zygote measured, and that no per-turn state goes
stale.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Callable

import pytest

from loadmaster import Executor, TaskFailed
from loadmaster.errors import WorkerLost
from loadmaster.results import MeasureMethod, Outcome


def sleep_then_pid(seconds: float) -> int:
    """Sleep, then return this task process's pid."""
    time.sleep(seconds)
    return os.getpid()


def test_a_replaced_zygote_is_listened_to() -> None:
    """Kill the zygote running a task: the task is retried, and the replacement's
    results reach the engine (its fd is selected on, not only the survivor's)."""
    with Executor(history=":memory:", sandbox=False, zygotes=2, cores=2, ledger=False) as ex:
        victim = ex.submit(sleep_then_pid, 3.0)
        deadline = time.monotonic() + 10
        while victim.running() is False and time.monotonic() < deadline:
            time.sleep(0.01)
        runtime = ex.backend.runtime  # type: ignore[attr-defined]
        held = runtime.tasks.get(victim.task_id)
        assert held is not None, "the task never started"
        dead = runtime.zygotes[held[0]]
        dead.proc.kill()
        # The task is retried on the replacement (or the survivor) and finishes.
        assert isinstance(victim.result(timeout=30), int)
        assert victim.report is not None and victim.report.attempts == 2
        replacement = runtime.zygotes[held[0]]
        assert replacement is not dead
        assert sorted(runtime._fds) == sorted([runtime.wake_r, *(z.fileno() for z in runtime.zygotes)])
        assert replacement.fileno() in runtime._fds
        # Both zygotes get work now: were the replacement's fd not selected on,
        # every task sent to it would hang and this would time out.
        futures = [ex.submit(sleep_then_pid, 0.05) for _ in range(8)]
        pids = [f.result(timeout=30) for f in futures]
        assert len(pids) == 8
        assert runtime.load == [0, 0]
        assert ex._engine.lost == 1 and not ex._engine.kept
        # The lost attempt was not taken for the task running out of anything.
        assert all(o.exhausted is None for o in ex.planner.state("sleep_then_pid").observations)


def kill_my_zygote() -> None:
    """A hostile task: kill the zygote that forked it, then linger."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)


def test_a_task_that_keeps_killing_its_zygote_fails_after_its_retries() -> None:
    with Executor(history=":memory:", sandbox=False, zygotes=1, cores=1, ledger=False) as ex:
        f = ex.submit(kill_my_zygote)
        with pytest.raises(TaskFailed, match="lost 3 times") as info:
            f.result(timeout=60)
        assert isinstance(info.value.__cause__, WorkerLost)
        assert ex._engine.lost == 3 and not ex._engine.kept and not ex._engine.inflight
        assert ex.submit(abs, -3).result(timeout=30) == 3  # the node goes on, with a new zygote


def test_reports_and_observations_carry_the_zygotes_numbers() -> None:
    with Executor(history=":memory:", sandbox=False, ledger=False) as ex:
        fs = [ex.submit(sleep_then_pid, 0.01, category="nap") for _ in range(5)]
        pids = {f.result(timeout=30) for f in fs}
        assert len(pids) == 5  # a process per task
        for f in fs:
            r = f.report
            assert r is not None
            assert r.outcome is Outcome.OK and r.exit_status == 0 and r.error == ""
            assert r.measure_method is ex.measure_method
            assert isinstance(r.measure_method, MeasureMethod)
            assert r.category == "nap" and r.task_id == f.task_id and r.attempts == 1
            assert r.wall_time >= 0.01
            assert r.cores == pytest.approx(r.cpu_time / r.wall_time)
            assert r.allocation.memory is not None and r.allocation.memory > 0
            assert r.finished_at >= r.started_at > 0
        state = ex.planner.state("nap")
        assert len(state.observations) == 5
        assert sorted(o.peak_memory for o in state.observations) == sorted(
            f.report.peak_memory for f in fs if f.report is not None
        )
        assert all(o.exhausted is None and o.allocated_memory for o in state.observations)


def test_a_waiting_retry_takes_what_was_learned_meanwhile() -> None:
    """A retry made before the category's size fit existed (here: 100 MiB after an
    exhaustion) starts with the fit's larger allocation once the fit asks for more,
    and never with less than its exhaustion earned."""
    from loadmaster.plan.strategy import Observation
    from loadmaster.spec import Resources, TaskKind, TaskSpec

    mib = 1 << 20
    with Executor(history=":memory:", sandbox=False, ledger=False, memory="4GiB", strategy="size-aware") as ex:
        engine = ex._engine
        retry = TaskSpec(task_id=10**6, kind=TaskKind.FUNCTION, category="grows", requested=None, payload=b"",
                         input_size=1000 * mib, attempts=1)
        engine.kept[retry.task_id] = Resources(cores=1, memory=100 * mib)
        before = engine._allocation(retry, ex.node)
        assert before.memory is not None and before.memory >= 100 * mib
        for size in (100, 200, 300, 400, 500, 600, 700, 800):  # peak = 2 x input size, exactly
            engine.planner.observe("grows", Observation(
                peak_memory=2 * size * mib, wall_time=1.0, cores=1.0, disk=0, input_size=size * mib))
        after = engine._allocation(retry, ex.node)
        assert after.memory is not None and after.memory >= 1900 * mib  # the fit: ~2,000 MiB for 1,000 MiB
        assert after.cores == 1
        small = TaskSpec(task_id=10**6 + 1, kind=TaskKind.FUNCTION, category="grows", requested=None, payload=b"",
                         input_size=50 * mib, attempts=1)
        engine.kept[small.task_id] = Resources(cores=1, memory=900 * mib)
        assert engine._allocation(small, ex.node).memory == 900 * mib  # the fit asks less: the floor stays


def nap(seconds: float) -> tuple[float, float]:
    """Sleep; return when this task process started and ended (``time.time()``)."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _learn_short(ex: Executor, n: int = 12) -> None:
    """Run a few quick ``nap`` tasks so that the category is expected to end within milliseconds."""
    for f in [ex.submit(nap, 0.0) for _ in range(n)]:
        f.result(timeout=30)


def test_a_stream_of_short_tasks_is_handed_ahead_without_oversubscribing() -> None:
    """Short tasks follow each other on a zygote without a round trip to the engine,
    and never more run at once than the executor has cores."""
    with Executor(history=":memory:", sandbox=False, zygotes=2, cores=2, ledger=False) as ex:
        _learn_short(ex)
        before = ex._engine.handed_ahead
        fs = [ex.submit(nap, 0.002) for _ in range(300)]
        spans = [f.result(timeout=60) for f in fs]
        engine = ex._engine
        assert engine.handed_ahead - before > 100, "no task was handed ahead"
        assert not engine.followers and not engine.inflight
        assert ex._engine.scheduler.node("local").free_cores == pytest.approx(2.0)
    # At no instant did more than two tasks run (each span is the task's own sleep).
    assert _most_at_once(spans) <= 2
    assert all(f.report.attempts == 1 for f in fs)


def zygote_pid(seconds: float) -> int:
    """Sleep, then return the pid of the zygote that forked this task process."""
    time.sleep(seconds)
    return os.getppid()


def test_a_stream_of_short_tasks_keeps_every_zygote_forking() -> None:
    """Tasks picked in one turn go to different zygotes, and so do the tasks handed
    ahead behind them: one zygote does not fork for both cores while the other idles."""
    with Executor(history=":memory:", sandbox=False, zygotes=2, cores=2, ledger=False) as ex:
        for f in [ex.submit(zygote_pid, 0.0) for _ in range(12)]:
            f.result(timeout=30)
        zygotes = {z.proc.pid for z in ex.backend.runtime.zygotes}  # type: ignore[attr-defined]
        fs = [ex.submit(zygote_pid, 0.002) for _ in range(300)]
        forked_by = collections.Counter(f.result(timeout=60) for f in fs)
        assert ex._engine.handed_ahead > 100
    assert set(forked_by) == zygotes
    assert min(forked_by.values()) >= 300 // 4, forked_by


def test_long_tasks_are_not_handed_ahead() -> None:
    with Executor(history=":memory:", sandbox=False, zygotes=2, cores=2, ledger=False) as ex:
        fs = [ex.submit(nap, 0.15) for _ in range(6)]
        for f in fs:
            f.result(timeout=30)
        assert ex._engine.handed_ahead == 0


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_task_waiting_behind_a_long_one_is_given_back() -> None:
    """A category learned as short, then one of its tasks runs long: the task handed
    ahead behind it comes back and starts on the core that frees first."""
    with Executor(history=":memory:", sandbox=False, zygotes=2, cores=2, ledger=False) as ex:
        _learn_short(ex)
        engine = ex._engine
        long_one = ex.submit(nap, 3.0)
        _wait_for(long_one.running)
        medium = ex.submit(nap, 0.4)
        _wait_for(medium.running)
        behind = ex.submit(nap, 0.0)
        start_long, _ = long_one.result(timeout=30)
        start_behind, _ = behind.result(timeout=30)
        medium.result(timeout=30)
        assert engine.handed_ahead >= 1
        assert engine.handed_back >= 1
        # It ran once the medium task's core was free, not after the long task.
        assert start_behind - start_long < 2.0
        assert behind.report.attempts == 1


def test_a_task_waiting_behind_another_can_be_cancelled() -> None:
    with Executor(history=":memory:", sandbox=False, zygotes=1, cores=1, ledger=False) as ex:
        _learn_short(ex)
        engine = ex._engine
        first = ex.submit(nap, 1.0)
        _wait_for(first.running)
        before = engine.handed_ahead
        behind = ex.submit(nap, 0.0)
        _wait_for(lambda: engine.handed_ahead > before)
        assert engine.handed_ahead > before, "the second task was not handed ahead"
        assert behind.running()  # handed to the zygote: its future runs
        # Handed ahead, or given back after FOLLOW_WAIT_S and waiting again: cancelled either way.
        assert ex.cancel(behind)
        with pytest.raises(TaskFailed, match="cancelled"):
            behind.result(timeout=5)
        assert first.running()  # the task ahead of it goes on
        first.result(timeout=30)
        assert behind.report is None or behind.report.wall_time == 0.0  # it never ran
        assert not engine.followers
        assert engine.scheduler.node("local").free_cores == pytest.approx(1.0)


def test_short_tasks_sharing_a_zygote_are_handed_ahead_without_oversubscribing() -> None:
    """Two half-core tasks at once on one zygote, each followed by the next: every task
    runs once, ends well, and never more than two run at once."""
    from loadmaster import Resources

    half = Resources(cores=0.5)
    with Executor(history=":memory:", sandbox=False, zygotes=1, cores=1, ledger=False) as ex:
        for f in [ex.submit(nap, 0.0, resources=half) for _ in range(12)]:
            f.result(timeout=30)
        before = ex._engine.handed_ahead
        fs = [ex.submit(nap, 0.001, resources=half) for _ in range(300)]
        spans = [f.result(timeout=60) for f in fs]
        assert ex._engine.handed_ahead - before > 100
        assert all(f.report is not None and f.report.attempts == 1 for f in fs)
        assert ex._engine.scheduler.node("local").free_cores == pytest.approx(1.0)
    assert _most_at_once(spans) <= 2

