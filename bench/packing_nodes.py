"""Packing memory-unsafe tasks on 4 emulated nodes, each a 2 GiB memory cgroup, against a 4-node oracle.

Run (as root, under ``flock /tmp/lm-bench.lock`` where other benchmarks share the machine)::

    .venv/bin/python bench/packing_nodes.py [--nodes 4] [--limit-gib 2] [--tasks 160] [--seed 4]
        [--scale 0.5] [--quick]

Writes ``bench/results/packing_nodes.json`` (task list, oracle, per-task records,
per-node counters) and prints the makespan, its ratio to the oracle and the OOM kills.

The nodes (``tests/cluster/netnodes.py``): ``--nodes`` Dask workers, each in a
network and UTS namespace of its own and a v1 memory cgroup of ``--limit-gib``
(a child of this process's memory cgroup), with its own ledger and temporary
directories. Each node's loadmaster node runtime (its host process, zygotes
and task processes) lives in that cgroup, so the node's capacity comes from the
cgroup's limit (``NodeInfo.sources["memory"]``, recorded), not from the host, and
the kernel kills there when the node is full. The 2 real cores serve every
node, and each node says 2 cores: so the tasks do not compute, they touch their
memory, hold it and sleep (:func:`hold_task`), and their durations are
wall-clock deadlines. The client (this process) runs ``loadmaster.Executor(
backend=<the scheduler's address>)`` with a fresh history (a cold run) and
the default strategy and order.

The workload: ``bench/workload.py``'s size-dependent task list (tractography,
registration, stats; memory and duration grow with the input size), each
task's memory times ``--scale`` (0.6: the largest ~1.3 GiB, so two large ones
do not fit a 2 GiB node together, as on ``bench/packing.py``'s 3 GiB node).

The oracle (computed): knows each task's true peak and duration; the best of
four greedy list schedules (submission order, longest first, largest memory
first, largest memory×time first), each placing the first waiting task that
fits on the first node with room, ``--nodes`` nodes of the cgroup's whole limit
and 2 cores each; and the lower bound ``max(Σ peak·t / (N·C), Σ t / (N·cores),
longest)``.

OOM kills, counted as ``bench/packing.py`` does (cgroup v1): kills in each node
cgroup itself (``memory.oom_control``), kills in loadmaster's per-task slots
(children of the nodes, polled while they exist), less loadmaster's own
exhausted attempts (a task over its allocation, killed in its slot and
retried bigger); and each node's ``memory.failcnt`` (its limit hit).

Does not cover: network transfers (no inputs move; links are not shaped), nodes
of different sizes, a node lost mid-run (``tests/test_dask_backend.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "packing_nodes.json"
MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
NODE_CORES = 2

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from tests.cluster.netnodes import EmulatedNodes  # noqa: E402

import workload  # noqa: E402  (the bench directory is not a package)


def hold_task(mb: float, seconds: float) -> dict[str, Any]:
    """Touch ``mb`` MiB, hold it and sleep until ``seconds`` after the start; return timings."""
    start = time.time()
    t0 = time.perf_counter()
    nbytes = max(PAGE, int(mb * MiB))
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        view = memoryview(buf)
        try:
            view[::PAGE] = b"\x01" * len(range(0, nbytes, PAGE))
        finally:
            view.release()
        left = seconds - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)
        return {"mb": mb, "start": start, "end": time.time()}
    finally:
        buf.close()


def make_tasks(n: int, seed: int, scale: float) -> list[dict[str, Any]]:
    """``workload.make_tasks`` with every task's memory times ``scale`` (sizes and durations kept)."""
    tasks = workload.make_tasks(n, seed)
    for t in tasks:
        t["mb"] = round(max(16.0, t["mb"] * scale), 1)
        t["true_peak"] = int((t["mb"] + workload.PROCESS_BASE_MIB) * MiB)
    return tasks


