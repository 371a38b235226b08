"""Tests of the Planner: caching, loading history once, node caps, user-stated limits.

History is a real SQLite file in ``tmp_path`` in the end-to-end tests; the
counting tests use a small stand-in with the one method the planner calls, so
that the number of calls can be checked.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest

from loadmaster.errors import InvalidSpec
from loadmaster.plan.history import History
from loadmaster.plan.planner import RECOMPUTE_ALWAYS_BELOW, Planner
from loadmaster.plan.strategies import Learned
from loadmaster.plan.strategy import STRATEGIES, CategoryState, Observation
from loadmaster.results import MeasureMethod, Outcome, TaskReport
from loadmaster.spec import Resources

MiB = 1024 * 1024
GiB = 1024 * MiB
NODE = Resources(cores=2, memory=8 * GiB, disk=100 * GiB)


def obs(peak_mib: float, **kw: Any) -> Observation:
    """A completed observation of ``peak_mib`` MiB, 1 s."""
    return Observation(peak_memory=int(peak_mib * MiB), wall_time=1.0, cores=1.0, disk=0, **kw)


class FakeHistory:
    """Stands in for History's ``observations`` and counts the calls per category."""

    def __init__(self, data: dict[str, list[Observation]]) -> None:
        self.data = data
        self.calls: dict[str, int] = {}

    def observations(self, category: str, limit: int = 1000) -> list[Observation]:
        self.calls[category] = self.calls.get(category, 0) + 1
        return list(self.data.get(category, []))[-limit:]


