"""Locality in the cluster scheduler when alike tasks read different files.

Tasks of one kind (category, request, input size) share the scheduler's memo
of "fitted nowhere": once one of them found every node full, the next ones are
tried only on the nodes that gained room since. Those tasks still go where
their own inputs are (``prefer``), not to whichever node freed up first: a
stage of consumers, each reading the intermediate one producer left on its
node, is the usual case (``bench/workflow.py``).
"""

from __future__ import annotations

from loadmaster.schedule.cluster import ClusterScheduler
from loadmaster.spec import Resources, TaskKind, TaskSpec

MiB = 1 << 20


def consumer(task_id: int, holder: str) -> TaskSpec:
    """A task reading a file that only ``holder`` has (all alike: one category, one input size)."""
    t = TaskSpec(task_id=task_id, kind=TaskKind.FUNCTION, category="consume", requested=None, payload=b"",
                 input_size=MiB)
    t.extra["holder"] = holder
    return t


def one_core(task: TaskSpec, node: Resources) -> Resources:
    return Resources(cores=1.0, memory=100 * MiB)


def test_alike_tasks_that_fitted_nowhere_still_go_where_their_inputs_are() -> None:
    s = ClusterScheduler(prefer=lambda t: [t.extra["holder"]])
    for name in ("a", "b", "c"):
        s.add_node(name, Resources(cores=1, memory=1000 * MiB))
    s.add_node("small", Resources(cores=1, memory=50 * MiB))  # a free core the tasks do not fit: they are tried
    first = [consumer(i, h) for i, h in enumerate("abc")]
    for t in first:
        s.push(t)
    placed = {p.task.task_id: p.node for p in s.pick(one_core)}
    assert placed == {0: "a", 1: "b", 2: "c"}  # each on its holder
    waiting = [consumer(3, "c"), consumer(4, "a"), consumer(5, "b")]
    for t in waiting:
        s.push(t)
    assert s.pick(one_core) == []  # every node full: this kind fitted nowhere
    for p in ("a", "b", "c"):  # all three free up, a first: first fit among them would put task 3 on a
        s.release(p, one_core(first[0], Resources()))
    placed = {p.task.task_id: p.node for p in s.pick(one_core)}
    assert placed == {3: "c", 4: "a", 5: "b"}


def test_a_full_holder_still_does_not_make_an_alike_task_wait() -> None:
    s = ClusterScheduler(prefer=lambda t: [t.extra["holder"]])
    for name in ("a", "b"):
        s.add_node(name, Resources(cores=1, memory=1000 * MiB))
    for t in (consumer(0, "a"), consumer(1, "b")):
        s.push(t)
    assert len(s.pick(one_core)) == 2
    s.push(consumer(2, "b"))
    assert s.pick(one_core) == []
    s.release("a", one_core(consumer(0, "a"), Resources()))
    (p,) = s.pick(one_core)
    assert (p.task.task_id, p.node) == (2, "a")  # its holder b is busy: it runs on a rather than wait
