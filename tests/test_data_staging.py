"""Staging and output pulls off the threads that dispatch: a stalled copy holds only its own task.

On the node: a real node runtime (its zygote, work directory, cache and transfer server)
driven directly, and a real holder's transfer server whose copy of the input
is still arriving and stops half way (its writer stalls). The task reading
that input waits; an unrelated task submitted after it runs and reports
meanwhile; when the holder's copy goes on, the first task gets the whole
input and runs.

In the client: an executor over a real node runtime that serves its cache
(as a Dask node does: outputs stay there for the client to pull), the node's
server reached through a gate that holds the pull. An unrelated task
submitted while the output is being pulled is dispatched, runs and resolves;
then the gate opens and the output arrives at the submitter's path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cloudpickle
import pytest

from loadmaster import Executor, File, Output
from loadmaster.backends.base import Backend
from loadmaster.data.cache import Cache
from loadmaster.data.digest import hash_file
from loadmaster.data.refs import DataOrder, InputRef, Source
from loadmaster.data.transfer.protocol import new_secret
from loadmaster.data.transfer.server import TransferServer
from loadmaster.node.orders import Done, Event, NodeConfig, NodeEvent, NodeInfo, Order, OrderKind, Status
from loadmaster.node.runtime import NodeRuntime
from loadmaster.spec import Resources

MiB = 1 << 20
ALLOC = Resources(cores=1.0, memory=256 * MiB)
SECRET = new_secret()


def checksum(f: object) -> int:
    with open(f, "rb") as fh:  # type: ignore[call-overload]
        return sum(fh.read()) % 65521


def answer() -> int:
    return 42


def order(task_id: int, fn: object, args: tuple[object, ...], data: DataOrder | None = None,
          after: int = -1) -> Order:
    return Order(task_id=task_id, attempt=1, kind=OrderKind.FUNCTION, fn_key=task_id,
                 fn_bytes=cloudpickle.dumps(fn), payload=pickle.dumps((args, {})), allocation=ALLOC, data=data,
                 after=after)


def done_of(rt: NodeRuntime, task_id: int, seen: list[NodeEvent]) -> Done:
    """Poll until ``task_id``'s Done came (each event kept in ``seen``); a hang guard of 120 s, not a budget."""
    deadline = time.monotonic() + 120
    while True:
        for ev in seen:
            if isinstance(ev, Done) and ev.task_id == task_id:
                return ev
        left = deadline - time.monotonic()
        assert left > 0, f"no Done of task {task_id} in {seen}"
        seen += rt.poll(left)


@pytest.mark.parametrize("follower", [False, True], ids=["alone", "with-a-task-handed-ahead-behind-it"])
def test_a_stalled_input_does_not_hold_up_an_unrelated_task(tmp_path: Path, follower: bool) -> None:
    data = random.Random(3).randbytes(2 * MiB)
    (tmp_path / "in.bin").write_bytes(data)
    digest = hash_file(str(tmp_path / "in.bin"))
    holder = Cache(str(tmp_path / "holder"))
    w = holder.begin(digest, len(data))
    assert w is not None
    w.write(data[:MiB])  # the holder's own copy is arriving, and stops half way
    # A hang guard: were staging on the node's thread, submit would wait on the stalled copy;
    # dropping it then makes that fetch fail (the test fails), rather than hang.
    guard = threading.Timer(120, w.abort)
    guard.start()
    key = "/on/the/submitter/only/in.bin"  # no such path here: only the holder can deliver
    with TransferServer(SECRET, cache=holder, stall_s=3600) as srv:
        rt = NodeRuntime(NodeConfig(name="n", workdir=str(tmp_path / "node"), zygotes=1, ledger=False,
                                    cache_dir=str(tmp_path / "cache")))
        try:
            rt.serve_transfers(SECRET, "127.0.0.1")
            rt._data.fetcher.idle_timeout_s = 3600  # the stall is the holder's, not a dead source
            ref = InputRef(key, digest, len(data), "file", (Source("holder", "another-host", "", srv.address),))
            staged = order(1, checksum, (File(key),), DataOrder((ref,), ()))
            # A task handed ahead behind it (in the same batch) runs after it, not before.
            rt.submit([staged, order(3, answer, (), after=1)] if follower else [staged])
            rt.submit([order(2, answer, ())])
            seen: list[NodeEvent] = []
            other = done_of(rt, 2, seen)
            assert other.status == Status.OK and cloudpickle.loads(other.payload) == 42
            assert not any(isinstance(ev, Done) and ev.task_id in (1, 3) for ev in seen)
            arriving = Cache(str(tmp_path / "cache")).partial(digest)  # the node's copy, half there
            assert arriving is not None and arriving.received() == MiB
            assert guard.is_alive()
            guard.cancel()
            w.write(data[MiB:])  # the holder's copy goes on: so does the node's
            w.commit()
            first = done_of(rt, 1, seen)
            assert first.status == Status.OK, first.payload
            assert cloudpickle.loads(first.payload) == sum(data) % 65521
            assert first.data is not None and first.data.inputs[0].source == "holder"
            assert first.data.bytes_fetched == len(data)
            if follower:
                behind = done_of(rt, 3, seen)
                assert behind.status == Status.OK and behind.measured.started_at >= first.measured.finished_at
        finally:
            guard.cancel()
            rt.close()


