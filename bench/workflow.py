"""A two-stage workflow on 8 emulated nodes: loadmaster's data layer against reading everything from one source.

As root. 8 nodes in network namespaces (``tests/cluster/netnodes.py``), each
link shaped to ``--rate`` Mbit/s up and down, the submitter's link too
(``bench/data.py``'s ``shape_host``), the submitter's directory hidden from
the nodes (no shared file system). The workflow, shaped like seed 003's (many
tasks reading a shared dataset plus small inputs of their own):

- stage A, ``--tasks`` tasks: each reads the shared dataset (``--shared-mib``
  MiB, one file) and its own input (``--own-kib`` KiB), "computes"
  (``--compute`` seconds of sleep: the 2 cores here are shared by 8 nodes, so
  the work itself is not burnt on them), and writes an intermediate
  (``--mid-kib`` KiB);
- then stage B, as many tasks: each reads the shared dataset and one
  intermediate, computes, and writes a small result (``--out-kib`` KiB)
  copied back to the submitter.

Modes, each on fresh bytes and a fresh Executor (its start not counted):

- ``loadmaster``: the defaults. The dataset moves as a pipelined chain from the
  submitter, each node caches it once; intermediates are ``Output(...,
  keep=True)``, left where they were made, and stage B is placed where they are
  (else fetched from the producer's node);
- ``pipelined``: as ``loadmaster``, but each stage-B task is submitted as its
  stage-A producer ends (from the producer's future's done callback), at a
  higher ``priority`` than stage A: the common real-workflow shape, where the
  producer's node has just freed a slot (the freed slot's rule,
  ``schedule/locality.py``, keeps it for a consumer whose input it holds);
- ``one_source``: everything comes from the submitter: the nodes serve no
  transfers (the planner's node limit 0, the submitter's and every node's
  incoming limit unbounded), intermediates are copied back to the submitter
  and stage B reads them from there. Each node still caches the dataset once,
  which is kinder to this baseline than a shared file system read by every task.

Prints and writes ``bench/results/workflow.json``: end-to-end seconds per run,
medians, the ratio, and locality: the share of stage-B tasks that ran where
their intermediate was (a cache hit), and of all tasks that found the dataset
in their node's cache; and the scheduler's own counts
(``ClusterScheduler.locality``): of the placements where a node holding the
task's inputs had room at that moment, the share placed on such a node (the
acceptance figure), and the share overall.

    flock /tmp/lm-bench.lock env PYTHONPATH=src .venv/bin/python bench/workflow.py --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from tests.cluster import netnodes  # noqa: E402

from data import counters, delta, shape_host  # noqa: E402

RESULTS = os.path.join(HERE, "results", "workflow.json")
KiB, MiB = 1 << 10, 1 << 20


def read_all(path: Any) -> int:
    """Read a staged input whole (as a task would); return its size."""
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            n += len(chunk)
    return n


def stage_a(shared: Any, own: Any, mid: Any, compute_s: float, mid_bytes: int) -> dict[str, Any]:
    """Read the dataset and the task's own input, compute, write the intermediate."""
    n = read_all(shared) + read_all(own)
    time.sleep(compute_s)
    with open(mid, "wb") as fh:
        fh.write(os.urandom(mid_bytes))
    return {"node": os.environ.get("LOADMASTER_NODE_NAME", ""), "read": n, "end": time.time()}


def stage_b(shared: Any, mid: Any, out: Any, compute_s: float, out_bytes: int) -> dict[str, Any]:
    """Read the dataset and one intermediate, compute, write the result."""
    n = read_all(shared) + read_all(mid)
    time.sleep(compute_s)
    with open(out, "wb") as fh:
        fh.write(os.urandom(out_bytes))
    return {"node": os.environ.get("LOADMASTER_NODE_NAME", ""), "read": n, "end": time.time()}


