"""Tests of the sizing strategies against allocations computed by hand.

Every expected number below is worked out in the comment beside it, from the
formulas in ``docs/sizing.md``; none is read back from the code under test.
"""

from __future__ import annotations

import random

import pytest

from loadmaster.errors import InvalidSpec
from loadmaster.plan import strategies as st
from loadmaster.plan.strategy import STRATEGIES, CategoryState, Observation
from loadmaster.spec import Resources

MiB = 1024 * 1024
GiB = 1024 * MiB

# A node of 2 cores and 8 GiB: the fair share of a 1-core task is 4 GiB.
NODE = Resources(cores=2, memory=8 * GiB, disk=100 * GiB)


def obs(
    peak_mib: float,
    *,
    wall: float = 1.0,
    disk_mib: float = 0,
    exhausted: str | None = None,
    alloc_mib: float | None = None,
    size: int | None = None,
) -> Observation:
    """One observation with sizes in MiB."""
    return Observation(
        peak_memory=int(peak_mib * MiB),
        wall_time=wall,
        cores=1.0,
        disk=int(disk_mib * MiB),
        allocated_memory=None if alloc_mib is None else int(alloc_mib * MiB),
        exhausted=exhausted,
        input_size=size,
    )


def state(*observations: Observation) -> CategoryState:
    """A category holding ``observations``."""
    return CategoryState("cat", list(observations))


def first(name: str, s: CategoryState, requested: Resources | None = None, **kw: int) -> Resources:
    """The first allocation of strategy ``name``."""
    return STRATEGIES[name]().first_allocation(s, requested, NODE, **kw)


def test_every_strategy_is_registered() -> None:
    for name in ("learned", "fixed", "max-seen", "max-throughput", "min-waste", "size-aware"):
        assert name in STRATEGIES
        assert STRATEGIES[name]().name == name


def test_round_up_and_margins() -> None:
    assert st.round_up(0) == 0
    assert st.round_up(1) == 16 * MiB
    assert st.round_up(16 * MiB) == 16 * MiB
    assert st.round_up(16 * MiB + 1) == 32 * MiB
    assert st.round_up(150.5 * MiB) == 160 * MiB
    assert [st.margin_for(n) for n in (1, 2, 4, 5, 100)] == [0.5, 0.25, 0.25, 0.1, 0.1]


# ---------------------------------------------------------------- learned


def test_learned_unmeasured_gets_the_fair_share_per_core() -> None:
    a = first("learned", state())
    # 8 GiB / 2 cores × 1 core = 4 GiB; disk unlimited until measured.
    assert a == Resources(cores=1.0, memory=4 * GiB, disk=None, gpus=0, wall_time=None)
    # A 2-core task gets 8 GiB / 2 × 2 = the whole 8 GiB.
    assert first("learned", state(), Resources(cores=2)).memory == 8 * GiB


def test_fair_share_floor_and_node_cap() -> None:
    many_cores = Resources(cores=64, memory=8 * GiB)
    # 8 GiB / 64 = 128 MiB, raised to the 256 MiB floor.
    assert st.fair_share(many_cores, 1.0) == 256 * MiB
    tiny = Resources(cores=1, memory=200 * MiB)
    # The floor never exceeds the node: 200 MiB.
    assert st.fair_share(tiny, 1.0) == 200 * MiB
    odd = Resources(cores=3, memory=1000 * MiB)
    # 1000 / 3 = 333.3 MiB, rounded *down* to 16 MiB: 320 MiB.
    assert st.fair_share(odd, 1.0) == 320 * MiB


def test_learned_margin_shrinks_with_measurements() -> None:
    # n = 1: 100 MiB × 1.5 = 150 MiB -> 160 MiB.
    assert first("learned", state(obs(100))).memory == 160 * MiB
    # n = 3: max 120 MiB × 1.25 = 150 MiB -> 160 MiB.
    assert first("learned", state(obs(100), obs(120), obs(90))).memory == 160 * MiB
    # n = 5: max 200 MiB × 1.1 = 220 MiB -> 224 MiB.
    five = state(*(obs(p) for p in (100, 200, 150, 180, 190)))
    assert first("learned", five).memory == 224 * MiB
    # Tiny tasks: 1 MiB × 1.1 -> 16 MiB, raised to the 32 MiB minimum.
    assert first("learned", state(*(obs(1) for _ in range(5)))).memory == 32 * MiB