class CountingLearned(Learned):
    """The learned strategy, counting how often it is asked for a first allocation."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def first_allocation(
        self,
        state: CategoryState,
        requested: Resources | None,
        node: Resources,
        input_size: int | None = None,
    ) -> Resources:
        self.calls += 1
        return super().first_allocation(state, requested, node, input_size)


def test_first_allocation_is_full_and_learns_from_observations() -> None:
    p = Planner(NODE)
    assert p.first_allocation("a", None) == Resources(
        cores=1.0, memory=4 * GiB, disk=None, gpus=0, wall_time=None
    )
    p.observe("a", obs(100))
    # 100 MiB × 1.5 = 150 -> 160 MiB; disk learned: max(1 GiB, 0) = 1 GiB.
    assert p.first_allocation("a", None) == Resources(
        cores=1.0, memory=160 * MiB, disk=GiB, gpus=0, wall_time=None
    )
    # Another category is untouched.
    assert p.first_allocation("b", None).memory == 4 * GiB


def test_planner_caches_until_observe_changes_the_category() -> None:
    strategy = CountingLearned()
    p = Planner(NODE, strategy=strategy)
    for _ in range(5):
        p.first_allocation("a", None)
    assert strategy.calls == 1
    req = Resources(cores=2)
    for _ in range(3):
        assert p.first_allocation("a", req).memory == 8 * GiB
    assert strategy.calls == 2  # one more for the distinct request
    p.observe("a", obs(100))
    assert p.first_allocation("a", None).memory == 160 * MiB
    assert p.first_allocation("a", None).memory == 160 * MiB
    assert strategy.calls == 3
    p.observe("b", obs(100))  # another category: "a" stays cached
    p.first_allocation("a", None)
    assert strategy.calls == 3


def test_large_categories_refresh_on_new_maxima_and_every_few_percent() -> None:
    strategy = CountingLearned()
    p = Planner(NODE, strategy=strategy)
    for _ in range(RECOMPUTE_ALWAYS_BELOW):
        p.observe("a", obs(100))
    p.observe("a", obs(200))  # a new maximum (101 observations): 220 -> 224 MiB at once
    assert p.first_allocation("a", None).memory == 224 * MiB
    calls = strategy.calls
    p.observe("a", obs(90))  # 102: not a new maximum, not exhausted: no recomputation
    p.first_allocation("a", None)
    assert strategy.calls == calls
    p.observe("a", obs(90))  # 103: the second since the refresh, 2 % of 103 is 2: refresh
    p.first_allocation("a", None)
    assert strategy.calls == calls + 1
    p.observe("a", obs(300, exhausted="memory", allocated_memory=224 * MiB))  # exhausted
    assert p.first_allocation("a", None).memory == 288 * MiB  # floor 1.25 × 224 = 280 -> 288 MiB
    assert strategy.calls == calls + 2


def test_history_is_loaded_once_per_category_and_used() -> None:
    history = FakeHistory({"a": [obs(100), obs(200)]})
    p = Planner(NODE, history=history)
    # Two earlier measurements: 200 × 1.25 = 250 -> 256 MiB, no task run yet.
    assert p.first_allocation("a", None).memory == 256 * MiB
    p.observe("a", obs(300))  # n = 3: 375 -> 384 MiB
    assert p.first_allocation("a", None).memory == 384 * MiB
    p.retry_allocation("a", Resources(memory=384 * MiB), "memory", 384 * MiB)
    p.describe("a")
    assert len(p.state("a").observations) == 3
    assert history.calls == {"a": 1}
    p.observe("b", obs(10))
    p.first_allocation("b", None)
    assert history.calls == {"a": 1, "b": 1}


def test_window_keeps_the_newest_observations() -> None:
    history = FakeHistory({"a": [obs(1000)] + [obs(100)] * 30})
    p = Planner(NODE, history=history, window=10)
    assert len(p.state("a").observations) == 10
    # The 1000 MiB outlier is older than the window: 100 × 1.1 -> 112 MiB.
    assert p.first_allocation("a", None).memory == 112 * MiB
    for _ in range(15):
        p.observe("a", obs(100))
    assert 10 <= len(p.state("a").observations) <= 20


def test_user_stated_memory_is_kept_and_never_grown() -> None:
    p = Planner(NODE)
    req = Resources(memory="100MiB")
    a = p.first_allocation("a", req)
    assert a.memory == 100 * MiB
    assert p.retry_allocation("a", a, "memory", 100 * MiB, requested=req) is None
    # Without being told the request, the planner remembers what users stated here.
    assert p.retry_allocation("a", a, "memory", 100 * MiB) is None
    # An unstated memory of the same category is grown: 2 × 4 GiB would be the whole
    # 8 GiB node, so first the step below it, ¾ of the node (6 GiB), then the node.
    b = p.first_allocation("a", None)
    grown = p.retry_allocation("a", b, "memory", 4 * GiB, requested=None)
    assert grown is not None and grown.memory == 6 * GiB
    grown = p.retry_allocation("a", grown, "memory", 6 * GiB, requested=None)
    assert grown is not None and grown.memory == 8 * GiB
    assert grown.cores == b.cores
    # Stated disk and wall time are never grown either.
    req2 = Resources(disk="1GiB", wall_time=60)
    c = p.first_allocation("a", req2)
    assert p.retry_allocation("a", c, "disk", GiB, requested=req2) is None
    assert p.retry_allocation("a", c, "wall_time", 60, requested=req2) is None
    assert p.retry_allocation("a", c, "disk", GiB) is None


def test_retry_grows_to_the_node_then_stops() -> None:
    p = Planner(NODE)
    p.observe("a", obs(100))
    a: Resources | None = p.first_allocation("a", None)
    seen = []
    while a is not None:
        seen.append(a.memory)
        a = p.retry_allocation("a", a, "memory", a.memory or 0)
    # 160 MiB, then doubling: 320, 640, 1280, 2560, 5120 MiB; doubling again would be
    # the whole 8 GiB node, so 1.25 × 5120 = 6400 MiB first (above ¾ of it), then the node.
    assert seen == [m * MiB for m in (160, 320, 640, 1280, 2560, 5120, 6400, 8192)]
    with pytest.raises(InvalidSpec, match="unknown resource 'gpus'"):
        p.retry_allocation("a", Resources(memory=MiB), "gpus", 1)
    # Unstated wall time is unlimited: nothing to grow.
    assert p.retry_allocation("a", Resources(memory=GiB), "wall_time", 10.0) is None


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_no_strategy_exceeds_the_node(name: str) -> None:
    small = Resources(cores=4, memory=1 * GiB, disk=2 * GiB)
    p = Planner(small, strategy=name)
    assert p.first_allocation("a", None).memory <= small.memory  # type: ignore[operator]
    # Peaks far beyond the node (measured elsewhere), with input sizes.
    for k in range(1, 12):
        p.observe("a", obs(900 * k, input_size=k * GiB))
    p.observe("a", Observation(5 * GiB, 1.0, 1.0, 50 * GiB, 5 * GiB, "disk", None))
    for size in (None, GiB, 100 * GiB):
        a: Resources | None = p.first_allocation("a", None, size)
        assert a is not None
        assert a.memory is not None and a.memory <= small.memory  # type: ignore[operator]
        assert a.disk is None or a.disk <= small.disk  # type: ignore[operator]
        steps = 0
        while a is not None:
            assert a.memory <= small.memory  # type: ignore[operator]
            a = p.retry_allocation("a", a, "memory", a.memory or 0)
            steps += 1
        assert steps <= 8


def test_per_category_strategies_and_errors() -> None:
    p = Planner(NODE, per_category={"big": "fixed", "sized": "size-aware"})
    p.observe("big", obs(100))
    p.observe("small", obs(100))
    assert p.first_allocation("big", None).memory == 4 * GiB  # fixed: fair share
    assert p.first_allocation("small", None).memory == 160 * MiB  # default: learned
    assert p.describe("sized")["strategy"] == "size-aware"
    with pytest.raises(InvalidSpec, match=r"'nope' does not exist; choose one of: fixed, learned"):
        Planner(NODE, strategy="nope")
    with pytest.raises(InvalidSpec, match="states no memory"):
        Planner(Resources(cores=2))


def test_describe() -> None:
    p = Planner(NODE, strategy="learned")
    for peak in (100, 200, 300, 400):
        p.observe("a", obs(peak))
    p.observe("a", obs(500, exhausted="memory", allocated_memory=500 * MiB))
    d = p.describe("a")
    assert d["count"] == 5
    assert d["completed"] == 4
    assert d["exhausted"] == {"memory": 1}
    assert d["peak_memory"]["min"] == 100 * MiB
    assert d["peak_memory"]["max"] == 400 * MiB
    assert d["peak_memory"]["median"] == 250 * MiB
    # 400 × 1.25 = 500 MiB -> 512; but the unexplained exhaustion at 500 MiB gives
    # a floor of 1.25 × 500 = 625 MiB -> 640 MiB.
    assert d["first_allocation"]["memory"] == 640 * MiB
    assert d["model"]["exhausted_floor"] == 625 * MiB
    empty = p.describe("never-seen")
    assert empty["count"] == 0 and empty["peak_memory"] is None
    assert empty["first_allocation"]["memory"] == 4 * GiB


def test_size_aware_through_the_planner_is_not_cached_per_category() -> None:
    p = Planner(NODE, strategy="size-aware")
    for k in range(1, 11):
        p.observe("a", obs(50 + 2 * 10 * k, input_size=10 * k * MiB))  # exact: 50 MiB + 2·size
    small = p.first_allocation("a", None, 10 * MiB).memory
    large = p.first_allocation("a", None, 1000 * MiB).memory
    assert small is not None and large is not None
    assert 70 * MiB <= small <= 96 * MiB  # 50 + 20 = 70 MiB, exact fit: grain only
    assert 2050 * MiB <= large <= 2080 * MiB  # 50 + 2000 = 2050 MiB
    model = p.describe("a")["model"]["memory_model"]
    assert model["b"] == pytest.approx(2.0)


def test_first_allocation_is_cheap() -> None:
    """The docstring's number: ~0.2-0.6 µs cached; asserted loosely (10× the 10 µs target)."""
    p = Planner(NODE, strategy="size-aware")
    for k in range(1, 200):
        p.observe("a", obs(50 + 2 * k, input_size=k * MiB))
    samples = []
    for size in (None, 100 * MiB):
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(2000):
                p.first_allocation("a", None, size)
            samples.append((time.perf_counter() - t0) / 2000)
    assert statistics.median(samples) < 100e-6


