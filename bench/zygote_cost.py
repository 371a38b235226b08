"""What one task costs a zygote and its child, without the engine: a diagnostic for A/B runs.

Starts one real zygote (``ZygoteClient``, memory cgroup slots where the node
allows) and drives it serially from this process: send one no-op order, wait
for its report, repeat. Prints, per task, the CPU time of the zygote and of its
children (from ``/proc``, so nothing inside the zygote is instrumented), their
minor page faults, the wall time per task and the zygote's resident size; the
median of ``--repeats`` batches by total CPU.

Compare two trees by running it alternately (the machine drifts)::

    PYTHONPATH=/path/to/other/src .venv/bin/python bench/zygote_cost.py
    .venv/bin/python bench/zygote_cost.py

Not a peer comparison (see ``throughput.py`` for that): a quick, fairly quiet
measure of the zygote's own per-task path, which is where most changes to it
show first.
"""

from __future__ import annotations

import argparse
import pickle
import select
import shutil
import statistics
import tempfile
import time

import cloudpickle
import psutil

from loadmaster.node.process.protocol import KIND_FUNCTION, Done, RunOrder, frame
from loadmaster.node.process.zygote_client import ZygoteClient


def noop(i: int) -> int:
    """The task."""
    return i


def _faults(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[8])


def main() -> None:
    """Parse arguments, drive the zygote, print one line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1500, help="tasks per batch (default 1500)")
    ap.add_argument("--repeats", type=int, default=3, help="batches; the median is printed (default 3)")
    ap.add_argument("--preload", default="", help="comma-separated modules for the zygote to import")
    ap.add_argument("--sandbox", action="store_true",
                    help="sandbox each task with the default policy (namespace slot + Landlock)")
    args = ap.parse_args()

    fn_bytes = cloudpickle.dumps(noop)
    workdir = tempfile.mkdtemp(prefix="bench-zygote-")
    box = None
    sandbox_dir = ""
    if args.sandbox:
        from loadmaster.node.sandbox.policy import Sandbox, default_parent_dir

        box, sandbox_dir = (Sandbox(), (), ()), default_parent_dir()
    z = ZygoteClient(workdir=workdir, preload=[m for m in args.preload.split(",") if m], sandbox_dir=sandbox_dir)
    proc = psutil.Process(z.proc.pid)

    def one(task_id: int, first: bool = False) -> None:
        order = RunOrder(task_id=task_id, kind=KIND_FUNCTION, fn_key=1, fn_bytes=fn_bytes if first else b"",
                         payload=pickle.dumps(((task_id,), {}), 5), memory_limit=1 << 30, disk_limit=None,
                         wall_limit=None, sandbox=box)
        z.send(frame(("run", order.fields())))
        while True:
            select.select([z.res_fd], [], [])
            msgs = z.read()
            if msgs is None:
                raise SystemExit("the zygote died")
            for msg in msgs:
                d: Done = msg[1]
                if d.status != 0:
                    raise SystemExit(f"task {d.task_id} failed: {d.payload[:200]!r}")
                return

    try:
        one(0, first=True)
        for i in range(1, 200):  # warm-up
            one(i)
        rows = []
        for rep in range(args.repeats):
            c0, f0, t0 = proc.cpu_times(), _faults(z.proc.pid), time.perf_counter()
            for i in range(args.tasks):
                one(1_000_000 * (rep + 1) + i)
            t1, c1, f1 = time.perf_counter(), proc.cpu_times(), _faults(z.proc.pid)
            n = args.tasks
            zyg = (c1.user + c1.system - c0.user - c0.system) / n * 1e6
            kids = (c1.children_user + c1.children_system - c0.children_user - c0.children_system) / n * 1e6
            rows.append((zyg + kids, zyg, kids, (f1[0] - f0[0]) / n, (f1[1] - f0[1]) / n, (t1 - t0) / n * 1e6))
        total, zyg, kids, zf, kf, wall = sorted(rows)[len(rows) // 2]
        print(f"zygote rss {z.info.rss // 1024} KiB  zygote {zyg:5.0f} µs  child {kids:5.0f} µs  "
              f"total {total:5.0f} µs  faults: zygote {zf:4.0f} child {kf:4.0f}  wall/task {wall:5.0f} µs  "
              f"(median of {args.repeats} × {args.tasks}; spread of totals "
              f"{statistics.pstdev(r[0] for r in rows):.0f} µs)")
    finally:
        z.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