def test_learned_exhaustion_raises_the_floor_unless_explained() -> None:
    # Completed 100 MiB (-> 160 MiB), but an attempt ran out at 160 MiB and no
    # completed peak explains it: at least 1.25 × 160 = 200 -> 208 MiB.
    s = state(obs(100), obs(160, exhausted="memory", alloc_mib=160))
    assert first("learned", s).memory == 208 * MiB
    # Completed 100 and 300 MiB (n = 2: 300 × 1.25 = 375 -> 384 MiB); the exhaustion
    # at 160 MiB is below the 300 MiB peak (its retry is that peak): no floor.
    s = state(obs(100), obs(160, exhausted="memory", alloc_mib=160), obs(300))
    assert first("learned", s).memory == 384 * MiB
    # Only an exhaustion, at 6 GiB: max(fair share 4 GiB, 1.25 × 6 GiB = 7.5 GiB).
    s = state(obs(6 * 1024, exhausted="memory", alloc_mib=6 * 1024))
    assert first("learned", s).memory == 7680 * MiB


def test_learned_forgets_old_or_hopeless_exhaustions() -> None:
    # An exhaustion that already had the whole 8 GiB node: no allocation helps that
    # task, so it does not make the others take the node. n = 1: 100 -> 160 MiB.
    s = state(obs(100), obs(8192, exhausted="memory", alloc_mib=8192))
    assert first("learned", s).memory == 160 * MiB
    # An exhaustion at 1 GiB followed by 9 completed measurements is still recent:
    # floor 1.25 GiB. After the 10th it is older than the newest 10: 100 × 1.1 -> 112 MiB.
    s = state(obs(100), obs(1024, exhausted="memory", alloc_mib=1024))
    for _ in range(9):
        s.add(obs(100))
    assert first("learned", s).memory == 1280 * MiB
    s.add(obs(100))
    assert first("learned", s).memory == 112 * MiB


def test_learned_never_exceeds_the_node() -> None:
    # 7 GiB × 1.5 = 10.5 GiB -> the node's 8 GiB.
    assert first("learned", state(obs(7 * 1024))).memory == 8 * GiB


def test_learned_disk() -> None:
    # Measured 10 MiB written: max(1 GiB, 2 × 10 MiB) = 1 GiB.
    assert first("learned", state(obs(100, disk_mib=10))).disk == GiB
    # 700 MiB written: 2 × 700 = 1400 MiB -> 1408 MiB.
    assert first("learned", state(obs(100, disk_mib=700))).disk == 1408 * MiB
    # A disk exhaustion at 2 GiB (no completed attempt wrote as much): 1.25 × 2 GiB.
    s = state(obs(100, disk_mib=5), obs(100, disk_mib=2048, exhausted="disk"))
    assert first("learned", s).disk == 2560 * MiB


def test_user_stated_fields_are_kept() -> None:
    req = Resources(cores=0.5, memory="100MiB", wall_time=60, gpus=1, disk="5GiB")
    for name in STRATEGIES:
        a = first(name, state(obs(300), obs(400)), req)
        assert a == Resources(cores=0.5, memory=100 * MiB, disk=5 * GiB, gpus=1, wall_time=60)
    # Partly stated: only cores; memory still sized (fair share of 0.5 core = 2 GiB).
    assert first("learned", state(), Resources(cores=0.5)).memory == 2 * GiB


# ---------------------------------------------------------------- retry (grow)


