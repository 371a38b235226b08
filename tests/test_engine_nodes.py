"""The engine when nodes leave and join: real node runtimes behind a small backend.

The backend here is a real one (``Backend`` filled in over real
``NodeRuntime``s, real zygotes and task processes): on request, from inside
the engine thread's ``wait`` as a real backend would notice it, the node
dies (its zygotes are killed) and a new node joins in its place. What is
checked is the engine's: the task the dead node ran is placed again on the
new node, delivered once, with the report of the node that ran it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from loadmaster import Executor
from loadmaster.backends.base import Backend
from loadmaster.node.orders import Event, NodeConfig, NodeInfo, NodeJoined, NodeLeft, Order
from loadmaster.node.runtime import NodeRuntime


def nap_pid(seconds: float) -> int:
    """Sleep; return this task process's pid."""
    time.sleep(seconds)
    return os.getpid()


class ReplacedNode(Backend):
    """One node at a time; :meth:`replace` kills it and starts another under a new name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 1
        self.runtime = self._runtime()
        self._replace = threading.Event()
        self.replaced = threading.Event()

    def _runtime(self) -> NodeRuntime:
        name = f"node-{self.generation}"
        return NodeRuntime(NodeConfig(name=name, workdir=str(self.root / name), zygotes=1, ledger=False))

    def replace(self) -> None:
        """Ask (any thread) for the node to die and a new one to join."""
        self._replace.set()
        self.runtime.wake()

    def nodes(self) -> list[NodeInfo]:
        return [self.runtime.info]

    def submit(self, node: str, orders: Sequence[Order]) -> None:
        if node == self.runtime.name:
            self.runtime.submit(orders)

    def cancel(self, node: str, task_id: int) -> None:
        if node == self.runtime.name:
            self.runtime.cancel(task_id)

    def wait(self, timeout: float | None) -> list[Event]:
        if self._replace.is_set():
            self._replace.clear()
            old = self.runtime
            for z in old.zygotes:
                z.proc.kill()
            old.close()
            self.generation += 1
            self.runtime = self._runtime()
            self.replaced.set()
            return [NodeLeft(old.name, "killed by the test"), NodeJoined(self.runtime.info)]
        return self.runtime.poll(timeout)  # type: ignore[return-value]

    def wake(self) -> None:
        self.runtime.wake()

    def admitter(self, node: str) -> Callable[[int], bool] | None:
        return None

    def close(self) -> None:
        self.runtime.close()


def test_a_task_on_a_node_that_dies_is_placed_on_the_node_that_joins(tmp_path: Path) -> None:
    backend = ReplacedNode(tmp_path)
    first_zygote = backend.runtime.zygotes[0].proc
    with Executor(history=":memory:", sandbox=False, backend=backend) as ex:
        f = ex.submit(nap_pid, 1.0)
        deadline = time.monotonic() + 30
        while 1 not in backend.runtime.tasks and time.monotonic() < deadline:
            time.sleep(0.01)  # until the first node holds it
        assert f.running()
        backend.replace()
        assert backend.replaced.wait(30)
        pid = f.result(timeout=60)
        assert first_zygote.poll() is not None  # the first node really died
        r = f.report
        assert r is not None and r.attempts == 2 and r.outcome.value == "ok"
        assert pid != 0
        engine = ex._engine
        assert set(engine.nodes) == {"node-2"} and engine.lost == 1
        assert [v.name for v in engine.scheduler.nodes()] == ["node-2"]
        # The new node takes new work too.
        assert ex.submit(abs, -5).result(timeout=30) == 5
