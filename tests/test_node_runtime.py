"""The node runtime driven directly: orders in, events out, real zygotes and task processes.

No engine and no scheduler here: what is checked is the seam a backend relies
on (``node/runtime.py``): an order runs and comes back as ``Done`` with the
node's name; a command's output arrives as text inside ``Done`` (no file is
left on the node); a cancel stops a task; a killed zygote comes back as one
``Lost`` and a new zygote serves the next orders; a function's bytes reach
each zygote once; everything crossing the seam pickles (the Dask backend
carries it over the network).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from loadmaster import Executor
from loadmaster.node.orders import (
    Command,
    Done,
    HandedBack,
    Lost,
    NodeConfig,
    NodeEvent,
    Order,
    OrderKind,
    Status,
)
from loadmaster.node.runtime import NodeRuntime
from loadmaster.spec import Resources

MiB = 1 << 20
ALLOC = Resources(cores=1.0, memory=256 * MiB)


def pid_after(seconds: float) -> int:
    """Sleep, then return this task process's pid."""
    time.sleep(seconds)
    return os.getpid()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[NodeRuntime]:
    rt = NodeRuntime(NodeConfig(name="n1", workdir=str(tmp_path / "node"), zygotes=2, ledger=False))
    try:
        yield rt
    finally:
        rt.close()


def fn_order(task_id: int, fn: object, *args: object, key: int = 1, after: int = -1,
             fn_bytes: bytes | None = None) -> Order:
    return Order(task_id=task_id, attempt=1, kind=OrderKind.FUNCTION, fn_key=key,
                 fn_bytes=cloudpickle.dumps(fn) if fn_bytes is None else fn_bytes,
                 payload=pickle.dumps((args, {})), allocation=ALLOC, after=after)


def events(rt: NodeRuntime, n: int, timeout_s: float = 30.0) -> list[NodeEvent]:
    """Poll until ``n`` events came (a deadline, not a sleep: poll blocks on the pipes)."""
    got: list[NodeEvent] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {got} of {n} events within {timeout_s} s"
        got += rt.poll(left)
    return got


def test_an_order_runs_and_comes_back_done(runtime: NodeRuntime) -> None:
    info = runtime.info
    assert info.name == "n1" and info.host == socket.gethostname()
    assert info.capacity.cores and info.capacity.memory and info.follows
    runtime.submit([fn_order(7, pid_after, 0.0)])
    (ev,) = events(runtime, 1)
    assert isinstance(ev, Done)
    assert (ev.node, ev.task_id, ev.attempt, ev.status, ev.exit_status) == ("n1", 7, 1, Status.OK, 0)
    pid = cloudpickle.loads(ev.payload)
    assert pid == ev.measured.pid and pid != os.getpid()
    assert ev.measured.method == info.measure_method
    assert ev.measured.finished_at >= ev.measured.started_at > 0
    assert not ev.cancelled and ev.stdout == "" and runtime.tasks == {}


def test_command_output_arrives_in_done_and_leaves_no_file(runtime: NodeRuntime, tmp_path: Path) -> None:
    odd = tmp_path / "a dir with 'quotes' and spaces"
    odd.mkdir()
    script = "echo out-ü; echo err-line >&2; pwd; exit 3"
    runtime.submit([Order(task_id=1, attempt=1, kind=OrderKind.COMMAND, fn_key=0, fn_bytes=b"",
                          payload=b"", allocation=ALLOC,
                          command=Command(argv=("/bin/sh", "-c", script), cwd=str(odd)))])
    (ev,) = events(runtime, 1)
    assert isinstance(ev, Done)
    assert ev.exit_status == 3
    assert ev.stdout == f"out-ü\n{odd}\n"
    assert ev.stderr == "err-line\n"
    assert os.listdir(runtime.outdir) == []


def test_a_cancelled_task_is_stopped(runtime: NodeRuntime) -> None:
    runtime.submit([fn_order(1, pid_after, 60.0)])
    started = time.monotonic()
    runtime.cancel(1)
    (ev,) = events(runtime, 1)
    assert isinstance(ev, Done) and ev.task_id == 1 and ev.cancelled
    assert ev.status != Status.OK
    assert time.monotonic() - started < 50  # not the task's 60 s
    runtime.cancel(1)  # no longer held: nothing to do, nothing raised


def test_a_killed_zygote_comes_back_lost_and_is_replaced(runtime: NodeRuntime) -> None:
    runtime.submit([fn_order(1, pid_after, 60.0), fn_order(2, pid_after, 60.0)])
    victim_index = runtime.tasks[1][0]
    victim = runtime.zygotes[victim_index]
    os.kill(victim.proc.pid, signal.SIGKILL)
    got = events(runtime, 1)
    lost = [e for e in got if isinstance(e, Lost)]
    assert len(lost) == 1 and lost[0].node == "n1"
    assert 1 in lost[0].task_ids and str(victim.proc.pid) in lost[0].reason
    replacement = runtime.zygotes[victim_index]
    assert replacement is not victim and replacement.proc.poll() is None
    assert runtime.load[victim_index] == 0
    assert lost[0].task_ids == (1,)  # task 2 runs on the other zygote and goes on
    runtime.cancel(2)
    (other,) = events(runtime, 1)
    assert isinstance(other, Done) and other.task_id == 2 and other.cancelled
    # One order to each zygote: the new one is sent the function's bytes, which it has never seen.
    runtime.submit([fn_order(3, pid_after, 0.0), fn_order(4, pid_after, 0.0)])
    assert {runtime.tasks[3][0], runtime.tasks[4][0]} == {0, 1}
    got = events(runtime, 2)
    assert all(isinstance(e, Done) and e.status == Status.OK for e in got), got


