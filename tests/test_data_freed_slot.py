"""The freed slot's rule and the locality counts, with the executor's real replica table.

Stage B's consumers each read the intermediate its producer left on one node.
When a node frees, the waiting consumer whose intermediate is there takes it,
not the oldest waiting consumer (whose holder is busy): first fit alone would
put both consumers on the wrong node. The counts say where each went and
whether a holder had room (``schedule/locality.py``).
"""

from __future__ import annotations

from loadmaster.data.refs import DataOrder, InputRef
from loadmaster.data.replicas import READY, SUBMITTER, ReplicaTable
from loadmaster.schedule.cluster import ClusterScheduler
from loadmaster.spec import Resources, TaskKind, TaskSpec

MiB = 1 << 20


def reads(task_id: int, *digests: str, category: str = "consume") -> TaskSpec:
    refs = tuple(InputRef(key=f"/sub/{d}", digest=d, size=MiB, kind="file") for d in digests)
    return TaskSpec(task_id=task_id, kind=TaskKind.FUNCTION, category=category, requested=None, payload=b"",
                    input_size=MiB * len(digests), data=DataOrder(inputs=refs))


def one_core(task: TaskSpec, node: Resources) -> Resources:
    return Resources(cores=1.0, memory=100 * MiB)


def two_nodes() -> tuple[ClusterScheduler, ReplicaTable]:
    table = ReplicaTable()
    s = ClusterScheduler(prefer=table.prefer, holders=table.best_holders)
    for name in ("a", "b"):
        s.add_node(name, Resources(cores=1, memory=1000 * MiB))
    return s, table


def test_a_freed_node_goes_to_the_waiting_task_whose_input_it_holds() -> None:
    s, table = two_nodes()
    table.mark(SUBMITTER, "ds", READY)  # the submitter's declared dataset: a source, not a node to run on
    producers = [reads(0, "ds", category="produce"), reads(1, "ds", category="produce")]
    for t in producers:
        s.push(t)
    placed = s.pick(one_core)
    assert sorted(p.node for p in placed) == ["a", "b"]
    table.mark("a", "mid-a", READY)  # each producer left its intermediate on its node
    table.mark("b", "mid-b", READY)
    s.push(reads(2, "mid-a"))  # the oldest waits for a, which is busy
    s.push(reads(3, "mid-b"))
    assert s.pick(one_core) == []
    s.release("b", one_core(producers[1], Resources()))
    (p,) = s.pick(one_core)
    assert (p.task.task_id, p.node) == (3, "b")  # not the oldest (2), whose holder a is busy
    s.release("a", one_core(producers[0], Resources()))
    (p,) = s.pick(one_core)
    assert (p.task.task_id, p.node) == (2, "a")
    c = s.locality["consume"]
    assert (c.placed, c.held, c.room, c.on_holder) == (2, 2, 2, 2)
    assert c.with_room == 1.0 and c.overall == 1.0
    assert s.locality["produce"].held == 0  # no node held the dataset yet (the submitter is no node)


def test_a_freed_node_no_waiting_task_wants_is_not_left_idle() -> None:
    s, table = two_nodes()
    for i in (0, 1):
        s.push(reads(i, "ds", category="produce"))
    s.pick(one_core)
    table.mark("a", "mid-a", READY)
    s.push(reads(2, "mid-a"))
    s.release("b", one_core(reads(0, "ds"), Resources()))
    (p,) = s.pick(one_core)
    assert (p.task.task_id, p.node) == (2, "b")  # its holder a is busy: it runs on b rather than wait
    c = s.locality["consume"]
    assert (c.placed, c.held, c.room, c.on_holder) == (1, 1, 0, 0)  # not on a holder, none had room
    assert c.with_room is None and c.overall == 0.0
