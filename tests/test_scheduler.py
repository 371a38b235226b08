"""Tests of the Scheduler's orders: FIFO with bounded backfill, longest first, the no-starvation bound.

The scheduler is pure bookkeeping run by the engine thread (no processes, no
files), so most tests drive it directly with real ``TaskSpec`` objects and a
simulated clock: pick, "run" until the earliest end, release, pick again. The
last ones run real tasks through an ``Executor`` with each ``order=``.
End-to-end starvation with real processes is in ``tests/test_executor.py``.
"""

from __future__ import annotations

import heapq
import time

import pytest

from loadmaster import Executor
from loadmaster.errors import InvalidSpec
from loadmaster.schedule.scheduler import Scheduler
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