def test_function_bytes_go_to_each_zygote_once(runtime: NodeRuntime) -> None:
    runtime.submit([fn_order(1, pid_after, 0.0), fn_order(2, pid_after, 0.0)])  # one per zygote
    events(runtime, 2)
    # The same key with bytes that are no function: the runtime strips them, as the
    # zygotes have the function already.
    runtime.submit([fn_order(3, pid_after, 0.0, fn_bytes=b"not a pickle"),
                    fn_order(4, pid_after, 0.0, fn_bytes=b"not a pickle")])
    got = events(runtime, 2)
    assert all(isinstance(e, Done) and e.status == Status.OK for e in got), got


def test_an_order_after_another_starts_when_that_one_ends(runtime: NodeRuntime) -> None:
    runtime.submit([fn_order(1, pid_after, 0.02), fn_order(2, pid_after, 0.0, after=1)])
    assert runtime.tasks[1][0] == runtime.tasks[2][0]  # the same zygote
    got = events(runtime, 2)
    assert not any(isinstance(e, HandedBack) for e in got)
    first, second = sorted((e for e in got if isinstance(e, Done)), key=lambda e: e.task_id)
    assert second.measured.started_at >= first.measured.finished_at - 0.01


def test_an_order_behind_a_long_task_is_handed_back(runtime: NodeRuntime) -> None:
    runtime.submit([fn_order(1, pid_after, 60.0), fn_order(2, pid_after, 0.0, after=1)])
    (ev,) = events(runtime, 1)
    assert ev == HandedBack("n1", 2, 1)
    assert set(runtime.tasks) == {1}
    runtime.cancel(1)
    events(runtime, 1)


def test_orders_and_events_pickle(runtime: NodeRuntime) -> None:
    order = fn_order(1, pid_after, 0.0)
    assert pickle.loads(pickle.dumps(order)) == order
    assert pickle.loads(pickle.dumps(runtime.info)) == runtime.info
    runtime.submit([order])
    (ev,) = events(runtime, 1)
    assert pickle.loads(pickle.dumps(ev)) == ev


def test_a_wake_from_another_thread_ends_a_poll(runtime: NodeRuntime) -> None:
    import threading

    threading.Timer(0.05, runtime.wake).start()
    started = time.monotonic()
    assert runtime.poll(60.0) == []
    assert time.monotonic() - started < 50


def test_report_host_is_the_node_that_ran_the_task() -> None:
    with Executor(history=":memory:", sandbox=False, ledger=False, zygotes=1) as ex:
        f = ex.submit(pid_after, 0.0)
        f.result(timeout=30)
        assert f.report is not None and f.report.host == socket.gethostname()
        c = ex.submit_command(["/bin/echo", "from the node"])
        assert c.result(timeout=30).stdout == "from the node\n"
        assert os.listdir(ex.backend.runtime.outdir) == []  # type: ignore[attr-defined]


def test_an_executor_runs_on_the_backend_it_is_given(tmp_path: Path) -> None:
    from loadmaster.backends.local import LocalBackend
    from loadmaster.errors import InvalidSpec

    backend = LocalBackend(NodeConfig(name="mine", workdir=str(tmp_path / "n"), zygotes=1, ledger=False,
                                      caps=Resources(cores=1)))
    with Executor(history=":memory:", sandbox=False, backend=backend) as ex:
        assert ex.node == backend.nodes()[0].capacity and ex.node.cores == 1
        f = ex.submit(pid_after, 0.0)
        f.result(timeout=30)
        assert f.report is not None and f.report.host == socket.gethostname()
    assert backend.nodes() == []  # closed with the executor
    with pytest.raises(InvalidSpec, match="not a loadmaster Backend"):
        Executor(history=":memory:", backend=42)  # type: ignore[arg-type]


def test_a_constructor_that_fails_leaves_no_zygote_behind(tmp_path: Path) -> None:
    from loadmaster.errors import HistoryError

    bad = tmp_path / "history.sqlite"
    bad.write_bytes(b"this is not a database, it is a user's file\n" * 200)
    children = {int(p) for p in os.listdir("/proc") if p.isdigit() and _parent_of(int(p)) == os.getpid()}
    with pytest.raises(HistoryError):
        Executor(history=str(bad), sandbox=False, ledger=False, zygotes=1)
    left = {int(p) for p in os.listdir("/proc") if p.isdigit() and _parent_of(int(p)) == os.getpid()}
    assert left <= children, "a zygote outlived the failed constructor"
    assert bad.read_bytes().startswith(b"this is not a database")  # and the file is untouched


def _parent_of(pid: int) -> int:
    """The parent pid of a live (not zombie) process, or -1."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return -1 if fields[0] == "Z" else int(fields[1])