# ── the oracle ───────────────────────────────────────────────────────────────
def _list_schedule(jobs: list[tuple[int, float]], nodes: int, capacity: int, cores: int,
                   key: Callable[[tuple[int, float]], float] | None) -> float:
    """Makespan of a greedy list schedule on ``nodes`` nodes: the first waiting job that fits, first fit."""
    waiting = list(jobs) if key is None else sorted(jobs, key=key, reverse=True)
    running: list[list[tuple[float, int]]] = [[] for _ in range(nodes)]  # per node: (end, memory)
    now = 0.0
    if any(m > capacity for m, _d in jobs):
        raise ValueError(f"a task needs more than a node's {capacity} bytes")
    while waiting or any(running):
        started = False
        for i, (mem, dur) in enumerate(waiting):
            for r in running:
                if len(r) < cores and sum(m for _e, m in r) + mem <= capacity:
                    r.append((now + dur, mem))
                    del waiting[i]
                    started = True
                    break
            if started:
                break
        if started:
            continue
        now = min(e for r in running for e, _m in r)
        running = [[x for x in r if x[0] > now] for r in running]
    return now


def oracle(tasks: list[dict[str, Any]], nodes: int, capacity: int, cores: int) -> dict[str, Any]:
    """Lower bound and best greedy makespan on ``nodes`` nodes for tasks of known true peak and duration."""
    jobs = [(int(t["true_peak"]), float(t["seconds"])) for t in tasks]
    mem_bound = sum(m * d for m, d in jobs) / (nodes * capacity)
    cpu_bound = sum(d for _m, d in jobs) / (nodes * cores)
    longest = max(d for _m, d in jobs)
    heuristics: dict[str, Callable[[tuple[int, float]], float] | None] = {
        "submission order": None, "longest first": lambda j: j[1],
        "largest memory first": lambda j: j[0], "largest memory×time first": lambda j: j[0] * j[1],
    }
    greedy = {name: round(_list_schedule(jobs, nodes, capacity, cores, k), 3) for name, k in heuristics.items()}
    best = min(greedy, key=lambda n: greedy[n])
    return {"nodes": nodes, "capacity": capacity, "cores": cores, "memory_bound_s": round(mem_bound, 3),
            "cpu_bound_s": round(cpu_bound, 3), "longest_s": longest,
            "lower_bound_s": round(max(mem_bound, cpu_bound, longest), 3),
            "greedy_s": greedy, "best_greedy": best, "makespan_s": greedy[best]}