def test_retry_doubles_or_covers_what_was_used() -> None:
    prev = Resources(cores=1.0, memory=160 * MiB, gpus=0)
    # max(2 × 160, 1.25 × 150) = 320 MiB.
    assert st.grow(prev, "memory", 150 * MiB, NODE) == Resources(
        cores=1.0, memory=320 * MiB, gpus=0
    )
    # Used 300 MiB before being stopped: max(2 × 160, 1.25 × 300 = 375) -> 384 MiB.
    assert st.grow(prev, "memory", 300 * MiB, NODE).memory == 384 * MiB  # type: ignore[union-attr]
    # 6 GiB doubles to 12 GiB, capped at 8 GiB; at 8 GiB nothing bigger fits.
    assert st.grow(Resources(memory=6 * GiB), "memory", 6 * GiB, NODE).memory == 8 * GiB  # type: ignore[union-attr]
    assert st.grow(Resources(memory=8 * GiB), "memory", 8 * GiB, NODE) is None
    # Near the node, one smaller step before the whole node (¾ of 8 GiB, or 1.25 × used):
    assert st.grow(Resources(memory=5 * GiB), "memory", 5 * GiB, NODE).memory == 6400 * MiB  # type: ignore[union-attr]
    assert st.grow(Resources(memory=4 * GiB), "memory", 3 * GiB, NODE).memory == 6 * GiB  # type: ignore[union-attr]
    # Disk: unlimited cannot grow; 1 GiB -> 2 GiB.
    assert st.grow(Resources(memory=GiB), "disk", 5 * GiB, NODE) is None
    assert st.grow(Resources(disk=GiB), "disk", GiB, NODE) == Resources(disk=2 * GiB)
    # Wall time: 60 s -> 120 s.
    assert st.grow(Resources(wall_time=60), "wall_time", 60, NODE) == Resources(wall_time=120)
    with pytest.raises(InvalidSpec, match="unknown resource 'cpu'"):
        st.grow(prev, "cpu", 1, NODE)


@pytest.mark.parametrize("name", ["learned", "fixed", "max-seen", "size-aware"])
def test_retry_chain_reaches_the_node_and_stops(name: str) -> None:
    strategy = STRATEGIES[name]()
    s = state(obs(100))
    alloc: Resources | None = strategy.first_allocation(s, None, NODE)
    sizes = []
    while alloc is not None:
        assert alloc.memory is not None and alloc.memory <= NODE.memory  # type: ignore[operator]
        sizes.append(alloc.memory)
        alloc = strategy.retry_allocation(s, alloc, "memory", alloc.memory, NODE)
    assert sizes == sorted(set(sizes))  # strictly growing
    assert sizes[-1] == 8 * GiB


# ---------------------------------------------------------------- fixed and max-seen


def test_fixed_ignores_measurements() -> None:
    assert first("fixed", state(obs(100), obs(120))).memory == 4 * GiB
    assert first("fixed", state(obs(100))).disk is None


def test_max_seen() -> None:
    assert first("max-seen", state()).memory == 4 * GiB  # unmeasured: fair share
    # 200 MiB + 16/3 MiB = 205.3 MiB -> 208 MiB.
    assert first("max-seen", state(obs(100), obs(200))).memory == 208 * MiB
    # An exhausted attempt's 300 MiB peak counts: 305.3 MiB -> 320 MiB.
    s = state(obs(100), obs(300, exhausted="memory", alloc_mib=300))
    assert first("max-seen", s).memory == 320 * MiB


# ---------------------------------------------------------------- Tovar et al.

# The worked example: six completed tasks, 1 s each.
#   peaks 250, 255, 256 MiB -> bucket 256 MiB (3 tasks)
#   peaks 500, 512 MiB      -> bucket 512 MiB (2 tasks)
#   peak 1024 MiB           -> bucket 1024 MiB (1 task) = a_m
# In units of u = 256 MiB: a ∈ {1, 2, 4}, N = 6, τ = 6 s / 6 = 1,
#   τ_>(1) = (2 + 1) / 6 = 0.5, τ_>(2) = 1/6, τ_>(4) = 0.
# min-waste  E(a) = a·τ + a_m·τ_>(a):
#   E(1) = 1 + 4·0.5 = 3, E(2) = 2 + 4/6 = 2.667, E(4) = 4            -> 512 MiB
# max-throughput T(a) = (P(r ≤ a)·a_m/a + P(r > a)) / (τ + τ_>(a)):
#   T(1) = (3/6·4 + 3/6) / 1.5 = 5/3 = 1.667,
#   T(2) = (5/6·2 + 1/6) / (7/6) = 11/7 = 1.571, T(4) = 1/1 = 1    -> 256 MiB
WORKED = (250, 255, 256, 500, 512, 1024)


