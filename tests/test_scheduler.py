"""Tests of the Scheduler's orders: FIFO with bounded backfill, longest first, the no-starvation bound.

The scheduler is pure bookkeeping run by the engine thread (no processes, no
files), so most tests drive it directly with real ``TaskSpec`` objects and a
simulated clock: pick, "run" until the earliest end, release, pick again. The
last ones run real tasks through an ``Executor`` with each ``order=``.
End-to-end starvation with real processes is in ``tests/test_executor.py``.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import time

import pytest

from loadmaster import Executor
from loadmaster.errors import InvalidSpec, NodeError
from loadmaster.plan.planner import Planner
from loadmaster.plan.strategy import Observation
from loadmaster.schedule.scheduler import ClusterScheduler, Placement, Scheduler
from loadmaster.spec import Resources, TaskKind, TaskSpec

MiB = 1024 * 1024


def task(task_id: int, memory_mib: int = 100, seconds: float = 1.0, category: str = "c",
         attempts: int = 0) -> TaskSpec:
    """A task whose allocation is ``memory_mib`` and 1 core; ``seconds`` rides in ``extra``."""
    t = TaskSpec(task_id=task_id, kind=TaskKind.FUNCTION, category=category, requested=None,
                 payload=b"", attempts=attempts)
    t.extra["memory"] = memory_mib * MiB
    t.extra["seconds"] = seconds
    return t


def allocation(t: TaskSpec) -> Resources:
    """The allocation each test task carries."""
    return Resources(cores=1.0, memory=t.extra["memory"])


def seconds(t: TaskSpec) -> float | None:
    """The longest-first key: the task's duration (``None`` where the test says unknown)."""
    value: float | None = t.extra["seconds"]
    return value


def simulate(s: Scheduler, tasks: list[TaskSpec]) -> tuple[list[int], float]:
    """Run ``tasks`` to the end on ``s``; return the start order (ids) and the makespan."""
    for t in tasks:
        s.push(t)
    now = 0.0
    running: list[tuple[float, int, TaskSpec, Resources]] = []
    order: list[int] = []
    while s.queue or running:
        for t, a, _gpus in s.pick(allocation):
            order.append(t.task_id)
            heapq.heappush(running, (now + float(t.extra["seconds"] or 1.0), t.task_id, t, a))
        assert running, "nothing runs and nothing starts: the scheduler is stuck"
        now, _, _, a = heapq.heappop(running)
        s.release(a)
    return order, now


def node(cores: float = 2, memory_mib: int = 1000, **kw: object) -> Scheduler:
    """A scheduler for a node of ``cores`` and ``memory_mib``."""
    return Scheduler(Resources(cores=cores, memory=memory_mib * MiB), **kw)


def test_fifo_starts_in_submission_order() -> None:
    tasks = [task(i, seconds=float(i % 3 + 1)) for i in range(6)]
    order, _ = simulate(node(), tasks)
    assert order == list(range(6))


def test_longest_first_starts_the_longest_predicted_and_shortens_the_tail() -> None:
    durations = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0]  # the long one last: FIFO ends with it alone
    fifo_order, fifo_span = simulate(node(), [task(i, seconds=d) for i, d in enumerate(durations)])
    lpt_order, lpt_span = simulate(node(priority=seconds),
                                   [task(i, seconds=d) for i, d in enumerate(durations)])
    assert lpt_order[0] == 6 and fifo_order[-1] == 6
    assert fifo_span == 7.0 and lpt_span == 5.0
    # Ties keep submission order.
    assert lpt_order[1:] == [0, 1, 2, 3, 4, 5]


def test_longest_first_ranks_retries_then_unmeasured_first() -> None:
    s = node(cores=1, priority=seconds)
    s.push(task(1, seconds=5.0))
    s.push(task(2, seconds=None))  # type: ignore[arg-type]
    s.push(task(3, seconds=1.0, attempts=1))
    firsts = []
    for _ in range(3):
        (t, a, _g), = s.pick(allocation)
        firsts.append(t.task_id)
        s.release(a)
    assert firsts == [3, 2, 1]


def test_longest_first_backfills_what_fits_beside_a_big_task() -> None:
    # A 900 MiB long task and an 800 MiB one cannot run together on 1000 MiB;
    # the next that fits (a 100 MiB task) runs beside the first.
    s = node(priority=seconds)
    for t in (task(0, 100, 1.0), task(1, 800, 3.0), task(2, 900, 4.0), task(3, 100, 2.0)):
        s.push(t)
    picked = [t.task_id for t, _a, _g in s.pick(allocation)]
    assert picked == [2, 3]
    assert [t.task_id for t in s.queue] == [0, 1]  # still in submission order


