"""Locality: tasks go to the node that already holds their inputs, unless it is full.

Two real node runtimes (each its own zygote, work directory and cache) behind
a small backend in this process; the executor's scheduler, replica table and
staging are the real ones. First fit alone would put every task on node
``a`` (the first of two equal nodes): a task found on ``b`` is there because
``b`` holds its input.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from loadmaster import Executor, File
from loadmaster.backends.base import Backend
from loadmaster.node.orders import Event, NodeConfig, NodeInfo, Order
from loadmaster.node.runtime import NodeRuntime
from loadmaster.spec import Resources

MiB = 1 << 20


class TwoNodes(Backend):
    """Nodes ``a`` and ``b``: one core, 2 GiB, 8 GiB of disk each (equal: first fit takes ``a``), their own caches."""

    def __init__(self, root: Path) -> None:
        caps = Resources(cores=1, memory=2 << 30, disk=8 << 30)
        self.rt = {n: NodeRuntime(NodeConfig(name=n, workdir=str(root / n), zygotes=1, ledger=False, caps=caps,
                                             cache_dir=str(root / f"cache-{n}")))
                   for n in ("a", "b")}

    def nodes(self) -> list[NodeInfo]:
        return [r.info for r in self.rt.values()]

    def submit(self, node: str, orders: Sequence[Order]) -> None:
        self.rt[node].submit(orders)

    def cancel(self, node: str, task_id: int) -> None:
        self.rt[node].cancel(task_id)

    def wait(self, timeout: float | None) -> list[Event]:
        # Select first, then poll each runtime without blocking. Polled first, a wake
        # (a submission) would be drained by a poll that returns no event, and the
        # select after it would sleep on with the submission untaken: the engine
        # then waited forever (this test hung about one run in three).
        fds = [fd for r in self.rt.values() for fd in r._fds]
        writing = [z.cmd_fd for r in self.rt.values() for z in r.zygotes if z.outbox]
        if not any(r._refused or r.outputs._ready for r in self.rt.values()):
            select.select(fds, writing, [], timeout)
        events: list[Event] = []
        for r in self.rt.values():
            events += r.poll(0)
        return events

    def wake(self) -> None:
        self.rt["a"].wake()

    def admitter(self, node: str) -> Callable[[int], bool] | None:
        return None

    def close(self) -> None:
        for r in self.rt.values():
            r.close()


def hold(started: str, gate: str) -> str:
    """Say it started (FIFO ``started``), then hold a core until someone writes FIFO ``gate``.

    The gate is opened (read-write: never at end of file) before it says it started, so a
    :func:`release` that comes at once finds a reader.
    """
    fd = os.open(gate, os.O_RDWR)
    try:
        with open(started, "wb"):
            pass
        return os.read(fd, 2).decode()
    finally:
        os.close(fd)


def held(ex: Executor, tmp_path: Path, gate: Path) -> Any:
    """Submit a ``hold`` of one core and return its future once it runs (first fit: the first free node)."""
    started = tmp_path / f"{gate.name}.started"
    os.mkfifo(started)
    fut = ex.options(resources={"cores": 1}).submit(hold, str(started), str(gate))
    with open(started, "rb") as fh:  # returns when the task has opened (and closed) its end
        fh.read()
    return fut


def checksum(f: Any) -> int:
    with open(f, "rb") as fh:
        return sum(fh.read()) % 65521


def release(fifo: Path) -> None:
    """Let a ``hold`` on ``fifo`` end (a no-op when it already has)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader: released already (or never held)
        return
    os.write(fd, b"go")
    os.close(fd)


@contextlib.contextmanager
def _released(*fifos: Path) -> Iterator[None]:
    """Release every hold at the end, whatever happened (a failed test must not hang the executor)."""
    try:
        yield
    finally:
        for f in fifos:
            release(f)


def test_tasks_go_where_their_input_is_cached(tmp_path: Path) -> None:
    data = tmp_path / "reference.bin"
    data.write_bytes(os.urandom(2 * MiB))
    expected = sum(data.read_bytes()) % 65521
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    one = {"cores": 1}
    with Executor(backend=TwoNodes(tmp_path), history=":memory:", sandbox=False) as ex, \
            _released(gate):
        blocker = held(ex, tmp_path, gate)  # first fit: node a
        first = ex.options(resources=one).submit(checksum, File(data))  # a is full: node b
        assert first.result(timeout=120) == expected
        release(gate)
        assert blocker.result(timeout=120) == "go"
        r = first.report
        assert r is not None and r.data is not None and r.data.node == "b" and r.data.bytes_fetched == 2 * MiB
        # Both nodes free now: each task goes to b, which holds its input, not to a (first fit).
        placed = []
        for _ in range(10):
            fut = ex.options(resources=one).submit(checksum, File(data))
            assert fut.result(timeout=120) == expected
            assert fut.report is not None and fut.report.data is not None
            placed.append((fut.report.data.node, fut.report.data.bytes_fetched, fut.report.data.cache_hits))
        assert placed == [("b", 0, 1)] * 10


def test_a_full_holder_does_not_make_the_task_wait(tmp_path: Path) -> None:
    data = tmp_path / "reference.bin"
    data.write_bytes(os.urandom(MiB))
    gates = [tmp_path / "gate-a", tmp_path / "gate-b"]
    for g in gates:
        os.mkfifo(g)
    one = {"cores": 1}
    with Executor(backend=TwoNodes(tmp_path), history=":memory:", sandbox=False) as ex, \
            _released(*gates):
        on_a = held(ex, tmp_path, gates[0])
        to_b = ex.options(resources=one).submit(checksum, File(data))  # b: a is held
        to_b.result(timeout=120)
        busy_b = held(ex, tmp_path, gates[1])
        # b holds the input but is busy; a is busy too: free a, and the task runs there now.
        release(gates[0])
        on_a.result(timeout=120)
        fut = ex.options(resources=one).submit(checksum, File(data))
        fut.result(timeout=120)  # it did not wait for b (b's core is still held)
        assert not busy_b.done()
        r = fut.report
        assert r is not None and r.data is not None and r.data.node == "a"
        # It was fetched from b's cache (a ready holder on this host), not the submitter's file.
        assert r.data.inputs[0].source == "b" and r.data.bytes_fetched == MiB
        release(gates[1])
        busy_b.result(timeout=120)