def worked(times: tuple[float, ...] = (1, 1, 1, 1, 1, 1)) -> CategoryState:
    """The worked example with the given wall times."""
    return state(*(obs(p, wall=t) for p, t in zip(WORKED, times, strict=True)))


def test_tovar_histogram_and_scores_of_the_worked_example() -> None:
    s = worked()
    h = st.histogram(s)
    assert h.values == (256 * MiB, 512 * MiB, 1024 * MiB)
    assert h.counts == (3, 2, 1)
    assert h.times == (3.0, 2.0, 1.0)
    u = 256 * MiB
    waste = st.tovar_scores(h, "waste")
    assert waste == pytest.approx([3 * u, 8 / 3 * u, 4 * u])
    assert st.tovar_scores(h, "throughput") == pytest.approx([5 / 3, 11 / 7, 1.0])


def test_min_waste_and_max_throughput_choose_differently() -> None:
    assert first("min-waste", worked()).memory == 512 * MiB
    assert first("max-throughput", worked()).memory == 256 * MiB


def test_min_waste_weights_by_time() -> None:
    # The 1024 MiB task now takes 30 s (times 1,1,1,1,1,30): τ = 35/6,
    # τ_>(1) = 32/6, τ_>(2) = 30/6 = 5, τ_>(4) = 0, so in units u:
    # E(1) = 35/6 + 4·32/6 = 27.17, E(2) = 70/6 + 20 = 31.67, E(4) = 140/6 = 23.33:
    # failing a long task is so costly that every task gets a_m = 1024 MiB.
    assert first("min-waste", worked((1, 1, 1, 1, 1, 30))).memory == 1024 * MiB


def test_tovar_unmeasured_and_retry() -> None:
    assert first("min-waste", state()).memory == 4 * GiB  # as learned: fair share
    strategy = STRATEGIES["min-waste"]()
    s = worked()
    a = strategy.first_allocation(s, None, NODE)
    # Retry at the largest peak seen (1024 MiB), then the whole node, then nothing.
    a2 = strategy.retry_allocation(s, a, "memory", 512 * MiB, NODE)
    assert a2 is not None and a2.memory == 1024 * MiB
    a3 = strategy.retry_allocation(s, a2, "memory", 1024 * MiB, NODE)
    assert a3 is not None and a3.memory == 8 * GiB
    assert strategy.retry_allocation(s, a3, "memory", 8 * GiB, NODE) is None
    # Disk grows as everywhere else.
    d = strategy.retry_allocation(s, Resources(disk=GiB), "disk", GiB, NODE)
    assert d == Resources(disk=2 * GiB)


def test_tovar_ignores_exhausted_attempts_in_the_histogram() -> None:
    s = state(*(obs(p) for p in WORKED), obs(3000, exhausted="memory", alloc_mib=3000))
    assert st.histogram(s).counts == (3, 2, 1)
    assert first("min-waste", s).memory == 512 * MiB


# ---------------------------------------------------------------- size-aware


def exact_line_state() -> CategoryState:
    """Peak = 100 MiB + 2 × size at sizes 1..6 × 100 MiB, residuals ±8 MiB.

    The residuals e = 8 MiB × (1, −1, 0, 0, −1, 1) sum to 0 and are orthogonal to
    the sizes (1 − 2 − 5 + 6 = 0), so least squares recovers a and b exactly and
    the residuals are e: max|e| = 8 MiB, SSE = 4·64 MiB², se = sqrt(SSE / 4) = 8 MiB,
    x̄ = 3.5 (× 100 MiB), Sxx = 17.5 (× (100 MiB)²).
    """
    noise = (8, -8, 0, 0, -8, 8)
    return state(
        *(
            obs(100 + 2 * 100 * k + e, size=100 * k * MiB)
            for k, e in zip(range(1, 7), noise, strict=True)
        )
    )