def test_longest_first_cannot_starve_the_oldest_task() -> None:
    # A short task first, then a stream of long ones that each rank above it.
    s = node(cores=1, priority=seconds, max_bypass=5)
    order, _ = simulate(s, [task(0, seconds=0.5)] + [task(i, seconds=3.0) for i in range(1, 30)])
    assert order.index(0) == 5  # overtaken exactly max_bypass times, then its turn


def test_longest_first_cannot_starve_a_big_task_behind_small_long_ones() -> None:
    # The oldest needs the whole node; the others are longer and always fit beside each other.
    s = node(cores=2, priority=seconds, max_bypass=4)
    order, _ = simulate(s, [task(0, 1000, 0.5)] + [task(i, 300, 2.0) for i in range(1, 20)])
    assert order.index(0) <= 4


def test_longest_first_looks_only_window_deep_and_keeps_the_rest_in_order() -> None:
    s = node(cores=1, priority=seconds, window=3)
    for i, d in enumerate([1.0, 2.0, 3.0, 9.0, 8.0]):
        s.push(task(i, seconds=d))
    (t, _a, _g), = s.pick(allocation)
    assert t.task_id == 2  # 9.0 and 8.0 are beyond the window
    assert [x.task_id for x in s.queue] == [0, 1, 3, 4]


def test_no_free_core_means_no_pick_and_no_key_computed() -> None:
    calls: list[int] = []

    def key(t: TaskSpec) -> float:
        calls.append(t.task_id)
        return 1.0

    s = node(cores=1, priority=key)
    s.push(task(1))
    s.push(task(2))
    assert len(s.pick(allocation)) == 1
    calls.clear()
    assert s.pick(allocation) == [] and calls == []
    assert [x.task_id for x in s.queue] == [2]


def test_a_retry_at_the_head_starts_a_new_bypass_count() -> None:
    # The head (whole node) is overtaken max_bypass times, then it alone may start.
    s = node(cores=2, priority=seconds, max_bypass=2)
    s.push(task(0, 1000, 0.5))
    for i in range(1, 6):
        s.push(task(i, 300, 2.0))
    first = [t.task_id for t, _a, _g in s.pick(allocation)]
    assert first == [1, 2]
    s.release(Resources(cores=2.0, memory=600 * MiB))
    (head, a, _g), = s.pick(allocation)
    assert head.task_id == 0  # its turn: the others wait
    # It ran out of memory and comes back to the head as a retry: a new count.
    s.release(a)
    head.attempts = 1
    head.extra["memory"] = 1000 * MiB
    s.push(head, front=True)
    s.free_memory -= 100 * MiB  # something else holds a little: the retry does not fit
    assert [t.task_id for t, _a, _g in s.pick(allocation)] == [3, 4]


def nap(seconds: float) -> float:
    """A task: sleep ``seconds``, return them."""
    time.sleep(seconds)
    return seconds


@pytest.mark.parametrize("order", ["longest-first", "fifo"])
def test_executor_order_with_real_tasks(order: str) -> None:
    with Executor(history=":memory:", cores=1, memory="1GiB", order=order, ledger=False) as e:
        # Measure both categories once, so that the planner can predict them.
        e.options(category="short").submit(nap, 0.02).result(30)
        e.options(category="long").submit(nap, 0.3).result(30)
        blocker = e.options(category="long").submit(nap, 0.3)
        shorts = [e.options(category="short").submit(nap, 0.02) for _ in range(3)]
        long = e.options(category="long").submit(nap, 0.3)  # submitted last
        for f in [blocker, *shorts, long]:
            f.result(30)
    assert long.report is not None and all(f.report is not None for f in shorts)
    before = sum(1 for f in shorts if f.report and f.report.started_at < long.report.started_at)
    assert before == (0 if order == "longest-first" else 3)


def test_executor_rejects_an_unknown_order() -> None:
    with pytest.raises(InvalidSpec, match="order"):
        Executor(history=":memory:", order="shortest-first")


