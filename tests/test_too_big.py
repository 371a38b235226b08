"""A task larger than every node: refused or failed with the largest node named, never left waiting.

The backend here is a stand-in for a cluster of nodes of different sizes (the
``Backend`` seam: nodes, orders carried, events back); nothing runs on its
nodes, which is all these tests need: the task in question never fits one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest

import loadmaster
from loadmaster.backends.base import Backend
from loadmaster.node.orders import Event, NodeInfo, NodeLeft, Order
from loadmaster.results import MeasureMethod
from loadmaster.spec import Resources

GiB = 1 << 30


def work() -> int:
    return 1


class Nodes(Backend):
    """Nodes of given capacities that take orders and never answer (until told: a node leaves)."""

    def __init__(self, caps: dict[str, Resources], *, grows: bool = False) -> None:
        self.infos = {n: NodeInfo(n, f"host-{n}", c, measure_method=MeasureMethod.HWM_SAMPLED.value)
                      for n, c in caps.items()}
        self._grows = grows
        self.cond = threading.Condition()
        self.events: list[Event] = []
        self.woken = False
        self.orders: dict[str, list[int]] = {n: [] for n in caps}

    def nodes(self) -> list[NodeInfo]:
        return list(self.infos.values())

    def submit(self, node: str, orders: Sequence[Order]) -> None:
        with self.cond:
            self.orders[node].extend(o.task_id for o in orders)
            self.cond.notify_all()

    def cancel(self, node: str, task_id: int) -> None:
        pass

    def leave(self, node: str) -> None:
        with self.cond:
            del self.infos[node]
            self.events.append(NodeLeft(node, "the test took it away"))
            self.cond.notify_all()

    def leave_all(self) -> None:
        """Every node leaves: what they were given is lost, so the executor can end."""
        for n in list(self.infos):
            self.leave(n)

    def wait(self, timeout: float | None) -> list[Event]:
        with self.cond:
            if not self.events and not self.woken:
                self.cond.wait(timeout)
            out, self.events, self.woken = self.events, [], False
            return out

    def wake(self) -> None:
        with self.cond:
            self.woken = True
            self.cond.notify_all()

    def grows(self) -> bool:
        return self._grows

    def close(self) -> None:
        pass


def two_sizes(grows: bool = False) -> Nodes:
    return Nodes({"small": Resources(cores=1, memory=2 * GiB, disk=10 * GiB, gpus=0),
                  "big": Resources(cores=4, memory=8 * GiB, disk=10 * GiB, gpus=0)}, grows=grows)


def test_a_request_that_fits_only_the_big_node_is_taken_and_sent_there() -> None:
    nodes = two_sizes()
    ex = loadmaster.Executor(history=":memory:", sandbox=False, backend=nodes)
    try:
        f = ex.options(resources={"cores": 3}).submit(work)
        with nodes.cond:
            assert nodes.cond.wait_for(lambda: nodes.orders["big"], timeout=60)
        assert nodes.orders["big"] == [f.task_id] and not nodes.orders["small"]
    finally:
        nodes.leave_all()
        ex.shutdown(cancel_futures=True)


def test_a_request_larger_than_every_node_is_refused_naming_the_largest() -> None:
    nodes = two_sizes()
    ex = loadmaster.Executor(history=":memory:", sandbox=False, backend=nodes)
    try:
        with pytest.raises(loadmaster.InvalidSpec, match=r"more than its largest node has \(cores 5 > 4"):
            ex.options(resources={"cores": 5}).submit(work)
    finally:
        nodes.leave_all()
        ex.shutdown(cancel_futures=True)


def test_when_the_only_node_that_held_it_leaves_the_task_fails_saying_the_largest_left() -> None:
    nodes = two_sizes()
    ex = loadmaster.Executor(history=":memory:", sandbox=False, backend=nodes)
    try:
        f = ex.options(resources={"cores": 3}).submit(work)
        with nodes.cond:
            assert nodes.cond.wait_for(lambda: nodes.orders["big"], timeout=60)
        nodes.leave("big")
        with pytest.raises(loadmaster.TaskFailed, match=r"more than any node can hold \(cores 3 > 1\b.* on the "
                                                       r"largest node, small\)"):
            f.result(timeout=60)
        assert not nodes.orders["small"], "it was sent to a node too small for it"
    finally:
        nodes.leave_all()
        ex.shutdown(cancel_futures=True)


def test_on_a_cluster_that_grows_it_waits_for_a_bigger_node_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    nodes = two_sizes(grows=True)
    ex = loadmaster.Executor(history=":memory:", sandbox=False, backend=nodes)
    try:
        with caplog.at_level(logging.WARNING, logger="loadmaster.engine"):
            f = ex.options(resources={"cores": 6}).submit(work)  # accepted: a bigger node may join
            g = ex.submit(work)
            with nodes.cond:  # the engine has taken both: the small one was placed
                assert nodes.cond.wait_for(lambda: sum(map(len, nodes.orders.values())) == 1, timeout=60)
        assert not f.done()
        assert f.task_id not in nodes.orders["big"] + nodes.orders["small"]
        assert g.task_id in nodes.orders["big"] + nodes.orders["small"]
        msgs = [r.getMessage() for r in caplog.records if "waits for a bigger node" in r.getMessage()]
        assert len(msgs) == 1 and "the largest, big, has 4 cores" in msgs[0], msgs
    finally:
        nodes.leave_all()
        ex.shutdown(cancel_futures=True)