def test_size_aware_fits_the_exact_line() -> None:
    s = exact_line_state()
    strategy = st.SizeAware()
    fit, _wall = strategy.fits(s)
    assert isinstance(fit, st.LineFit)
    assert fit.a == pytest.approx(100 * MiB)
    assert fit.b == pytest.approx(2.0)
    assert fit.max_abs_residual == pytest.approx(8 * MiB)
    assert fit.se == pytest.approx(8 * MiB)
    assert fit.r2 > 0.999
    # At the mean size, 350 MiB: prediction 100 + 700 = 800 MiB; margin
    # max(1.25 × 8, 3 × 8 × sqrt(1 + 1/6)) = 25.92 MiB; 825.92 MiB -> 832 MiB.
    assert first("size-aware", s, input_size=350 * MiB).memory == 832 * MiB
    # Extrapolated to 2000 MiB: 100 + 4000 = 4100 MiB; margin
    # 3 × 8 × sqrt(1 + 1/6 + (20 − 3.5)² / 17.5) = 24 × 4.0895 = 98.15 MiB;
    # 4198.15 MiB -> 4208 MiB: the margin grows away from the measured sizes.
    assert first("size-aware", s, input_size=2000 * MiB).memory == 4208 * MiB
    # Beyond the node: capped.
    assert first("size-aware", s, input_size=10 * GiB).memory == 8 * GiB


def test_size_aware_recovers_a_noisy_linear_model() -> None:
    rng = random.Random(7)
    sigma = 4 * MiB
    points = []
    for _ in range(40):
        size = rng.randint(10, 500) * MiB
        points.append(obs((200 * MiB + 1.5 * size + rng.gauss(0, sigma)) / MiB, size=size))
    s = state(*points)
    fit = st.SizeAware().fits(s)[0]
    assert isinstance(fit, st.LineFit)
    assert abs(fit.a - 200 * MiB) < 5 * MiB
    assert abs(fit.b - 1.5) < 0.02
    assert fit.r2 > 0.99
    for size_mib in (50, 250, 450):
        true_mean = 200 * MiB + 1.5 * size_mib * MiB
        memory = first("size-aware", s, input_size=size_mib * MiB).memory
        assert memory is not None
        # Covers the true mean plus 3 σ, and wastes less than 40 MiB over it.
        assert true_mean + 3 * sigma <= memory <= true_mean + 40 * MiB


def test_size_aware_falls_back_to_learned() -> None:
    learned = st.Learned()
    # Memory unrelated to size: R² is poor.
    rng = random.Random(3)
    s = state(*(obs(rng.uniform(100, 200), size=rng.randint(1, 1000) * MiB) for _ in range(30)))
    fit = st.SizeAware().fits(s)[0]
    assert isinstance(fit, str) and fit.startswith("poor fit")
    assert first("size-aware", s, input_size=500 * MiB) == learned.first_allocation(s, None, NODE)
    # Fewer than five points with a size.
    few = state(*(obs(100 + k, size=k * MiB) for k in range(1, 5)))
    assert isinstance(st.SizeAware().fits(few)[0], str)
    # learned over peaks 101..104 MiB (n = 4): 104 × 1.25 = 130 MiB -> 144 MiB.
    assert first("size-aware", few, input_size=3 * MiB).memory == 144 * MiB
    # The task has no input size: learned, even with a perfect line.
    line = exact_line_state()
    assert first("size-aware", line) == learned.first_allocation(line, None, NODE)
    # Every measurement has the same size: no line.
    same = state(*(obs(100 + k, size=MiB) for k in range(10)))
    fit = st.SizeAware().fits(same)[0]
    assert fit == "every measurement has the same input size"


def test_size_aware_describe_exposes_the_model() -> None:
    model = st.SizeAware().describe(exact_line_state(), NODE)
    memory = model["memory_model"]
    assert memory["a"] == pytest.approx(100 * MiB)
    assert memory["b"] == pytest.approx(2.0)
    assert memory["r2"] > 0.999
    assert memory["residual_margin"] == pytest.approx(1.25 * 8 * MiB)
    assert model["memory_fallback"] is None
    # Wall time is 1 s for every point: a flat line (b = 0), shown, never imposed.
    assert model["wall_time_model"]["b"] == pytest.approx(0.0)
    assert first("size-aware", exact_line_state(), input_size=MiB).wall_time is None


