"""CPU per no-op task through ``loadmaster.Executor``: sandbox off, the slot forker, the per-task sandbox.

Run: ``flock /tmp/lm-bench.lock env PYTHONPATH=src .venv/bin/python bench/sandbox_forker.py
[--tasks 1000] [--repeats 5]``. One fresh interpreter per variant and repeat
(variants interleaved, their order rotated by repeat), each an
``Executor(history=':memory:')`` with its defaults but the sandbox:

* ``off``: ``sandbox=False``;
* ``forker``: the default sandbox, tasks forked by their namespace slot's forker
  (``node/process/slotforker.py``);
* ``per-task``: the default sandbox with ``LOADMASTER_SANDBOX_DISABLE=slotforker``,
  every task entering its sandbox itself (``sandbox.enter``), the path before the forker.

Why CPU and not the rate: on a shared 2-core machine the rate of a batch swings
2x with other work, while the CPU each process spends per task moves much less.
Per task, after a warm-up batch: the client process (all its threads), the
zygotes (their own CPU), the tasks (the zygotes' reaped children), the forkers
(read from ``/proc`` before they exit). Also the batch's rate and the load.

Does not cover: tasks that do work (``bench/sandbox_overhead.py``), peers (``bench/throughput.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("off", "forker", "per-task")
TICK = os.sysconf("SC_CLK_TCK")


def noop(i: int) -> int:
    return i


def _stat(pid: int) -> tuple[float, float]:
    """(own CPU, reaped children's CPU) of a process, seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK, (int(f[13]) + int(f[14])) / TICK


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def trial(variant: str, n: int) -> dict[str, float]:
    import loadmaster

    opts = {"sandbox": False} if variant == "off" else {}
    with loadmaster.Executor(history=":memory:", **opts) as ex:
        for f in [ex.submit(noop, i) for i in range(200)]:
            f.result()
        runtime = getattr(ex.backend, "runtime", ex.backend)
        zpids = [z.proc.pid for z in runtime.zygotes if z is not None]

        def cpu() -> dict[str, float]:
            me = os.times()
            z = [_stat(p) for p in zpids]
            forkers = 0.0
            for p in zpids:
                for k in _children(p):
                    try:
                        forkers += _stat(k)[0]
                    except OSError:
                        pass
            return {"client": me.user + me.system, "zygotes": sum(a for a, _ in z),
                    "tasks": sum(b for _, b in z), "forkers": forkers}

        c0, t0 = cpu(), time.perf_counter()
        fs = [ex.submit(noop, i) for i in range(n)]
        assert [f.result() for f in fs] == list(range(n))
        t1, c1 = time.perf_counter(), cpu()
        box = fs[-1].report.extra.get("sandbox") if fs[-1].report and fs[-1].report.extra else None
    out = {k: (c1[k] - c0[k]) / n * 1e6 for k in c0}
    out["total"] = sum(out.values())
    out["rate"] = n / (t1 - t0)
    out["fs_rules"] = bool(box and box.get("fs_rules"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--trial")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sandbox_forker.json"))
    a = ap.parse_args()
    if a.trial:
        print(json.dumps(trial(a.trial, a.tasks)))
        return
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    loads = [os.getloadavg()[0]]
    for rnd in range(a.repeats):
        order = VARIANTS[rnd % 3:] + VARIANTS[:rnd % 3]
        for v in order:
            env = dict(os.environ)
            if v == "per-task":
                env["LOADMASTER_SANDBOX_DISABLE"] = "slotforker"
            p = subprocess.run([sys.executable, __file__, "--trial", v, "--tasks", str(a.tasks)], env=env,
                               capture_output=True, text=True, timeout=600, check=True)
            rec = json.loads(p.stdout.strip().splitlines()[-1])
            runs[v].append(rec)
            print(f"  round {rnd + 1} {v:9s} total {rec['total']:7.0f} µs/task  rate {rec['rate']:6.0f}/s",
                  flush=True)
        loads.append(os.getloadavg()[0])
    med = {v: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0] if k != "fs_rules"}
           for v, rs in runs.items()}
    print(f"\nload {loads[0]:.2f} -> {loads[-1]:.2f}; medians of {a.repeats}, µs of CPU per task")
    print(f"{'variant':10s} {'client':>8s} {'zygotes':>8s} {'tasks':>8s} {'forkers':>8s} {'total':>8s} {'rate/s':>8s}")
    for v in VARIANTS:
        m = med[v]
        print(f"{v:10s} {m['client']:8.0f} {m['zygotes']:8.0f} {m['tasks']:8.0f} {m['forkers']:8.0f} "
              f"{m['total']:8.0f} {m['rate']:8.0f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump({"loads": loads, "runs": runs, "medians": med, "tasks": a.tasks}, fh, indent=1)


if __name__ == "__main__":
    main()