def _report(task_id: int, category: str, peak: int, **kw: Any) -> TaskReport:
    kw.setdefault("allocation", Resources(cores=1.0, memory=4 * GiB))
    return TaskReport(
        task_id=task_id,
        category=category,
        peak_memory=peak,
        cpu_time=0.5,
        wall_time=1.0,
        cores=0.5,
        disk=0,
        max_processes=1,
        attempts=1,
        exit_status=0,
        host="test",
        measure_method=MeasureMethod.CGROUP_V1,
        **kw,
    )


def test_history_carries_across_runs(tmp_path: Any) -> None:
    """A real SQLite history: yesterday's run sizes today's first task."""
    path = tmp_path / "history.sqlite"
    with History(path) as h:
        run = h.start_run(label="yesterday", capacity=NODE)
        h.record(run, [_report(i, "align", (100 + 10 * i) * MiB) for i in range(5)])
        h.record(
            run,
            [
                _report(
                    9,
                    "align",
                    300 * MiB,
                    outcome=Outcome.EXHAUSTED,
                    exhausted="memory",
                    allocation=Resources(memory=150 * MiB),
                )
            ],
        )
        h.finish_run(run)
    with History(path) as h:
        p = Planner(NODE, history=h)
        # Completed peaks 100..140 MiB (n = 5): 140 × 1.1 = 154 -> 160 MiB, but the
        # task that ran out at 150 MiB (>= 140) sets a floor of 1.25 × 150 = 187.5 -> 192 MiB.
        assert p.first_allocation("align", None).memory == 192 * MiB
        assert p.describe("align")["count"] == 6
        assert p.first_allocation("new", None).memory == 4 * GiB