def test_a_uniform_window_is_not_ranked_when_the_priority_is_by_category() -> None:
    """First attempts of one category and input size all rank alike: they start in
    submission order without a call to the priority; any other task in the window
    brings the ranking back."""
    calls = []

    def counted(t: TaskSpec) -> float | None:
        calls.append(t.task_id)
        return 1.0 if t.category == "c" else 9.0

    s = node(priority=counted, priority_by_category=True)
    for i in range(5):
        s.push(task(i))
    assert [t.task_id for t, _a, _g in s.pick(allocation)] == [0, 1]
    assert calls == []
    s.push(task(9, category="long"))
    assert s.pick(allocation) == []  # the node is full
    s.release(allocation(task(0)))
    s.release(allocation(task(1)))
    assert [t.task_id for t, _a, _g in s.pick(allocation)] == [9, 2]
    assert calls  # ranked this time


# ── many nodes: ClusterScheduler ─────────────────────────────────────────────
GiB_ = 1024 * MiB


def capped(t: TaskSpec, cap: Resources) -> Resources:
    """``alloc_for``: the task's memory and cores (``extra``), capped at the node, as the planner caps."""
    return Resources(cores=min(float(t.extra.get("cores", 1.0)), cap.cores or 1.0),
                     memory=min(t.extra["memory"], cap.memory or 0), gpus=t.extra.get("gpus", 0))


def cluster(*sizes: tuple[str, float, int], **kw: object) -> ClusterScheduler:
    """A scheduler over nodes of (name, cores, memory MiB)."""
    s = ClusterScheduler(**kw)  # type: ignore[arg-type]
    for name, cores, mib in sizes:
        s.add_node(name, Resources(cores=cores, memory=mib * MiB))
    return s


def run_cluster(s: ClusterScheduler, tasks: list[TaskSpec]) -> tuple[list[tuple[int, str]], float]:
    """Run ``tasks`` to the end on ``s``; return (task id, node) in start order and the makespan."""
    for t in tasks:
        s.push(t)
    now = 0.0
    running: list[tuple[float, int, Placement]] = []
    order: list[tuple[int, str]] = []
    while s.queue or running:
        for p in s.pick(capped):
            order.append((p.task.task_id, p.node))
            heapq.heappush(running, (now + float(p.task.extra["seconds"]), p.task.task_id, p))
        assert running, "nothing runs and nothing starts: the scheduler is stuck"
        now, _, p = heapq.heappop(running)
        s.release(p.node, p.allocation, p.gpu_ids)
    return order, now


def test_a_task_bigger_than_one_node_goes_to_the_bigger_one() -> None:
    s = cluster(("big", 8, 8000), ("small", 2, 1000))
    s.push(task(1, memory_mib=4000, category="4000"))   # only the big node holds it
    s.push(task(2, memory_mib=500, category="500"))     # first fit: the smaller node first
    placed = {p.task.task_id: (p.node, p.allocation.memory) for p in s.pick(capped)}
    assert placed == {1: ("big", 4000 * MiB), 2: ("small", 500 * MiB)}
    assert s.node("big").free_memory == 4000 * MiB and s.node("small").running == 1
    # While the big node cannot hold a second one, it waits rather than run capped on the small one.
    s.push(task(3, memory_mib=6000, category="6000"))
    assert s.pick(capped) == []
    assert s.node("small").running == 1
    assert s.largest == Resources(cores=8, memory=8000 * MiB)


