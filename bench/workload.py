"""A memory-unsafe workload whose memory grows with each task's input size (issue 4).

Who runs this code: ``bench/packing.py`` imports it (the task list, and the task
as a Python function for loadmaster, ``ProcessPoolExecutor`` and Parsl); GNU
parallel and Work Queue run each task as a command,
``python3 bench/workload.py task --mb X --seconds Y`` (stdlib only, so the
system ``/usr/bin/python3`` runs it too).

What a task does: it maps ``X`` MiB of anonymous memory, writes one byte in
every 4 KiB page (so the kernel really backs and charges all of it), then keeps
one core busy until ``Y`` seconds have passed since it started, holding the
memory, and releases it. It does not tolerate paging: there is no swap on these
machines, so a task that does not fit is killed by the kernel's OOM killer.
Durations are wall-clock deadlines, so a task lasts ``Y`` seconds whether or not
it had its core to itself (touching 1 GiB costs ~0.7 s of the budget).

The task list (``make_tasks``), seeded and the same for every system:

============  ======  ===========================  =============================
category      share   input size (MB)              memory (MiB) / duration (s)
============  ======  ===========================  =============================
tractography  40 %    150–1200, log-uniform        300 + 1.65·size + N(0, 30) /
                                                   1.2 + 0.0015·size
registration  35 %    50–400, uniform              120 + 0.9·size + N(0, 15) /
                                                   0.6 + 0.0015·size
stats         25 %    1–50, uniform                150–350 whatever the size /
                                                   0.5–0.9
============  ======  ===========================  =============================

Two large tractography tasks together exceed a 3 GiB node; one per core of a
2-core node therefore kills tasks (or the whole pool), while the worst case for
every task leaves most of the node idle. ``stats`` does not depend on size
(a size-aware strategy must fall back); the others are linear with scatter.

Run ``python3 bench/workload.py`` (no arguments: prints a summary, which is what
``bench/run-all.sh`` does with it), ``python3 bench/workload.py generate
--tasks 80 --seed 4 --out tasks.json`` or ``... task --mb 300 --seconds 1``.

Does not cover: running the workload on any system (``bench/packing.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import random
import sys
import time
from typing import Any

MiB = 1 << 20
MB = 1000 * 1000
PAGE = 4096
PROCESS_BASE_MIB = 10
"""What a task's process adds besides the memory it touches (an interpreter, or the
copy-on-write pages a forked one writes), counted in its true peak."""

CATEGORIES: dict[str, float] = {"tractography": 0.40, "registration": 0.35, "stats": 0.25}
DEFAULT_TASKS = 80
DEFAULT_SEED = 4


def run_task(mb: float, seconds: float) -> dict[str, Any]:
    """Touch ``mb`` MiB, keep one core busy until ``seconds`` after the start, return timings.

    Returns ``{"pid", "mb", "start", "end", "touch_s"}`` (``start``/``end`` from
    ``time.time()``).
    """
    start = time.time()
    t0 = time.perf_counter()
    nbytes = max(PAGE, int(mb * MiB))
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        view = memoryview(buf)
        try:
            view[::PAGE] = b"\x01" * len(range(0, nbytes, PAGE))  # one write per page
        finally:
            view.release()
        touch_s = time.perf_counter() - t0
        deadline = t0 + seconds
        x = 0
        while time.perf_counter() < deadline:  # busy, as a computing step would be
            for i in range(2000):
                x ^= i
        return {"pid": os.getpid(), "mb": mb, "start": start, "end": time.time(),
                "touch_s": round(touch_s, 4)}
    finally:
        buf.close()


def make_tasks(n: int = DEFAULT_TASKS, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """Return ``n`` tasks: ``id``, ``category``, ``size`` (bytes), ``mb``, ``true_peak`` (bytes), ``seconds``.

    ``mb`` is what the task touches; ``true_peak`` adds ``PROCESS_BASE_MIB``.
    Categories are interleaved in a seeded random order, as a workflow's would be.
    """
    rng = random.Random(seed)
    counts = {c: round(share * n) for c, share in CATEGORIES.items()}
    counts["tractography"] += n - sum(counts.values())
    cats = [c for c, k in counts.items() for _ in range(k)]
    rng.shuffle(cats)
    tasks: list[dict[str, Any]] = []
    for i, cat in enumerate(cats):
        if cat == "tractography":
            size_mb = math.exp(rng.uniform(math.log(150), math.log(1200)))
            mb = 300 + 1.65 * size_mb + rng.gauss(0, 30)
            seconds = 1.2 + 0.0015 * size_mb
        elif cat == "registration":
            size_mb = rng.uniform(50, 400)
            mb = 120 + 0.9 * size_mb + rng.gauss(0, 15)
            seconds = 0.6 + 0.0015 * size_mb
        else:
            size_mb = rng.uniform(1, 50)
            mb = rng.uniform(150, 350)
            seconds = rng.uniform(0.5, 0.9)
        mb = round(max(32.0, mb), 1)
        tasks.append({
            "id": i, "category": cat, "size": int(size_mb * MB), "mb": mb,
            "true_peak": int((mb + PROCESS_BASE_MIB) * MiB), "seconds": round(seconds, 3),
        })
    return tasks


def summary(tasks: list[dict[str, Any]]) -> str:
    """Return a few lines describing ``tasks`` per category (count, memory range, seconds)."""
    lines = [f"{len(tasks)} tasks, {sum(t['seconds'] for t in tasks):.1f} task-seconds, "
             f"{sum(t['true_peak'] * t['seconds'] for t in tasks) / (1 << 30):.1f} GiB·s"]
    for cat in CATEGORIES:
        mine = [t for t in tasks if t["category"] == cat]
        if mine:
            mbs = [t["mb"] for t in mine]
            secs = [t["seconds"] for t in mine]
            lines.append(f"  {cat:<13} {len(mine):>4} tasks  {min(mbs):7.0f}–{max(mbs):6.0f} MiB  "
                         f"{min(secs):.2f}–{max(secs):.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line: ``task``, ``generate``, or (no subcommand) a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd")
    p_task = sub.add_parser("task", help="run one task")
    p_task.add_argument("--mb", type=float, required=True, help="MiB to touch and hold")
    p_task.add_argument("--seconds", type=float, required=True, help="how long the task lasts")
    p_gen = sub.add_parser("generate", help="write the task list as JSON")
    p_gen.add_argument("--tasks", type=int, default=DEFAULT_TASKS)
    p_gen.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p_gen.add_argument("--out", default="-", help="file to write (default: standard output)")
    args, _unknown = parser.parse_known_args(argv)  # run-all.sh passes benchmark options to all
    if args.cmd == "task":
        print(json.dumps(run_task(args.mb, args.seconds)), flush=True)
        return 0
    if args.cmd == "generate":
        text = json.dumps(make_tasks(args.tasks, args.seed), indent=1)
        if args.out == "-":
            print(text)
        else:
            with open(args.out, "w") as fh:
                fh.write(text + "\n")
        return 0
    print("bench/workload.py: the packing benchmark's workload (run by bench/packing.py)")
    print(summary(make_tasks()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