# ── counters ─────────────────────────────────────────────────────────────────
def _oom_kills(cgroup: Path) -> int:
    for line in (cgroup / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def watching_slots(cgroups: list[Path]) -> Iterator[dict[str, int]]:
    """Poll the OOM kill counters of every cgroup below the nodes' (loadmaster's slots) while inside."""
    kills: dict[str, int] = {}
    stop = threading.Event()

    def scan() -> None:
        for cg in cgroups:
            for root, _dirs, _files in os.walk(cg):
                if root != str(cg):
                    with contextlib.suppress(OSError, ValueError):
                        kills[root] = max(kills.get(root, 0), _oom_kills(Path(root)))

    def poll() -> None:
        while not stop.wait(0.1):
            scan()

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield kills
    finally:
        stop.set()
        t.join()
        scan()


def node_counters(cg: Path) -> dict[str, int]:
    """A node cgroup's OOM kills (in it, not its children), limit hits and peak usage."""
    return {"oom_kill": _oom_kills(cg), "failcnt": int((cg / "memory.failcnt").read_text()),
            "max_usage": int((cg / "memory.max_usage_in_bytes").read_text())}


# ── the run ──────────────────────────────────────────────────────────────────
def run(tasks: list[dict[str, Any]], *, nodes: int, limit: int, history: str) -> dict[str, Any]:
    """Run ``tasks`` on ``nodes`` emulated nodes of ``limit`` bytes; return records and counters."""
    import cloudpickle

    import loadmaster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with EmulatedNodes(nodes, rate_mbit=None, memory_limit=limit) as emu:
        cgroups = [n.cgroup for n in emu if n.cgroup is not None]
        before = [node_counters(cg) for cg in cgroups]
        with loadmaster.Executor(history=history, backend=emu.scheduler_address,
                                 label="packing-nodes") as ex:
            infos = [{"name": n.name, "host": n.host, "capacity": n.capacity.as_dict(),
                      "sources": dict(n.sources), "measure_method": n.measure_method}
                     for n in ex.backend.nodes()]
            warm = [ex.options(category="warmup").submit(hold_task, 1.0, 0.05) for _ in range(nodes * NODE_CORES)]
            for f in warm:
                f.result()
            with watching_slots(cgroups) as slot_kills:
                t0 = time.time()
                futs = [ex.options(category=t["category"], size=t["size"]).submit(hold_task, t["mb"], t["seconds"])
                        for t in tasks]
                recs: list[dict[str, Any]] = []
                for t, f in zip(tasks, futs, strict=True):
                    rec: dict[str, Any] = {"id": t["id"], "ok": False, "error": None}
                    try:
                        out = f.result()
                        rec.update(ok=True, start=out["start"], end=out["end"])
                    except Exception as exc:
                        rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
                    r = f.report
                    if r is not None:
                        lost = len(r.extra.get("lost", ()))
                        rec.update(attempts=r.attempts, lost=lost, exhausted_retries=r.attempts - 1 - lost,
                                   host=r.host, peak=r.peak_memory, alloc=r.allocation.memory,
                                   outcome=str(r.outcome))
                    recs.append(rec)
                t1 = time.time()
        after = [node_counters(cg) for cg in cgroups]
    node_rows = []
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        node_rows.append({"node": i, "oom_kills": a["oom_kill"] - b["oom_kill"],
                          "limit_hits": a["failcnt"] - b["failcnt"], "peak_usage": a["max_usage"]})
    intended = sum(r.get("exhausted_retries", 0) for r in recs)
    in_slots = sum(slot_kills.values())
    return {"t_submit": t0, "t_done": t1, "makespan_s": round(t1 - t0, 3), "records": recs, "nodes": infos,
            "node_counters": node_rows, "kills_in_slots": in_slots, "intended_kills": intended,
            "node_oom_kills": sum(n["oom_kills"] for n in node_rows) + max(0, in_slots - intended)}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run, print and write the results."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--limit-gib", type=float, default=2.0, help="each node cgroup's memory limit")
    p.add_argument("--tasks", type=int, default=160)
    p.add_argument("--seed", type=int, default=workload.DEFAULT_SEED)
    p.add_argument("--scale", type=float, default=0.6, help="each task's memory times this")
    p.add_argument("--quick", action="store_true", help="at most 32 tasks")
    p.add_argument("--out", default=str(RESULTS))
    args, _unknown = p.parse_known_args(argv)  # run-all.sh passes other benchmarks' options too
    if os.geteuid() != 0:
        print("packing_nodes.py: needs root (network namespaces, memory cgroups); not run")
        return 0
    if args.quick:
        args.tasks = min(args.tasks, 32)
    import tempfile

    limit = int(args.limit_gib * GiB)
    tasks = make_tasks(args.tasks, args.seed, args.scale)
    orc = oracle(tasks, args.nodes, limit, NODE_CORES)
    print(workload.summary(tasks))
    print(f"{args.nodes} nodes of {args.limit_gib:g} GiB and {NODE_CORES} cores; oracle {orc['makespan_s']:.1f} s "
          f"({orc['best_greedy']}), lower bound {orc['lower_bound_s']:.1f} s; load {os.getloadavg()[0]:.2f}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="lm-packing-nodes-") as scratch:
        out = run(tasks, nodes=args.nodes, limit=limit, history=os.path.join(scratch, "history.sqlite"))
    ok = sum(1 for r in out["records"] if r["ok"])
    ratio = out["makespan_s"] / orc["makespan_s"]
    hosts = sorted({r.get("host", "?") for r in out["records"]})
    retries = sum(max(0, (r.get("attempts") or 1) - 1) for r in out["records"])
    print("nodes' capacity: " + "; ".join(f"{n['name']} {n['capacity']['memory'] / GiB:.2f} GiB "
                                           f"({n['sources'].get('memory', '?')})" for n in out["nodes"]))
    print(f"{ok}/{len(tasks)} ok on {len(hosts)} nodes ({', '.join(hosts)}), makespan {out['makespan_s']:.1f} s, "
          f"x{ratio:.3f} oracle, x{out['makespan_s'] / orc['lower_bound_s']:.3f} lower bound; "
          f"node OOM kills {out['node_oom_kills']} (in node cgroups "
          f"{sum(n['oom_kills'] for n in out['node_counters'])}, in slots {out['kills_in_slots']} of which "
          f"{out['intended_kills']} loadmaster's own exhausted attempts), node limit hits "
          f"{sum(n['limit_hits'] for n in out['node_counters'])}, retries {retries}")
    result = {"benchmark": "packing_nodes", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "machine": {"host": platform.node(), "kernel": platform.release(), "cores": os.cpu_count(),
                          "load_average": [round(x, 2) for x in os.getloadavg()]},
              "settings": vars(args), "oracle": orc, "vs_oracle": round(ratio, 3), "tasks": tasks, **out}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