def test_derived_values_are_cached_until_observations_change() -> None:
    s = state(obs(100))
    assert first("learned", s).memory == 160 * MiB
    assert "summary" in s.cache
    s.add(obs(200))  # n = 2: 200 × 1.25 = 250 -> 256 MiB
    assert "summary" not in s.cache
    assert first("learned", s).memory == 256 * MiB


# ── running totals: the same answers as a full scan ──────────────────────────


def scanned_summary(observations: list[Observation]) -> st.Summary:
    """The summary by a full scan in order: the definition the running totals must match."""
    completed = [o for o in observations if o.exhausted is None]
    max_peak = max((o.peak_memory for o in completed), default=0)
    max_disk = max((o.disk for o in completed), default=0)
    recent = observations[-st.EXHAUSTION_WINDOW :]
    return st.Summary(
        len(completed),
        max_peak,
        max((o.peak_memory for o in observations), default=0),
        max_disk,
        tuple(
            a
            for a in (o.allocated_memory or o.peak_memory for o in recent if o.exhausted == "memory")
            if a >= max_peak
        ),
        tuple(o.disk for o in recent if o.exhausted == "disk" and o.disk >= max_disk),
    )


def random_observation(rng: random.Random) -> Observation:
    """A completed or exhausted observation with random sizes (some with an input size)."""
    size = rng.choice([None, rng.randrange(1, 1000) * MiB])
    peak = 50 + (size or 0) / MiB * 1.7 + rng.uniform(0, 40)
    kind = rng.choice([None] * 6 + ["memory", "disk", "wall_time"])
    return obs(
        peak,
        wall=rng.uniform(0.001, 5.0),
        disk_mib=rng.uniform(0, 3000),
        exhausted=kind,
        alloc_mib=rng.choice([None, peak * 0.9]),
        size=size,
    )


def test_running_totals_match_a_full_scan_through_appends_and_trims() -> None:
    rng = random.Random(7)
    s = state()
    for step in range(600):
        s.observations.append(random_observation(rng))  # appended without telling anyone
        if step % 97 == 96:
            s.trim(40)  # the absorbed part changes: the totals are rebuilt
        if step % 5 == 0:
            st.forget_derived(s)  # what the planner does on a refresh
            fresh = CategoryState("cat", list(s.observations))  # nothing cached: a full build
            assert st.summarize(s) == scanned_summary(s.observations)
            assert st.histogram(s) == st.histogram(fresh)
            assert st.SizeAware().fits(s) == st.SizeAware().fits(fresh)
            for name in ("learned", "max-seen", "max-throughput", "min-waste", "size-aware"):
                for size in (None, 300 * MiB):
                    assert first(name, s, input_size=size) == first(name, fresh, input_size=size), name


def test_running_totals_notice_a_list_changed_in_place() -> None:
    s = state(obs(100), obs(300), obs(200))
    assert st.summarize(s).max_peak == 300 * MiB
    # Replace the list's contents behind the cache's back (same length, same list):
    # the totals must not trust what they absorbed before.
    s.observations[:] = [obs(120), obs(110), obs(130)]
    st.forget_derived(s)
    assert st.summarize(s) == scanned_summary(s.observations)
    assert st.summarize(s).max_peak == 130 * MiB


def test_size_aware_fit_matches_memory_size_fit() -> None:
    rng = random.Random(3)
    s = state(*(random_observation(rng) for _ in range(200)))
    line, why_not = st.memory_size_fit(s.observations)
    memory_fit = st.SizeAware().fits(s)[0]
    assert memory_fit == (why_not if why_not or line is None else line)


def test_forget_derived_keeps_only_running_totals() -> None:
    s = state(obs(100), obs(200))
    first("max-throughput", s)
    first("size-aware", s, input_size=MiB)
    assert {"summary", "histogram"} <= set(s.cache)
    st.forget_derived(s)
    assert s.cache and all(k.startswith(st.RUNNING_PREFIX) for k in s.cache)
    s.add(obs(50))  # CategoryState.add clears everything
    assert not s.cache