def test_never_oversubscribed_across_many_random_placements_and_releases() -> None:
    rng = random.Random(20261202)
    s = ClusterScheduler(priority=lambda t: t.extra["seconds"], max_bypass=8, window=16)
    caps: dict[str, Resources] = {}
    for i in range(40):
        cap = Resources(cores=rng.choice([1, 2, 4, 16]), memory=rng.choice([512, 2048, 8192]) * MiB,
                        gpus=rng.choice([0, 0, 0, 2]))
        s.add_node(f"n{i}", cap)
        caps[f"n{i}"] = cap
    used = {name: [0.0, 0, set()] for name in caps}
    running: list[Placement] = []
    next_id = 0
    for _step in range(1200):
        for _ in range(rng.randrange(4)):
            mib, cores, gpus = rng.choice([64, 300, 1500, 6000]), rng.choice([0.5, 1, 2, 3]), rng.choice([0, 0, 0, 1])
            # alloc_for of a first attempt depends on its category only (as the planner's does)
            t = task(next_id, memory_mib=mib, seconds=rng.random(), category=f"{mib}-{cores}-{gpus}")
            t.extra["cores"] = cores
            t.extra["gpus"] = gpus
            next_id += 1
            s.push(t, front=rng.random() < 0.05)
        for p in s.pick(capped):
            u, cap = used[p.node], caps[p.node]
            u[0] += p.allocation.cores or 0.0
            u[1] += p.allocation.memory or 0
            assert not (u[2] & set(p.gpu_ids)), "a GPU given twice"
            u[2] |= set(p.gpu_ids)
            assert u[0] <= (cap.cores or 0) + 1e-9 and u[1] <= (cap.memory or 0)
            assert len(u[2]) <= (cap.gpus or 0) and len(p.gpu_ids) == (p.allocation.gpus or 0)
            running.append(p)
        for v in s.nodes():
            assert v.free_cores >= -1e-9 and v.free_memory >= 0 and v.running >= 0
        for _ in range(rng.randrange(len(running) + 1) if running else 0):
            p = running.pop(rng.randrange(len(running)))
            u = used[p.node]
            u[0] -= p.allocation.cores or 0.0
            u[1] -= p.allocation.memory or 0
            u[2] -= set(p.gpu_ids)
            s.release(p.node, p.allocation, p.gpu_ids)
    for p in running:
        s.release(p.node, p.allocation, p.gpu_ids)
    for v in s.nodes():
        cap = caps[v.name]
        assert abs(v.free_cores - (cap.cores or 0)) < 1e-9 and v.free_memory == cap.memory
        assert len(v.free_gpus) == (cap.gpus or 0) and v.running == 0


def test_a_removed_node_takes_no_more_tasks_and_its_releases_are_ignored() -> None:
    s = cluster(("a", 2, 1000), ("b", 2, 1000))
    for i in range(4):
        s.push(task(i))
    on = {p.task.task_id: p for p in s.pick(capped)}
    assert {p.node for p in on.values()} == {"a", "b"}
    gone = s.remove_node("a")
    assert gone.name == "a" and gone.running == 2
    lost = [p for p in on.values() if p.node == "a"]
    for p in lost:  # the engine re-places what ran there
        s.release(p.node, p.allocation, p.gpu_ids)  # late: nothing happens
        s.push(p.task, front=True)
    assert [v.name for v in s.nodes()] == ["b"]
    assert s.pick(capped) == []  # b is full
    first_b = next(p for p in on.values() if p.node == "b")
    s.release("b", first_b.allocation)
    (p,) = s.pick(capped)
    assert p.node == "b" and p.task.task_id == lost[-1].task.task_id  # the retries first, in order


def test_admission_refusal_keeps_tasks_off_that_node_only() -> None:
    asked: list[tuple[str, int]] = []
    allow = {"a": False, "b": True}

    def admit(name: str):  # type: ignore[no-untyped-def]
        def ask(in_use: int) -> bool:
            asked.append((name, in_use))
            return allow[name]
        return ask

    s = ClusterScheduler()
    s.add_node("a", Resources(cores=2, memory=1000 * MiB), admit=admit("a"))
    s.add_node("b", Resources(cores=2, memory=1000 * MiB), admit=admit("b"))
    for i in range(3):
        s.push(task(i))
    placed = s.pick(capped)
    assert [p.node for p in placed] == ["b", "b"]
    assert s.admission_blocked and s.node("a").admission_blocked and not s.node("b").admission_blocked
    assert ("a", 100 * MiB) in asked and ("b", 200 * MiB) in asked  # each node's own memory in use
    allow["a"] = True
    (p,) = s.pick(capped)
    assert p.node == "a" and not s.admission_blocked and not s.node("a").admission_blocked


def test_fifo_across_nodes_starts_in_submission_order() -> None:
    tasks = [task(i, seconds=float(i % 3 + 1)) for i in range(12)]
    order, _ = run_cluster(cluster(("a", 2, 1000), ("b", 1, 1000)), tasks)
    assert [i for i, _ in order] == list(range(12))


def test_longest_first_across_nodes_starts_the_longest_and_shortens_the_tail() -> None:
    durations = [1.0] * 12 + [6.0]
    fifo, fifo_span = run_cluster(cluster(("a", 2, 1000), ("b", 2, 1000)),
                                  [task(i, seconds=d) for i, d in enumerate(durations)])
    lpt, lpt_span = run_cluster(cluster(("a", 2, 1000), ("b", 2, 1000), priority=seconds),
                                [task(i, seconds=d) for i, d in enumerate(durations)])
    assert lpt[0][0] == 12 and fifo[-1][0] == 12
    assert lpt_span < fifo_span