class Greedy(Learned):
    """A misbehaving strategy: every retry asks for 100 GiB."""

    name = "greedy"

    def retry_allocation(
        self,
        state: CategoryState,
        previous: Resources,
        resource: str,
        used: float,
        node: Resources,
    ) -> Resources | None:
        return Resources(cores=previous.cores, memory=100 * GiB, disk=100 * GiB)


def test_planner_caps_a_strategy_that_asks_too_much() -> None:
    p = Planner(NODE, strategy=Greedy())
    grown = p.retry_allocation("a", Resources(cores=1.0, memory=GiB), "memory", GiB)
    assert grown is not None and grown.memory == 8 * GiB
    assert p.retry_allocation("a", Resources(cores=1.0, memory=8 * GiB), "memory", GiB) is None


def test_predicted_wall_time_none_then_mean_then_line_of_input_size() -> None:
    p = Planner(NODE, strategy="learned")  # the prediction does not depend on the strategy
    assert p.predicted_wall_time("w", 10**8) is None
    p.observe("w", Observation(peak_memory=MiB, wall_time=2.0, cores=1.0, disk=0))
    p.observe("w", Observation(peak_memory=MiB, wall_time=4.0, cores=1.0, disk=0))
    assert p.predicted_wall_time("w", 10**8) == pytest.approx(3.0)  # mean: no sizes yet
    # wall = 1 s + 2 s per GB, with sizes: the line predicts, also beyond what was seen.
    p2 = Planner(NODE)
    for gb in (0.1, 0.5, 1.0, 1.5, 2.0):
        p2.observe("w", Observation(peak_memory=MiB, wall_time=1.0 + 2.0 * gb, cores=1.0, disk=0,
                                    input_size=int(gb * 1e9)))
    assert p2.predicted_wall_time("w", int(4e9)) == pytest.approx(9.0)
    assert p2.predicted_wall_time("w", None) == pytest.approx(3.04)  # no size: the mean
    # An exhausted attempt does not count; a new completed one refreshes the model.
    p2.observe("w", Observation(peak_memory=MiB, wall_time=50.0, cores=1.0, disk=0,
                                exhausted="memory", input_size=int(1e9)))
    assert p2.predicted_wall_time("w", None) == pytest.approx(3.04)
    p2.observe("w", Observation(peak_memory=MiB, wall_time=9.0, cores=1.0, disk=0, input_size=int(4e9)))
    assert p2.predicted_wall_time("w", None) == pytest.approx((15.2 + 9.0) / 6)


def test_predicted_wall_time_ignores_a_line_that_explains_little() -> None:
    p = Planner(NODE)
    for i, w in enumerate([3.0, 1.0, 2.5, 0.8, 2.9, 1.1]):
        p.observe("s", Observation(peak_memory=MiB, wall_time=w, cores=1.0, disk=0,
                                   input_size=(i + 1) * 10**6))
    assert p.predicted_wall_time("s", 10**9) == pytest.approx(statistics.fmean([3.0, 1.0, 2.5, 0.8, 2.9, 1.1]))


def test_predicted_wall_time_follows_the_window_through_trims() -> None:
    """The running totals behind the wall-time model are rebuilt when the window is trimmed."""
    p = Planner(NODE, strategy="learned", window=30)
    for k in range(200):
        # Wall time grows with k: a mean that kept trimmed observations would lag behind.
        # (Fewer than RECOMPUTE_ALWAYS_BELOW observations: every one refreshes.)
        p.observe("a", Observation(peak_memory=100 * MiB, wall_time=float(k), cores=1.0, disk=0))
        kept = p.state("a").observations
        assert len(kept) <= 60
        assert p.predicted_wall_time("a") == statistics.fmean(o.wall_time for o in kept)
    assert p.predicted_wall_time("a") > 199 - 60
