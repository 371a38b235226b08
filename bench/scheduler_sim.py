"""Scheduler-only simulation: placements per second across 1 to 10,000 nodes (issue 13, item 3).

Runs the scheduler (``schedule/scheduler.py``) alone, in this process, with a
simulated clock: no processes, no backend. N nodes of mixed sizes, 100,000
tasks of mixed categories (sizes, cores, GPUs, durations, seeded); every
task is queued at t=0, then the loop is the engine's: ``pick`` what fits,
"run" it until its end time, ``release`` at the earliest end, ``pick`` again
(one pick per task end: the engine's worst case, it never batches ends).
Placements/s = tasks placed / wall time of that loop (release and the
simulation's own bookkeeping included), and per CPU second of this process
(``time.process_time``: what counts on a loaded machine). Printed per order
and N, then per order the CPU cost per placement against the smallest N > 1:
the growth with nodes, beside the log-linear bound (``log2 N`` over
``log2`` of that N).

Correctness is asserted on the way, independently of the scheduler's own
counters: the simulation keeps its own ledger per node and asserts at every
placement that no node's allocated cores, memory or GPUs pass its capacity,
that no GPU id is given twice, that the scheduler's free counters are never
negative; and at the end that every node is whole again.

Modes:
    python bench/scheduler_sim.py                  # N = 1, 10, 100, 1000, 10000; both orders
    python bench/scheduler_sim.py --nodes 1000 --tasks 100000 --order fifo
    python bench/scheduler_sim.py --micro          # single-node pick cost, this tree (legacy and new API)
    python bench/scheduler_sim.py --compare /tmp/lm-sched-parent --runs 21
        # the single-node micro-benchmark alternately on this tree's Scheduler and
        # another tree's (the parent commit's worktree), imported side by side in
        # one process, the order flipping every run; medians

Writes ``bench/results/scheduler_sim.json`` (or ``scheduler_micro.json``)
and prints the ratio to the target: 20,000 placements/s at 1,000 nodes.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET = 20_000.0
GiB = 1 << 30
MiB = 1 << 20

# (name, cores, memory GiB, gpus, weight)
NODE_TYPES = [
    ("small", 8, 32, 0, 4),
    ("medium", 32, 128, 0, 3),
    ("big", 64, 512, 0, 1),
    ("gpu", 16, 64, 4, 1),
]
ALL_IN_ONE = ("one", 64, 512, 4, 1)  # N = 1: one node that holds every category

# (category, cores, memory MiB, gpus, (min s, max s), weight, longest-first key)
CATEGORIES = [
    ("tiny", 1, 256, 0, (0.5, 2.0), 40),
    ("small", 1, 2048, 0, (5.0, 30.0), 25),
    ("medium", 4, 8192, 0, (30.0, 120.0), 15),
    ("large", 8, 48 * 1024, 0, (60.0, 300.0), 8),
    ("gpu", 4, 16 * 1024, 1, (30.0, 100.0), 7),
    ("huge", 16, 200 * 1024, 0, (100.0, 400.0), 2),
    ("sized", 2, 1024, 0, (10.0, 60.0), 3),  # memory grows with the input size
]


def make_nodes(n: int, rng: random.Random) -> list[tuple[str, int, int, int]]:
    """Return ``n`` (name, cores, memory bytes, gpus), of mixed sizes (seeded)."""
    if n == 1:
        _, c, m, g, _ = ALL_IN_ONE
        return [("n0", c, m * GiB, g)]
    kinds = [t for t in NODE_TYPES for _ in range(t[4])]
    out = []
    for i in range(n):
        name, c, m, g, _ = NODE_TYPES[i] if i < len(NODE_TYPES) else rng.choice(kinds)
        out.append((f"{name}-{i}", c, m * GiB, g))
    return out


def make_tasks(n: int, rng: random.Random, TaskSpec: Any, TaskKind: Any) -> list[Any]:
    """Return ``n`` tasks of mixed categories, each with its duration in ``extra``."""
    cats = [c for c in CATEGORIES for _ in range(c[5])]
    tasks = []
    for i in range(n):
        name, _c, _m, _g, (lo, hi), _w = rng.choice(cats)
        size = rng.randrange(1, 64) * 64 * MiB if name == "sized" else None
        t = TaskSpec(task_id=i + 1, kind=TaskKind.FUNCTION, category=name, requested=None,
                     payload=b"", input_size=size)
        t.extra["seconds"] = rng.uniform(lo, hi)
        tasks.append(t)
    return tasks


def allocator(Resources: Any) -> tuple[Any, Any]:
    """Return ``alloc_for(task, capacity)`` (cached per category and node size, as the planner
    caches) and the longest-first key (mean duration per category)."""
    table = {c[0]: c for c in CATEGORIES}
    cache: dict[Any, Any] = {}

    def alloc_for(task: Any, cap: Any) -> Any:
        size = task.input_size
        key = (task.category, size, id(cap))  # the capacities are the scheduler's, alive all along
        a = cache.get(key)
        if a is None:
            _, cores, mem, gpus, _d, _w = table[task.category]
            memory = mem * MiB + (size // 2 if size else 0)
            a = cache[key] = Resources(cores=float(min(cores, cap.cores)),
                                       memory=min(memory, cap.memory), gpus=gpus)
        return a

    means = {c[0]: sum(c[4]) / 2 for c in CATEGORIES}

    def priority(task: Any) -> float:
        return means[task.category]

    return alloc_for, priority


def simulate(n_nodes: int, n_tasks: int, order: str, seed: int) -> dict[str, Any]:
    """Run one simulation; return its numbers."""
    from loadmaster.schedule.scheduler import ClusterScheduler
    from loadmaster.spec import Resources, TaskKind, TaskSpec

    rng = random.Random(seed)
    nodes = make_nodes(n_nodes, rng)
    tasks = make_tasks(n_tasks, rng, TaskSpec, TaskKind)
    alloc_for, priority = allocator(Resources)
    s = ClusterScheduler(priority=priority if order == "longest-first" else None,
                         priority_by_category=True)
    caps: dict[str, tuple[float, int, int]] = {}
    for name, c, m, g in nodes:
        s.add_node(name, Resources(cores=c, memory=m, gpus=g))
        caps[name] = (float(c), m, g)
    used = {name: [0.0, 0, set()] for name in caps}  # the simulation's own ledger
    internal = s.pool.by_name
    for t in tasks:
        s.push(t)
    heap: list[tuple[float, int, Any]] = []
    now = 0.0
    placed = picks = 0
    max_running = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while s.queue or heap:
        out = s.pick(alloc_for)
        picks += 1
        for p in out:
            a = p.allocation
            u = used[p.node]
            cap_c, cap_m, cap_g = caps[p.node]
            u[0] += a.cores or 0.0
            u[1] += a.memory or 0
            ids = u[2]
            if len(p.gpu_ids) != (a.gpus or 0) or ids.intersection(p.gpu_ids):
                raise AssertionError(f"GPU ids {p.gpu_ids} on {p.node} for {a}, in use {ids}")
            ids.update(p.gpu_ids)
            if u[0] > cap_c + 1e-6 or u[1] > cap_m or len(ids) > cap_g:
                raise AssertionError(f"node {p.node} oversubscribed: {u} of {caps[p.node]}")
            node = internal[p.node]
            if node.free_cores < -1e-6 or node.free_memory < 0 or (node.free_disk or 0) < 0:
                raise AssertionError(f"node {p.node}: free counters negative: {node.view()}")
            heapq.heappush(heap, (now + p.task.extra["seconds"], p.task.task_id, p))
        placed += len(out)
        if len(heap) > max_running:
            max_running = len(heap)
        if not heap:
            raise AssertionError(f"stuck at t={now:.1f}: {len(s.queue)} waiting, nothing runs")
        now, _, p = heapq.heappop(heap)
        a = p.allocation
        u = used[p.node]
        u[0] -= a.cores or 0.0
        u[1] -= a.memory or 0
        u[2].difference_update(p.gpu_ids)
        s.release(p.node, a, p.gpu_ids)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if placed != n_tasks:
        raise AssertionError(f"placed {placed} of {n_tasks}")
    for v in s.nodes():
        c, m, g = caps[v.name]
        if abs(v.free_cores - c) > 1e-6 or v.free_memory != m or len(v.free_gpus) != g or v.running:
            raise AssertionError(f"node {v.name} not whole at the end: {v}")
    return {"nodes": n_nodes, "tasks": n_tasks, "order": order, "seed": seed,
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "picks": picks,
            "placements_per_s": round(placed / wall, 1),
            "placements_per_cpu_s": round(placed / cpu, 1) if cpu > 0 else None,
            "max_running": max_running,
            "makespan_sim_s": round(now, 1),
            "node_sizes": len({(c, m, g) for _, c, m, g in nodes})}


# ── the single-node micro-benchmark (legacy API: runs on the parent commit too) ──
def micro_one(rounds: int, Scheduler: Any = None) -> dict[str, float]:
    """Return µs per pick + release on one 2-core node, for three engine-like streams."""
    from loadmaster.spec import Resources, TaskKind, TaskSpec

    if Scheduler is None:
        from loadmaster.schedule.scheduler import Scheduler

    cap = Resources(cores=2, memory=4 * GiB)
    alloc = Resources(cores=1.0, memory=256 * MiB, gpus=0)

    def allocation(task: Any) -> Any:
        return alloc

    def priority(task: Any) -> float:
        return 1.0 if task.category == "a" else 2.0

    out: dict[str, float] = {}
    for label, kw, mixed in (("fifo", {}, False),
                             ("lpt-uniform", {"priority": priority, "priority_by_category": True}, False),
                             ("lpt-mixed", {"priority": priority, "priority_by_category": True}, True)):
        s = Scheduler(cap, **kw)
        n = 200
        for i in range(n):
            s.push(TaskSpec(task_id=i, kind=TaskKind.FUNCTION, category="b" if mixed and i % 2 else "a",
                            requested=None, payload=b""))
        running: list[Any] = []
        pick, release, push = s.pick, s.release, s.push
        t0 = time.perf_counter()
        for _ in range(rounds):
            for t, a, g in pick(allocation):
                running.append((t, a, g))
            t, a, g = running.pop(0)
            release(a, g)
            push(t)  # the queue stays n long
        out[label] = (time.perf_counter() - t0) / rounds * 1e6
    return out


def micro_new(rounds: int) -> dict[str, float]:
    """The same streams on ``ClusterScheduler`` with one node (the API the seam switches to)."""
    from loadmaster.schedule.scheduler import ClusterScheduler
    from loadmaster.spec import Resources, TaskKind, TaskSpec

    cap = Resources(cores=2, memory=4 * GiB)
    alloc = Resources(cores=1.0, memory=256 * MiB, gpus=0)

    def alloc_for(task: Any, capacity: Any) -> Any:
        return alloc

    def priority(task: Any) -> float:
        return 1.0 if task.category == "a" else 2.0

    out: dict[str, float] = {}
    for label, kw, mixed in (("fifo", {}, False),
                             ("lpt-uniform", {"priority": priority, "priority_by_category": True}, False),
                             ("lpt-mixed", {"priority": priority, "priority_by_category": True}, True)):
        s = ClusterScheduler(**kw)
        s.add_node("local", cap)
        for i in range(200):
            s.push(TaskSpec(task_id=i, kind=TaskKind.FUNCTION, category="b" if mixed and i % 2 else "a",
                            requested=None, payload=b""))
        running: list[Any] = []
        pick, release, push = s.pick, s.release, s.push
        t0 = time.perf_counter()
        for _ in range(rounds):
            running.extend(pick(alloc_for))
            p = running.pop(0)
            release(p.node, p.allocation, p.gpu_ids)
            push(p.task)
        out["new-" + label] = (time.perf_counter() - t0) / rounds * 1e6
    return out


def _git_head(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def load_other(other: Path) -> Any:
    """Import ``other``'s ``schedule/scheduler.py`` beside this tree's (as ``other_scheduler``)."""
    import importlib.util

    path = other / "src" / "loadmaster" / "schedule" / "scheduler.py"
    spec = importlib.util.spec_from_file_location("other_scheduler", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Scheduler


def compare(other: Path, runs: int, rounds: int) -> dict[str, Any]:
    """Run the single-node micro-benchmark on this tree's ``Scheduler`` and ``other``'s, in one
    process, alternately (the order flips every run), ``runs`` times each; medians."""
    from loadmaster.schedule.scheduler import Scheduler as This

    Other = load_other(other)
    mine = HERE.parent
    samples: dict[str, dict[str, list[float]]] = {"this": {}, "other": {}}
    for r in range(runs):
        pair = [("this", This), ("other", Other)]
        for which, cls in pair if r % 2 == 0 else pair[::-1]:
            for k, v in micro_one(rounds, cls).items():
                samples[which].setdefault(k, []).append(v)
    medians = {w: {k: statistics.median(v) for k, v in d.items()} for w, d in samples.items()}
    return {"this_tree": str(mine), "this_commit": _git_head(mine), "other_tree": str(other),
            "other_commit": _git_head(other), "runs": runs, "rounds": rounds,
            "us_per_pick_release_median": medians, "samples": samples,
            "ratio_this_over_other": {k: round(medians["this"][k] / medians["other"][k], 3)
                                      for k in medians["this"] if k in medians["other"]}}


def scaling_table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per order: CPU µs per placement at each N, against the smallest N > 1 (the growth with nodes).

    "Log-linear" means the cost per placement grows no faster than log N: the
    ratio of costs stays at or under the ratio of ``log2 N`` (``log bound``).
    """
    rows: list[dict[str, Any]] = []
    lines: list[str] = []
    for order in dict.fromkeys(r["order"] for r in runs):
        mine = sorted((r for r in runs if r["order"] == order and r["nodes"] > 1 and r["placements_per_cpu_s"]),
                      key=lambda r: r["nodes"])
        if not mine:
            continue
        ref = mine[0]
        ref_us = 1e6 / ref["placements_per_cpu_s"]
        lines.append(f"scaling, {order}: CPU µs per placement (and per wall s), against N={ref['nodes']}")
        for r in mine:
            us = 1e6 / r["placements_per_cpu_s"]
            bound = math.log2(r["nodes"]) / math.log2(ref["nodes"])
            row = {"order": order, "nodes": r["nodes"], "cpu_us_per_placement": round(us, 2),
                   "wall_us_per_placement": round(1e6 / r["placements_per_s"], 2),
                   "cost_ratio": round(us / ref_us, 3), "log_bound": round(bound, 3)}
            rows.append(row)
            lines.append(f"  N={r['nodes']:6d}  {us:6.1f} µs CPU  {row['wall_us_per_placement']:6.1f} µs wall"
                         f"  x{row['cost_ratio']:.2f} of N={ref['nodes']}  (log bound x{bound:.2f})")
    return {"rows": rows, "lines": lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="*", default=[1, 10, 100, 1000, 10000])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--order", choices=["fifo", "longest-first", "both"], default="both")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--repeat", type=int, default=1, help="runs per (N, order); the median is reported")
    ap.add_argument("--micro", action="store_true")
    ap.add_argument("--micro-one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compare", type=Path)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=50_000)
    ap.add_argument("--out", default="scheduler_sim.json", help="file name under bench/results/")
    args = ap.parse_args()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    if args.micro_one:
        print(json.dumps(micro_one(args.rounds)))
        return
    if args.micro or args.compare:
        report: dict[str, Any] = {"python": platform.python_version(), "machine": platform.node()}
        if args.compare:
            report["compare"] = compare(args.compare, args.runs, args.rounds)
        rows = [micro_one(args.rounds) | micro_new(args.rounds) for _ in range(args.runs)]
        report["this_tree_us"] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        (results / "scheduler_micro.json").write_text(json.dumps(report, indent=1))
        if args.compare:
            c = report["compare"]
            print(f"µs per pick + release, one 2-core node, medians of {args.runs} alternate runs:")
            for k, v in c["us_per_pick_release_median"]["this"].items():
                o = c["us_per_pick_release_median"]["other"][k]
                print(f"  {k:12s} this {v:6.2f}  other ({c['other_commit']}) {o:6.2f}  ratio {v / o:.3f}")
        print("this tree, µs per pick + release (medians):",
              {k: round(v, 2) for k, v in report["this_tree_us"].items()})
        return
    orders = ["fifo", "longest-first"] if args.order == "both" else [args.order]
    out = []
    for n in args.nodes:
        for order in orders:
            runs = [simulate(n, args.tasks, order, args.seed) for _ in range(args.repeat)]
            row = sorted(runs, key=lambda r: r["placements_per_s"])[len(runs) // 2]
            row["placements_per_s_runs"] = [r["placements_per_s"] for r in runs]
            out.append(row)
            print(f"N={n:5d} {order:13s} {row['placements_per_s']:9.0f} placements/s wall, "
                  f"{row['placements_per_cpu_s']:9.0f} per CPU s ({row['wall_s']:.2f} s, {row['picks']} picks, "
                  f"up to {row['max_running']} running, {row['node_sizes']} node size(s))", flush=True)
    scaling = scaling_table(out)
    for line in scaling["lines"]:
        print(line)
    at_target = [r for r in out if r["nodes"] == 1000 and r["tasks"] >= 100_000]
    for r in at_target:
        print(f"ratio to target at 1,000 nodes ({r['order']}): {r['placements_per_s'] / TARGET:.2f}x wall, "
              f"{r['placements_per_cpu_s'] / TARGET:.2f}x per CPU second, of {TARGET:.0f}/s "
              f"(load average {os.getloadavg()[0]:.1f})")
    report = {"python": platform.python_version(), "machine": platform.node(),
              "commit": _git_head(HERE.parent), "target_placements_per_s": TARGET,
              "load_average_1m": os.getloadavg()[0], "runs": out, "scaling": scaling["rows"]}
    (results / args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