@pytest.mark.parametrize("order", [None, "longest-first"])
def test_across_nodes_the_head_reserves_a_node_and_others_go_on_elsewhere(order: str | None) -> None:
    # Every node is busy; then the oldest waiting task needs a whole node, and a stream of
    # small long tasks would keep every node busy for ever.
    s = cluster(("a", 2, 1000), ("b", 2, 1000), ("c", 2, 1000), max_bypass=4,
                priority=seconds if order else None)
    # On each node one task ends soon and one late: the node kept for the big one drains late.
    tasks = [task(i, 300, (2.0 if i % 2 == 0 else 9.0) + i / 10) for i in range(6)]
    tasks += [task(6, 1000, 0.5, category="big")]
    tasks += [task(i, 300, 2.0) for i in range(7, 80)]
    started, _ = run_cluster(s, tasks)
    ids = [i for i, _ in started]
    overtook = [i for i in ids[: ids.index(6)] if i > 6]
    # On one node it would be overtaken exactly max_bypass times and then everything would wait;
    # here one node drains for it while the other two go on.
    assert len(overtook) > 4
    assert ids.index(6) < 20, ids  # not starved: it starts once its node is empty
    where = dict(started)[6]
    after = [n for i, n in started[ids.index(6) + 1:]]
    assert after.count(where) < len(after)  # the other nodes were used meanwhile and after


def test_a_task_no_node_could_hold_blocks_nothing() -> None:
    s = cluster(("a", 1, 1000), ("b", 1, 1000), max_bypass=1)
    huge = task(0, seconds=1.0, category="huge")
    huge.extra["cores"] = 4.0
    s.push(huge)
    for i in range(1, 6):
        s.push(task(i))

    def uncapped(t: TaskSpec, cap: Resources) -> Resources:
        return Resources(cores=float(t.extra.get("cores", 1.0)), memory=t.extra["memory"])

    assert [p.task.task_id for p in s.pick(uncapped)] == [1]  # overtaken once: max_bypass
    assert [p.task.task_id for p in s.pick(uncapped)] == [2]  # yet it blocks nothing
    assert s.too_big is huge  # for the engine to fail, or to wait for a bigger node
    s.release("a", Resources(cores=1.0, memory=100 * MiB))
    assert [p.task.task_id for p in s.pick(uncapped)] == [3]


def test_prefer_puts_a_task_where_its_inputs_are_when_it_fits_there() -> None:
    where = {1: ["c"], 2: ["c", "b"], 3: ["nowhere"]}
    s = cluster(("a", 4, 4000), ("b", 4, 4000), ("c", 1, 4000),
                prefer=lambda t: where.get(t.task_id, []))
    for i in (1, 2, 3, 4):
        s.push(task(i))
    placed = {p.task.task_id: p.node for p in s.pick(capped)}
    assert placed == {1: "c", 2: "b", 3: "a", 4: "a"}  # c full after 1; unknown names ignored


def test_pick_next_hands_the_head_ahead_on_that_node() -> None:
    s = cluster(("a", 1, 1000), ("b", 1, 1000))
    for i in range(3):
        s.push(task(i))
    first = s.pick(capped)
    assert len(first) == 2
    nxt = s.pick_next("a", first[0].allocation, capped)
    assert nxt is not None and nxt[0].task_id == 2 and not s.queue
    s.release("a", first[0].allocation)
    s.hold("a", nxt[1])
    assert s.node("a").free_cores == 0.0 and s.node("a").running == 1
    assert s.pick_next("nowhere", first[0].allocation, capped) is None


def test_nodes_that_cannot_hold_anything_and_names_twice_are_refused() -> None:
    s = ClusterScheduler()
    with pytest.raises(NodeError, match="memory"):
        s.add_node("m0", Resources(cores=2, memory=0))
    with pytest.raises(NodeError, match="cores"):
        s.add_node("c0", Resources(memory=1000 * MiB))
    with pytest.raises(NodeError, match="GPU id"):
        s.add_node("g", Resources(cores=1, memory=MiB, gpus=2), gpu_ids=("0",))
    with pytest.raises(NodeError, match="repeat"):
        s.add_node("g", Resources(cores=1, memory=MiB, gpus=2), gpu_ids=("0", "0"))
    with pytest.raises(NodeError, match="non-empty"):
        s.add_node("", Resources(cores=1, memory=MiB))
    s.add_node("x", Resources(cores=2, memory=1000 * MiB))
    with pytest.raises(NodeError, match="already known"):
        s.add_node("x", Resources(cores=4, memory=1000 * MiB))
    with pytest.raises(NodeError, match="no node named 'y'"):
        s.remove_node("y")
    with pytest.raises(NodeError):
        s.node("y")
    assert isinstance(NodeError("x"), ValueError)