class GatedNode(Backend):
    """One node (2 cores) serving its cache; the client reaches its transfer server only through ``gate``."""

    def __init__(self, root: Path, gate: Gate) -> None:
        self.secret = SECRET
        self.address = "tcp://127.0.0.1:1"
        self.rt = NodeRuntime(NodeConfig(name="n", workdir=str(root / "node"), zygotes=2, ledger=False,
                                         caps=Resources(cores=2, memory=2 << 30, disk=8 << 30),
                                         cache_dir=str(root / "cache")))
        gate.upstream = self.rt.serve_transfers(SECRET, "127.0.0.1")
        self.info = dataclasses.replace(self.rt.info, transfer_address=gate.address)

    def nodes(self) -> list[NodeInfo]:
        return [self.info]

    def submit(self, node: str, orders: Sequence[Order]) -> None:
        self.rt.submit(orders)

    def cancel(self, node: str, task_id: int) -> None:
        self.rt.cancel(task_id)

    def wait(self, timeout: float | None) -> list[Event]:
        return self.rt.poll(timeout)  # type: ignore[return-value]

    def wake(self) -> None:
        self.rt.wake()

    def admitter(self, node: str) -> Callable[[int], bool] | None:
        return None

    def close(self) -> None:
        self.rt.close()


class Gate:
    """A TCP relay to ``upstream`` that connects (and so lets bytes through) only once ``open`` is set."""

    def __init__(self) -> None:
        self.upstream = ""
        self.open = threading.Event()
        self.reached = threading.Event()  # a connection came (the client began pulling)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        self.reached.set()
        self.open.wait()
        host, port = self.upstream.rsplit(":", 1)
        with conn, socket.create_connection((host, int(port))) as up:
            def pump(a: socket.socket, b: socket.socket) -> None:
                with contextlib.suppress(OSError):
                    while data := a.recv(1 << 16):
                        b.sendall(data)
                with contextlib.suppress(OSError):
                    b.shutdown(socket.SHUT_WR)
            t = threading.Thread(target=pump, args=(up, conn), daemon=True)
            t.start()
            pump(conn, up)
            t.join()

    def close(self) -> None:
        self.open.set()
        self._sock.close()


def write(out: object, text: str) -> str:
    with open(out, "w") as fh:  # type: ignore[call-overload]
        fh.write(text)
    return "written"


def test_an_output_pull_that_stalls_does_not_hold_up_dispatch(tmp_path: Path) -> None:
    gate = Gate()
    guard = threading.Timer(120, gate.open.set)  # a hang guard (the test then fails), not a budget
    guard.start()
    dest = tmp_path / "result.txt"
    try:
        with Executor(backend=GatedNode(tmp_path, gate), history=":memory:", sandbox=False) as ex:
            one = ex.options(resources={"cores": 1})
            first = one.submit(write, Output(dest), "the output")
            assert gate.reached.wait(120), "the client never began pulling the output"
            # The output is being pulled (held at the gate): the engine still dispatches and settles.
            other = one.submit(answer)
            assert other.result(timeout=120) == 42
            assert not first.done() and not dest.exists() and guard.is_alive()
            gate.open.set()
            assert first.result(timeout=120) == "written"
            assert dest.read_text() == "the output"
    finally:
        guard.cancel()
        gate.close()