def write_random(path: str, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            k = min(left, MiB)
            fh.write(os.urandom(k))
            left -= k


def only_the_submitter_serves(ex: Any, n: int) -> None:
    """Make the executor's planner send everything from the submitter (the ``one_source`` mode)."""
    from loadmaster.data.transfer.planner import SUBMITTER

    tr = ex._transfers
    end = time.monotonic() + 120
    while len(tr.addresses) < n and time.monotonic() < end:
        time.sleep(0.05)  # the nodes join the executor's engine
    p = tr.planner
    with p._cond:
        p.dest_limit = 1 << 30
        for name, peer in list(p._peers.items()):
            p._peers[name] = dataclasses.replace(peer, limit=(1 << 30) if name == SUBMITTER else 0)


def share(c: dict[str, int] | None, of: str) -> float | None:
    """``on_holder`` of ``c[of]`` (the scheduler's locality counts), or ``None``."""
    return c["on_holder"] / c[of] if c and c[of] else None


def submit_pipelined(ex: Any, one: Any, shared: str, own: list[str], mids: list[str], outs: list[str],
                     args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """Submit stage A; each stage-B task as its producer ends, at a higher priority. Return both's futures."""
    import threading

    from loadmaster import File, Output

    fb: list[Any] = [None] * args.tasks
    done = threading.Semaphore(0)
    later = one.options(priority=1)

    def then(i: int) -> Any:
        def submit_b(fut: Any) -> None:
            fb[i] = later.submit(stage_b, File(shared), File(mids[i]), Output(outs[i]), args.compute,
                                 args.out_kib * KiB)
            done.release()
        return submit_b

    fa = []
    for i in range(args.tasks):
        f = one.submit(stage_a, File(shared), File(own[i]), Output(mids[i], keep=True), args.compute,
                       args.mid_kib * KiB)
        f.add_done_callback(then(i))
        fa.append(f)
    for _ in range(args.tasks):
        if not done.acquire(timeout=1800):
            raise SystemExit("pipelined: stage B was not all submitted")
    return fa, fb


def run(nodes: netnodes.EmulatedNodes, sub: str, mode: str, rep: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the workflow in ``mode`` (see the module docstring)."""
    from loadmaster import Executor, File, Output

    d = os.path.join(sub, f"{mode}-{rep}")
    os.makedirs(d)
    shared = os.path.join(d, "dataset.bin")
    write_random(shared, int(args.shared_mib * MiB))
    own = [os.path.join(d, f"own-{i}.bin") for i in range(args.tasks)]
    for p in own:
        write_random(p, args.own_kib * KiB)
    mids = [os.path.join(d, f"mid-{i}.bin") for i in range(args.tasks)]
    outs = [os.path.join(d, f"out-{i}.bin") for i in range(args.tasks)]
    keep = mode != "one_source"
    with Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address) as ex:
        if mode == "one_source":
            only_the_submitter_serves(ex, len(nodes))
        one = ex.options(resources={"cores": 1})
        before = counters(nodes)
        t0 = time.time()
        if mode != "pipelined":
            fa = [one.submit(stage_a, File(shared), File(own[i]), Output(mids[i], keep=keep), args.compute,
                             args.mid_kib * KiB) for i in range(args.tasks)]
        if mode == "pipelined":
            fa, fb = submit_pipelined(ex, one, shared, own, mids, outs, args)
            ra = [f.result(timeout=1800) for f in fa]
            t_mid = time.time()
        else:
            ra = [f.result(timeout=1800) for f in fa]
            t_mid = time.time()
            fb = [one.submit(stage_b, File(shared), File(mids[i]), Output(outs[i]), args.compute,
                             args.out_kib * KiB) for i in range(args.tasks)]
        rb = [f.result(timeout=1800) for f in fb]
        t1 = time.time()
        counts = {k: dataclasses.asdict(c) for k, c in ex._engine.scheduler.locality.items()}
        after = counters(nodes)
        sent = ex._transfers.server.bytes_sent
        unplanned = ex._transfers.unplanned
    assert all(os.path.getsize(p) == args.out_kib * KiB for p in outs)  # every result at the submitter's path
    reps = [f.report for f in fa + fb]
    assert all(r is not None and r.data is not None for r in reps)
    shared_hit = sum(1 for r in reps if r is not None and r.data is not None
                     and any(s.key == shared and s.hit for s in r.data.inputs))
    mid_hit = sum(1 for f in fb if f.report is not None and f.report.data is not None
                  and any(s.key in mids and s.hit for s in f.report.data.inputs))
    nodes_a = {r["node"] for r in ra}
    total = {k: sum(c[k] for c in counts.values()) for k in ("placed", "held", "room", "on_holder")}
    b = next((c for k, c in counts.items() if "stage_b" in k), None)
    return {"mode": mode, "repeat": rep, "end_to_end_s": t1 - t0, "stage_a_s": t_mid - t0, "stage_b_s": t1 - t_mid,
            "tasks": len(ra) + len(rb), "nodes_used": len(nodes_a | {r["node"] for r in rb}),
            "shared_hits": shared_hit, "shared_hit_share": shared_hit / len(reps),
            "mid_hits": mid_hit, "mid_hit_share": mid_hit / len(fb),
            "locality": counts, "holder_with_room_share": share(total, "room"), "holder_share": share(total, "held"),
            "stage_b_holder_with_room_share": share(b, "room"), "stage_b_holder_share": share(b, "held"),
            "submitter_server_sent": sent, "unplanned": unplanned, "links": delta(before, after),
            "load": os.getloadavg()}


def main() -> None:
    """Parse arguments, run the modes ``--repeats`` times alternating, print medians, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rate", type=float, default=100, help="Mbit/s per link, each way (default 100)")
    ap.add_argument("--tasks", type=int, default=64, help="tasks per stage (default 64)")
    ap.add_argument("--shared-mib", type=float, default=50)
    ap.add_argument("--own-kib", type=int, default=256)
    ap.add_argument("--mid-kib", type=int, default=512)
    ap.add_argument("--out-kib", type=int, default=64)
    ap.add_argument("--compute", type=float, default=0.3, help="seconds each task sleeps as its work")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="loadmaster,pipelined,one_source")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    reason = netnodes.unavailable_reason()
    if reason:
        raise SystemExit(f"workflow bench: {reason}")
    modes = args.modes.split(",")
    rows: list[dict[str, Any]] = []
    load0 = os.getloadavg()
    base = os.path.abspath(os.path.join("/tmp", f"lm-workflow-{os.getpid()}"))
    sub = os.path.join(base, "submitter")
    os.makedirs(sub)
    with netnodes.EmulatedNodes(args.nodes, rate_mbit=args.rate, memory_limit="4GiB", worker_memory_limit="0",
                                hide=[sub]) as nodes:
        shape_host(nodes, args.rate)
        for rep in range(args.repeats):
            for mode in modes:
                r = run(nodes, sub, mode, rep, args)
                rows.append(r)
                print(f"[{rep}] {mode:>10}: {r['end_to_end_s']:6.2f} s "
                      f"(A {r['stage_a_s']:.2f}, B {r['stage_b_s']:.2f}), "
                      f"submitter sent {r['links']['submitter_sent'] / MiB:7.1f} MiB, stage-B where its "
                      f"intermediate was {r['mid_hit_share']:.1%}, dataset cached {r['shared_hit_share']:.1%}, "
                      f"on a holder: {r['holder_with_room_share']} of those with room, {r['holder_share']} "
                      f"overall (stage B {r['stage_b_holder_with_room_share']}, {r['stage_b_holder_share']}), "
                      f"load {r['load'][0]:.1f}", flush=True)
    import shutil

    shutil.rmtree(base, ignore_errors=True)

    def med(mode: str, key: str) -> float | None:
        xs = [r[key] for r in rows if r["mode"] == mode and r[key] is not None]
        return statistics.median(xs) if xs else None

    summary: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("out", "modes")}
    summary.update(load_before=load0, load_after=os.getloadavg())
    for m in modes:
        for k in ("end_to_end_s", "stage_a_s", "stage_b_s", "mid_hit_share", "shared_hit_share",
                  "holder_with_room_share", "holder_share", "stage_b_holder_with_room_share", "stage_b_holder_share"):
            summary[f"{m}_{k}"] = med(m, k)
    if summary.get("loadmaster_end_to_end_s") and summary.get("one_source_end_to_end_s"):
        summary["one_source_vs_loadmaster"] = summary["one_source_end_to_end_s"] / summary["loadmaster_end_to_end_s"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"summary": summary, "runs": rows}, fh, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"one source / loadmaster end to end = {summary.get('one_source_vs_loadmaster')} (target >= 2); "
          f"on a holder, of the placements where one had room: {summary.get('loadmaster_holder_with_room_share')}, "
          f"pipelined {summary.get('pipelined_holder_with_room_share')} (target >= 0.95); stage B where its "
          f"intermediate was: {summary.get('loadmaster_mid_hit_share')}, pipelined "
          f"{summary.get('pipelined_mid_hit_share')}")


if __name__ == "__main__":
    main()