def test_a_node_with_no_gpus_or_no_disk_gets_no_task_that_needs_them() -> None:
    s = ClusterScheduler()
    s.add_node("plain", Resources(cores=4, memory=4000 * MiB, disk=0))
    s.add_node("gpu", Resources(cores=4, memory=4000 * MiB, gpus=1, disk=10 * GiB_), gpu_ids=("GPU-7",))
    g, d, both = task(1, category="gpu"), task(2, category="disk"), task(3, category="gpu")
    g.extra["gpus"] = 1
    both.extra["gpus"] = 1

    def alloc(t: TaskSpec, cap: Resources) -> Resources:
        a = capped(t, cap)
        return dataclasses.replace(a, disk=GiB_) if t.task_id == 2 else a

    for t in (g, d, both):
        s.push(t)
    placed = {p.task.task_id: (p.node, p.gpu_ids) for p in s.pick(alloc)}
    assert placed == {1: ("gpu", ("GPU-7",)), 2: ("gpu", ())}  # the one GPU is taken: 3 waits
    assert [t.task_id for t in s.queue] == [3]


def test_the_planner_sizes_and_caps_a_task_for_the_node_it_goes_to() -> None:
    own = Resources(cores=8, memory=32 * GiB_)
    small = Resources(cores=2, memory=2 * GiB_)
    p = Planner(own, strategy="learned")
    unmeasured = p.first_allocation("a", None)
    on_small = p.first_allocation("a", None, node=small)
    assert unmeasured.memory == 4 * GiB_  # the fair share of the planner's node
    assert on_small.memory == GiB_ and on_small.cores == 1.0  # the fair share of the small node
    assert p.first_allocation("a", None, node=own) == unmeasured
    for _ in range(3):
        p.observe("a", Observation(peak_memory=3 * GiB_, wall_time=1.0, cores=1.0, disk=0,
                                   allocated_memory=4 * GiB_))
    assert (p.first_allocation("a", None, node=small).memory or 0) <= 2 * GiB_  # capped at that node
    grown: Resources | None = Resources(cores=1.0, memory=GiB_)
    sizes = []
    while grown is not None:  # grows up to the small node, not past it
        sizes.append(grown.memory)
        last, grown = grown, p.retry_allocation("a", grown, "memory", grown.memory or 0, node=small)
    assert sizes[-1] == 2 * GiB_ and len(sizes) > 1
    grown = last
    bigger = p.retry_allocation("a", grown, "memory", 2 * GiB_)  # on the planner's own node it grows
    assert bigger is not None and (bigger.memory or 0) > 2 * GiB_
    with pytest.raises(InvalidSpec, match="memory"):
        p.first_allocation("a", None, node=Resources(cores=1))


def test_the_single_node_api_is_the_default_node_case() -> None:
    s = node(cores=2, memory_mib=1000)
    for i in range(3):
        s.push(task(i))
    picked = s.pick(allocation)
    assert [(t.task_id, a.memory) for t, a, _g in picked] == [(0, 100 * MiB), (1, 100 * MiB)]
    assert s.memory_in_use == 200 * MiB and s.free_cores == 0.0
    s.release(picked[0][1])
    assert s.free_cores == 1.0 and s.memory_in_use == 100 * MiB


def test_a_second_node_joins_a_busy_first_one() -> None:
    s = ClusterScheduler()
    s.add_node("a", Resources(cores=2, memory=1000 * MiB))
    for i in range(5):
        s.push(task(i))
    first = s.pick(capped)  # alone: the single-node path
    assert [p.node for p in first] == ["a", "a"]
    s.add_node("b", Resources(cores=2, memory=1000 * MiB))
    assert [p.node for p in s.pick(capped)] == ["b", "b"]  # a is known to be full
    s.release("a", first[0].allocation)
    (p,) = s.pick(capped)
    assert p.node == "a" and s.node("a").running == 2
    s.remove_node("b")  # alone again
    s.release("a", first[1].allocation)
    s.release("a", p.allocation)
    assert s.node("a").free_cores == 2.0 and s.node("a").running == 0
