"""Throughput of no-op function tasks: loadmaster against its peers and the fork limit.

Run: ``.venv/bin/python bench/throughput.py [--tasks 2000] [--repeats 5]
[--peers loadmaster,processpool,dask,parsl] [--no-limit] [--no-breakdown]``.
Writes ``bench/results/throughput.json`` (every run, medians, ratios, the
per-task time breakdown) and prints a table, the ratios and loadmaster's
fraction of the fork limit.

Process model: this script (the *driver*) starts one fresh Python process per
trial (``--trial NAME``), so only one system is alive at a time and none
inherits another's threads or memory. Rounds are interleaved: each round runs
every peer once, in an order rotated from round to round, so slow drift of the
machine (other engineers' tests) hits all of them alike. A trial starts its
system, warms it up (excluded from the timing; Parsl's ~6 s start-up too),
then times one batch of ``--tasks`` no-op tasks from the first submit to the
last result and prints one JSON line.

What each trial runs (2 workers everywhere):

* ``loadmaster``: ``loadmaster.Executor(history=<temp file>)``, defaults
  otherwise: every task forked from a zygote, measured (the method in force is
  recorded) and its report written to the SQLite history. After the executor
  has shut down the trial counts the timed batch's reports in the file and
  fails unless all are there.
* ``processpool``: ``concurrent.futures.ProcessPoolExecutor(2)``.
* ``dask``: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
  and ``Client.map(pure=False)`` + ``gather``.
* ``parsl``: ``HighThroughputExecutor`` (2 workers, ``LocalProvider``, one
  block), a ``python_app``, a fresh ``run_dir`` under a temp dir.
* ``loadmaster-on-dask``: one ``LocalCluster(n_workers=2, threads_per_worker=1,
  processes=True)`` and, on it, in one process: plain ``client.submit`` (one
  per task, ``pure=False``) + ``gather``; then ``loadmaster.Executor(backend=
  cluster, sandbox=False)`` (every task forked and measured by the node's
  runtime beside the workers, its report in the history file); then the same
  with the default sandbox. The three batches alternate their order from
  round to round; the record's rate is loadmaster's without the sandbox, and
  ``same_cluster`` holds all three, so the ratio against plain Dask is taken
  per run, on one cluster.
* ``limit-os`` / ``limit-libc``: the raw rate of fork + ``_exit`` + ``wait4``:
  two processes of the zygote's kind (a lean interpreter that ran
  ``import loadmaster.node.process.zygote``) fork in parallel on the 2 cores, one with
  ``os.fork``, the other with libc's ``fork`` through ``ctypes.PyDLL(None)``
  (what loadmaster's zygote uses).
* ``loadmaster-probe`` (once, after the rounds): the same loadmaster batch with
  timing probes wrapped around the engine's methods in the client and, via a
  wrapper started in place of the zygote (``python -c <zygote_client.ZYGOTE_BOOT>``), around the
  zygote's fork, reap and finish and the child's run. Only this script is
  instrumented; the shipped code is not touched. Its rate is not reported as
  loadmaster's (the probes cost time).

Every trial also records the CPU time the whole machine spent during its timed
window (``/proc/stat``), per task: the cost of a task in CPU, which on two
cores bounds the rate.

Does not cover: tasks that do work, command tasks (see
``bench/sandbox_overhead.py`` for the fork+exec path), the accuracy of the
measurement (``bench/monitor_accuracy.py``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "throughput.json")
PEERS = ("loadmaster", "loadmaster-nosandbox", "processpool", "dask", "parsl", "loadmaster-on-dask")
WARMUP_TASKS = 40
TRIAL_TIMEOUT_S = 300.0
LIMIT_WARMUP_FORKS = 100


def noop(i: int) -> int:
    """The task: return the argument (so results can be checked)."""
    return i


# ── measuring helpers (run in trial processes) ────────────────────────────────
def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, from /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> tuple[int, int]:
    """Minor page faults of process ``pid`` and of its reaped children (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[8])


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


class Window:
    """Wall and machine-CPU time of one timed window."""

    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = 0.0

    def __enter__(self) -> Window:
        self.cpu0 = machine_cpu_s()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.t1 = time.perf_counter()
        self.cpu1 = machine_cpu_s()

    def result(self, n: int, **extra: Any) -> dict[str, Any]:
        """The trial's JSON record for ``n`` tasks."""
        wall = self.t1 - self.t0
        return {"tasks": n, "wall_s": round(wall, 4), "tasks_per_s": round(n / wall, 1),
                "machine_cpu_us_per_task": round((self.cpu1 - self.cpu0) / n * 1e6, 1), **extra}


def check_results(values: list[int], n: int) -> None:
    """Fail unless the batch returned 0..n-1 in order."""
    if values != list(range(n)):
        raise SystemExit(f"wrong results: got {len(values)} values, first {values[:5]}")


# ── trials ────────────────────────────────────────────────────────────────────
def trial_loadmaster(n: int, probe: bool = False, sandbox: bool | None = None) -> dict[str, Any]:
    """One timed batch on loadmaster.Executor with a history file; checks the history.

    ``sandbox=False`` turns the per-task sandbox off (where the executor has
    one); ``None`` keeps the executor's default.
    """
    import inspect

    import psutil

    import loadmaster

    options: dict[str, Any] = {}
    if sandbox is not None:
        if "sandbox" not in inspect.signature(loadmaster.Executor).parameters:
            return {"skipped": "this loadmaster.Executor has no sandbox option (no per-task sandbox to turn off)"}
        options["sandbox"] = sandbox

    probes: Probes | None = Probes.install() if probe else None
    tmp = tempfile.mkdtemp(prefix="bench-lm-")
    history = os.path.join(tmp, "history.sqlite")
    try:
        with loadmaster.Executor(history=history, label="bench-throughput", **options) as ex:
            for f in [ex.submit(noop, i) for i in range(WARMUP_TASKS)]:
                f.result()
            me = psutil.Process()
            # The zygotes: the node runtime's (from the seam on), or the local backend's before it.
            runtime = getattr(ex.backend, "runtime", ex.backend)
            zygotes = [psutil.Process(z.proc.pid) for z in runtime.zygotes if z is not None]
            engine_tid = ex._engine.thread.native_id
            main_tid = _main_tid()

            def cpu() -> dict[str, float]:
                th = {t.id: t.user_time + t.system_time for t in me.threads()}
                zt = [z.cpu_times() for z in zygotes]
                faults = [minor_faults(z.pid) for z in zygotes]
                return {
                    "zygote_minor_faults": sum(f[0] for f in faults),
                    "task_minor_faults": sum(f[1] for f in faults),
                    "client_main": th.get(main_tid, 0.0),
                    "client_engine": th.get(engine_tid or -1, 0.0),
                    "client_other": sum(th.values()) - th.get(main_tid, 0.0) - th.get(engine_tid or -1, 0.0),
                    "zygotes": sum(t.user + t.system for t in zt),
                    "tasks": sum(t.children_user + t.children_system for t in zt),
                }

            if probes is not None:
                probes.reset()
            c0 = cpu()
            with Window() as w:
                fs = [ex.submit(noop, i) for i in range(n)]
                t_submitted = time.perf_counter()
                concurrent.futures.wait(fs)
            c1 = cpu()
            check_results([f.result() for f in fs], n)
            first, last = fs[0].task_id, fs[-1].task_id
            run_id = ex.run_id
            method = fs[0].report.measure_method.value if fs[0].report else "?"
            fork_method = runtime.zygotes[0].info.fork_method
            zygote_rss = runtime.zygotes[0].info.rss
        # The executor has shut down: every report must be in the file now.
        con = sqlite3.connect(history)
        try:
            count, ok, peak_med, peak_max = con.execute(
                "SELECT count(*), sum(outcome = 'ok'), avg(peak_memory), max(peak_memory) FROM reports "
                "WHERE run_id = ? AND task_id BETWEEN ? AND ?", (run_id, first, last)).fetchone()
            child_cpu = sorted(r[0] for r in con.execute(
                "SELECT cpu_time FROM reports WHERE run_id = ? AND task_id BETWEEN ? AND ?", (run_id, first, last)))
            methods = [r[0] for r in con.execute(
                "SELECT DISTINCT measure_method FROM reports WHERE run_id = ? AND task_id BETWEEN ? AND ?",
                (run_id, first, last))]
        finally:
            con.close()
        if count != n or ok != n:
            raise SystemExit(f"history {history}: {count} reports ({ok} ok) for the {n} timed tasks")
        faults = {k: round((c1.pop(k) - c0.pop(k)) / n, 1) for k in ("zygote_minor_faults", "task_minor_faults")}
        per_task = {k: round((c1[k] - c0[k]) / n * 1e6, 1) for k in c0}
        out = w.result(
            n, submit_us_per_task=round((t_submitted - w.t0) / n * 1e6, 1),
            history_reports=count, measure_method=method, methods_in_history=methods,
            fork_method=fork_method, zygote_rss_mib=round(zygote_rss / 2**20, 1),
            peak_memory_mean_kib=round((peak_med or 0) / 1024, 1), peak_memory_max_kib=round((peak_max or 0) / 1024, 1),
            cpu_us_per_task=per_task, minor_faults_per_task=faults,
            task_cpu_us_median_from_reports=round(statistics.median(child_cpu) * 1e6, 1) if child_cpu else None,
        )
        if probes is not None:
            out["probes_client"] = probes.report(n)
            out["probes_zygote"] = read_zygote_probes(probes.zygote_dir, n)
        return out
    finally:
        if probes is not None:
            probes.uninstall()
        shutil.rmtree(tmp, ignore_errors=True)


def _main_tid() -> int:
    import threading

    return threading.main_thread().native_id or os.getpid()


def trial_processpool(n: int) -> dict[str, Any]:
    """One timed batch on ProcessPoolExecutor(2)."""
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        for f in [ex.submit(noop, i) for i in range(WARMUP_TASKS)]:
            f.result()
        with Window() as w:
            fs = [ex.submit(noop, i) for i in range(n)]
            concurrent.futures.wait(fs)
        check_results([f.result() for f in fs], n)
    return w.result(n)


def trial_dask(n: int) -> dict[str, Any]:
    """One timed batch on a Dask LocalCluster (2 worker processes × 1 thread)."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.logging.distributed": "error", "distributed.admin.tick.limit": "1h"})
    for name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            pids |= set(client.gather(client.map(_pid, range(WARMUP_TASKS), pure=False)))
        with Window() as w:
            futs = client.map(noop, range(n), pure=False)
            values = client.gather(futs)
        check_results(values, n)
        del futs
    return w.result(n, workers_seen=len(pids))


def _lm_on_cluster(cluster: Any, n: int, sandbox: bool | None) -> dict[str, Any]:
    """One timed loadmaster batch on ``cluster``; checks the history file."""
    import loadmaster

    tmp = tempfile.mkdtemp(prefix="bench-lm-dask-")
    history = os.path.join(tmp, "history.sqlite")
    options: dict[str, Any] = {} if sandbox is None else {"sandbox": sandbox}
    try:
        with loadmaster.Executor(history=history, label="bench-throughput-dask", backend=cluster,
                                 **options) as ex:
            for f in [ex.submit(noop, i) for i in range(WARMUP_TASKS)]:
                f.result()
            with Window() as w:
                fs = [ex.submit(noop, i) for i in range(n)]
                concurrent.futures.wait(fs)
            check_results([f.result() for f in fs], n)
            first, last, run_id = fs[0].task_id, fs[-1].task_id, ex.run_id
            method = fs[0].report.measure_method.value if fs[0].report else "?"
            hosts = sorted({f.report.host for f in fs if f.report})
        con = sqlite3.connect(history)
        try:
            count, ok = con.execute("SELECT count(*), sum(outcome = 'ok') FROM reports "
                                    "WHERE run_id = ? AND task_id BETWEEN ? AND ?", (run_id, first, last)).fetchone()
        finally:
            con.close()
        if count != n or ok != n:
            raise SystemExit(f"history {history}: {count} reports ({ok} ok) for the {n} timed tasks")
        return w.result(n, measure_method=method, hosts=hosts, history_reports=count)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def trial_loadmaster_on_dask(n: int, rnd: int = 0) -> dict[str, Any]:
    """Plain Dask and loadmaster (sandbox off, then on) on one LocalCluster, in one process."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    dask.config.set({"distributed.logging.distributed": "error", "distributed.admin.tick.limit": "1h"})
    for name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        client.gather(client.map(_pid, range(WARMUP_TASKS), pure=False))

        def plain() -> dict[str, Any]:
            with Window() as w:
                futs = [client.submit(noop, i, pure=False) for i in range(n)]
                values = client.gather(futs)
            check_results(values, n)
            return w.result(n)

        batches: dict[str, Callable[[], dict[str, Any]]] = {
            "dask_submit": plain,
            "loadmaster_nosandbox": lambda: _lm_on_cluster(cluster, n, False),
            "loadmaster_sandbox": lambda: _lm_on_cluster(cluster, n, None),
        }
        same = {k: batches[k]() for k in rotated(list(batches), rnd)}
    rec = dict(same["loadmaster_nosandbox"])
    rec["same_cluster"] = same
    rec["ratio_to_dask_submit"] = round(same["loadmaster_nosandbox"]["tasks_per_s"]
                                        / same["dask_submit"]["tasks_per_s"], 3)
    rec["ratio_sandbox_to_dask_submit"] = round(same["loadmaster_sandbox"]["tasks_per_s"]
                                                / same["dask_submit"]["tasks_per_s"], 3)
    return rec


def _pid(_: int) -> int:
    """Return the worker's pid (imports inside: Parsl ships ``__main__`` functions without globals)."""
    import os as os_

    return os_.getpid()


def trial_parsl(n: int) -> dict[str, Any]:
    """One timed batch on Parsl's HighThroughputExecutor (2 workers, LocalProvider)."""
    import logging

    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    logging.getLogger("parsl").setLevel(logging.ERROR)
    # Parsl starts its interchange and worker pool as scripts found on PATH (the venv's bin).
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    tmp = tempfile.mkdtemp(prefix="bench-parsl-")
    config = Config(
        executors=[HighThroughputExecutor(
            label="htex", max_workers_per_node=2, cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            worker_logdir_root=tmp,
        )],
        run_dir=os.path.join(tmp, "runinfo"), strategy="none", usage_tracking=0,
    )
    t_start = time.perf_counter()
    dfk = parsl.load(config)
    try:
        app_noop = parsl.python_app(noop, executors=["htex"])
        app_pid = parsl.python_app(_pid, executors=["htex"])
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:
            pids |= {f.result() for f in [app_pid(i) for i in range(WARMUP_TASKS)]}
        startup = time.perf_counter() - t_start
        with Window() as w:
            fs = [app_noop(i) for i in range(n)]
            values = [f.result() for f in fs]
        check_results(values, n)
    finally:
        dfk.cleanup()
        parsl.clear()
        shutil.rmtree(tmp, ignore_errors=True)
    return w.result(n, workers_seen=len(pids), startup_s=round(startup, 2))


LIMIT_CHILD = r"""
import ctypes, json, os, resource, sys, time
import loadmaster.node.process.zygote  # what the zygote imports: a process of the same kind and size
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "libc":
    libc = ctypes.PyDLL(None, use_errno=True)
    libc.fork.restype = ctypes.c_int
    fork = libc.fork
else:
    fork = os.fork
def run(k):
    for _ in range(k):
        pid = fork()
        if pid == 0:
            os._exit(0)
        os.wait4(pid, 0)
run(int(sys.argv[3]))
rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
s0, k0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
t0 = time.monotonic(); c0 = os.times()
run(n)
t1 = time.monotonic(); c1 = os.times()
s1, k1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu_self = (c1.user + c1.system) - (c0.user + c0.system)
cpu_kids = (c1.children_user + c1.children_system) - (c0.children_user + c0.children_system)
print(json.dumps({"t0": t0, "t1": t1, "rss": rss, "cpu_parent_s": cpu_self, "cpu_children_s": cpu_kids,
                  "faults_parent": s1.ru_minflt - s0.ru_minflt, "faults_children": k1.ru_minflt - k0.ru_minflt}))
"""


def trial_limit(n: int, mode: str) -> dict[str, Any]:
    """Fork + _exit + wait4 from two lean zygote-like processes in parallel; ``n`` forks in all."""
    each = n // 2
    from loadmaster.node.process import bytecode

    bytecode.ensure_fresh()  # as a client does before its zygotes start
    procs = [subprocess.Popen([sys.executable, "-c", LIMIT_CHILD, mode, str(each), str(LIMIT_WARMUP_FORKS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"limit process {p.pid} did not start")
    cpu0 = machine_cpu_s()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=TRIAL_TIMEOUT_S)
        outs.append(json.loads(out.strip().splitlines()[-1]))
    cpu1 = machine_cpu_s()
    wall = max(o["t1"] for o in outs) - min(o["t0"] for o in outs)
    total = each * 2
    return {
        "tasks": total, "wall_s": round(wall, 4), "tasks_per_s": round(total / wall, 1),
        "machine_cpu_us_per_task": round((cpu1 - cpu0) / total * 1e6, 1),
        "forker_rss_mib": round(outs[0]["rss"] / 2**20, 1),
        "cpu_us_per_task": {
            "forker": round(sum(o["cpu_parent_s"] for o in outs) / total * 1e6, 1),
            "child": round(sum(o["cpu_children_s"] for o in outs) / total * 1e6, 1),
        },
        "minor_faults_per_task": {
            "forker": round(sum(o["faults_parent"] for o in outs) / total, 1),
            "child": round(sum(o["faults_children"] for o in outs) / total, 1),
        },
    }


# ── probes for the breakdown (loadmaster-probe trial only) ────────────────────
ZYGOTE_PROBE = r"""
import os, sys, time
from time import perf_counter_ns as now, thread_time_ns as cpu
import loadmaster.node.process.zygote as z
import loadmaster.node.process.taskproc as tp

out_dir = os.environ["BENCH_PROBE_DIR"]
fd = os.open(os.path.join(out_dir, f"child-{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
acc = {}   # name -> [wall ns, cpu ns, calls]
forks = {} # task_id -> [fork_begin, fork_end, msg_seen, reaped, finished]
cur = [0]

def timed(cls, name, key=None):
    orig = getattr(cls, name)
    key = key or name
    def wrapper(*a, **k):
        t, c = now(), cpu()
        try:
            return orig(*a, **k)
        finally:
            s = acc.setdefault(key, [0, 0, 0]); s[0] += now() - t; s[1] += cpu() - c; s[2] += 1
    setattr(cls, name, wrapper)

orig_start = z.Zygote.start
def start(self, order):
    cur[0] = order.task_id
    return orig_start(self, order)
z.Zygote.start = start

orig_fork = z.Zygote._fork
def _fork(self):
    t = now()
    pid = orig_fork(self)
    if pid == 0:
        tp._t_child = (now(), cpu())
        return 0
    forks[cur[0]] = [t, now(), 0, 0, 0]
    return pid
z.Zygote._fork = _fork

orig_send = tp._send
def _send(sock, spill_dir, task_id, *rest, **kw):
    t, c = now(), cpu()
    orig_send(sock, spill_dir, task_id, *rest, **kw)
    t0, c0 = getattr(tp, "_t_child", (0, 0))
    os.write(fd, f"{task_id} {t0} {t} {now()} {c0} {c} {cpu()}\n".encode())
tp._send = _send

orig_finish = z.Zygote._finish
def _finish(self, r, status, ru):
    t = now()
    f = forks.get(r.order.task_id)
    if f is not None:
        f[3] = t
    try:
        return orig_finish(self, r, status, ru)
    finally:
        if f is not None:
            f[4] = now()
z.Zygote._finish = _finish

orig_read_children = z.Zygote._read_children
def _read_children(self, *a, **k):
    t = now()
    before = {tid: self.running[pid].child_msg is None for tid, pid in self.by_task.items() if pid in self.running}
    c = cpu()
    orig_read_children(self, *a, **k)
    s = acc.setdefault("_read_children", [0, 0, 0]); s[0] += now() - t; s[1] += cpu() - c; s[2] += 1
    for tid, was_none in before.items():
        pid = self.by_task.get(tid)
        if was_none and pid in self.running and self.running[pid].child_msg is not None and tid in forks:
            forks[tid][2] = t
z.Zygote._read_children = _read_children

orig_fork2 = z.Zygote._fork
def _fork_cpu(self):  # the fork's own cost, parent side
    t, c = now(), cpu()
    pid = orig_fork2(self)
    if pid:
        s = acc.setdefault("fork", [0, 0, 0]); s[0] += now() - t; s[1] += cpu() - c; s[2] += 1
    return pid
z.Zygote._fork = _fork_cpu

for name in ("start", "_reap", "_finish", "_read_commands", "_tick", "_function"):
    timed(z.Zygote, name)
timed(z.SlotPool, "acquire", "slot_acquire")
timed(z, "write_all", "write_all")

try:
    z.main(sys.argv[1:])
finally:
    import json
    t = os.times()
    with open(os.path.join(out_dir, f"zygote-{os.getpid()}.json"), "w") as fh:
        json.dump({"acc": acc, "forks": forks, "cpu_s": t.user + t.system}, fh)
"""


class Probes:
    """Timing wrappers around the engine's methods (client side) and a probing zygote."""

    def __init__(self) -> None:
        self.acc: dict[str, list[int]] = {}
        self.saved: list[tuple[Any, str, Any]] = []
        self.zygote_dir = tempfile.mkdtemp(prefix="bench-probe-")

    @classmethod
    def install(cls) -> Probes:
        """Wrap the engine's and history's methods; make the client start probing zygotes."""
        import types

        from loadmaster.backends import local
        from loadmaster.node.process import zygote_client
        from loadmaster.plan import history
        from loadmaster.schedule import engine

        p = cls()
        for owner, name, key in (
            (engine.Engine, "_take_submissions", "engine: take submissions"),
            (engine.Engine, "_dispatch", "engine: schedule + pickle + send orders"),
            (engine.Engine, "_finished", "engine: build report, unpickle result, settle future"),
            (engine.Engine, "_flush_history", "engine: history write (SQLite)"),
            (local.LocalBackend, "read", "engine: read + unpickle Done frames"),
        ):
            p._wrap(owner, name, key)
        _ = history
        real_popen = subprocess.Popen
        probe_code = ZYGOTE_PROBE

        def popen(argv: list[str], **kw: Any) -> Any:
            if argv[1] == "-c" and argv[2].endswith(zygote_client.ZYGOTE_BOOT):
                path_part = argv[2][:-len(zygote_client.ZYGOTE_BOOT)]  # the client's sys.path
                argv = [argv[0], "-c", path_part + probe_code, *argv[3:]]
                env = dict(kw.get("env") or os.environ)
                env["BENCH_PROBE_DIR"] = p.zygote_dir
                kw["env"] = env
            return real_popen(argv, **kw)

        shim = types.SimpleNamespace(Popen=popen, TimeoutExpired=subprocess.TimeoutExpired,
                                     DEVNULL=subprocess.DEVNULL)
        p.saved.append((zygote_client, "subprocess", zygote_client.subprocess))
        zygote_client.subprocess = shim
        return p

    def _wrap(self, owner: Any, name: str, key: str) -> None:
        orig = getattr(owner, name)
        acc = self.acc
        wall, cpu = time.perf_counter_ns, time.thread_time_ns

        def wrapper(*a: Any, **k: Any) -> Any:
            t, c = wall(), cpu()
            try:
                return orig(*a, **k)
            finally:
                s = acc.setdefault(key, [0, 0, 0])
                s[0] += wall() - t
                s[1] += cpu() - c
                s[2] += 1

        self.saved.append((owner, name, orig))
        setattr(owner, name, wrapper)

    def reset(self) -> None:
        """Forget what the warm-up accumulated (the engine loop's entry spans the run: not kept)."""
        self.acc.clear()
        for name in os.listdir(self.zygote_dir):
            if name.startswith("child-"):
                os.truncate(os.path.join(self.zygote_dir, name), 0)

    def report(self, n: int) -> dict[str, Any]:
        """Wall and CPU µs per task (and calls) of each wrapped client method over the timed batch."""
        return {k: {"wall_us_per_task": round(v[0] / n / 1000, 1), "cpu_us_per_task": round(v[1] / n / 1000, 1),
                    "calls": v[2]} for k, v in self.acc.items()}

    def uninstall(self) -> None:
        """Put the wrapped methods back and remove the probe files."""
        for owner, name, orig in reversed(self.saved):
            setattr(owner, name, orig)
        shutil.rmtree(self.zygote_dir, ignore_errors=True)


def read_zygote_probes(d: str, n: int) -> dict[str, Any]:
    """Turn the probing zygotes' files into µs per task: medians of per-task spans, totals per method.

    Method totals include the warm-up tasks (the zygote cannot tell them
    apart), so they are divided by ``n + WARMUP_TASKS``.
    """
    acc: dict[str, list[int]] = {}
    forks: dict[int, list[int]] = {}
    child: dict[int, list[int]] = {}
    zygote_cpu_s = 0.0
    for name in os.listdir(d):
        path = os.path.join(d, name)
        if name.startswith("zygote-"):
            with open(path) as fh:
                data = json.load(fh)
            zygote_cpu_s += data["cpu_s"]
            for k, v in data["acc"].items():
                s = acc.setdefault(k, [0, 0, 0])
                for i in range(3):
                    s[i] += v[i]
            forks.update({int(k): v for k, v in data["forks"].items()})
        elif name.startswith("child-"):
            with open(path) as fh:
                for line in fh:
                    tid, *vals = (int(x) for x in line.split())
                    child[tid] = vals
    names = {
        "fork": "zygote: fork() returns in the parent",
        "first": "child: fork() → first Python line (wall)",
        "first_cpu": "child: CPU before its first Python line",
        "run": "child: setup, unpickle, run, pickle (wall)",
        "run_cpu": "child: setup, unpickle, run, pickle (CPU)",
        "send": "child: send the result datagram (wall)",
        "seen": "zygote: result datagram read, after sent",
        "teardown": "child: sent → exit seen by the zygote",
        "finish": "zygote: wait4, cgroup peak, build Done",
        "latency": "zygote: fork → Done queued (task latency)",
    }
    spans: dict[str, list[float]] = {k: [] for k in names}
    us = 1 / 1000
    for tid, vals in child.items():
        f = forks.get(tid)
        if f is None or not all(f) or len(vals) < 6:
            continue
        child_start, send0, send1, c_first, c_send0, _c_send1 = vals
        fb, fe, seen, reaped, fin = f
        spans["fork"].append((fe - fb) * us)
        spans["first"].append((child_start - fb) * us)
        spans["first_cpu"].append(c_first * us)
        spans["run"].append((send0 - child_start) * us)
        spans["run_cpu"].append((c_send0 - c_first) * us)
        spans["send"].append((send1 - send0) * us)
        spans["seen"].append((seen - send1) * us)
        spans["teardown"].append((reaped - send1) * us)
        spans["finish"].append((fin - reaped) * us)
        spans["latency"].append((fin - fb) * us)
    total = n + WARMUP_TASKS
    return {
        "tasks_traced": len(child),
        "median_us": {names[k]: round(statistics.median(v), 1) for k, v in spans.items() if v},
        "zygote_methods": {k: {"wall_us_per_task": round(v[0] / total / 1000, 1),
                               "cpu_us_per_task": round(v[1] / total / 1000, 1), "calls": v[2]}
                           for k, v in acc.items()},
        "zygote_cpu_us_per_task_whole_life": round(zygote_cpu_s / total * 1e6, 1),
    }


# ── the driver ────────────────────────────────────────────────────────────────
def code_under_test() -> dict[str, Any]:
    """Which loadmaster the trials import (``PYTHONPATH`` may point at another tree), its commit, dirtiness."""
    probe = subprocess.run([sys.executable, "-c", "import loadmaster, os; print(os.path.dirname(loadmaster.__file__))"],
                           capture_output=True, text=True, cwd=REPO)
    pkg = probe.stdout.strip()
    out: dict[str, Any] = {"package": pkg}
    if pkg:
        git = ["git", "-C", pkg]
        rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True)
        out["commit"] = rev.stdout.strip() or None
        out["uncommitted_files"] = len(dirty.stdout.splitlines()) if rev.returncode == 0 else None
    return out


def run_trial(name: str, n: int, rnd: int = 0) -> dict[str, Any]:
    """Run one trial in a fresh process; return its JSON record (or the error)."""
    t = time.monotonic()
    load = load_average()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--trial", name, "--tasks", str(n),
                               "--round", str(rnd)],
                              capture_output=True, text=True, timeout=TRIAL_TIMEOUT_S, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {TRIAL_TIMEOUT_S:.0f} s", "load_before": load}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        return {"error": f"exit status {proc.returncode}: {tail}", "load_before": load}
    rec: dict[str, Any] = json.loads(lines[-1])
    rec["load_before"] = load
    rec["trial_s"] = round(time.monotonic() - t, 1)
    return rec


def rotated(items: list[str], k: int) -> list[str]:
    """``items`` rotated left by ``k``."""
    k %= max(1, len(items))
    return items[k:] + items[:k]


def median_rate(runs: list[dict[str, Any]]) -> float | None:
    """Median tasks/s of the runs that succeeded."""
    rates = [r["tasks_per_s"] for r in runs if "tasks_per_s" in r]
    return round(statistics.median(rates), 1) if rates else None


def main(argv: list[str] | None = None) -> int:
    """Entry point: the driver, or one trial with ``--trial``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=2000, help="no-op tasks per timed batch (default 2000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed batches per system (default 5)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--no-limit", action="store_true", help="skip the fork-limit measurement")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the instrumented loadmaster run")
    ap.add_argument("--out", default=RESULTS, help="where to write the JSON (default bench/results/throughput.json)")
    ap.add_argument("--markdown", metavar="JSON", help="print the tables of a results file as Markdown, run nothing")
    ap.add_argument("--trial", help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.markdown:
        with open(args.markdown) as fh:
            print("\n".join(markdown(json.load(fh))))
        return 0

    if args.trial:
        trials: dict[str, Callable[[int], dict[str, Any]]] = {
            "loadmaster": trial_loadmaster, "processpool": trial_processpool, "dask": trial_dask,
            "parsl": trial_parsl, "limit-os": lambda n: trial_limit(n, "os"),
            "limit-libc": lambda n: trial_limit(n, "libc"),
            "loadmaster-nosandbox": lambda n: trial_loadmaster(n, sandbox=False),
            "loadmaster-probe": lambda n: trial_loadmaster(n, probe=True),
            "loadmaster-nosandbox-probe": lambda n: trial_loadmaster(n, probe=True, sandbox=False),
            "loadmaster-on-dask": lambda n: trial_loadmaster_on_dask(n, args.round),
        }
        with contextlib.redirect_stdout(sys.stderr):
            rec = trials[args.trial](args.tasks)
        print(json.dumps(rec))
        return 0

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad or args.repeats < 1 or args.tasks < 2:
        ap.error(f"--peers: unknown {bad}; accepted: {', '.join(PEERS)}" if bad else "--tasks ≥ 2, --repeats ≥ 1")
    systems = peers + ([] if args.no_limit else ["limit-libc", "limit-os"])
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    code = code_under_test()
    started = time.time()
    print(f"throughput: {args.tasks} no-op tasks × {args.repeats} rounds of {', '.join(systems)}; "
          f"load {load_average()}", flush=True)
    print(f"loadmaster under test: {code.get('package')} at {code.get('commit')}"
          f" ({code.get('uncommitted_files')} uncommitted files)", flush=True)
    for rnd in range(args.repeats):
        for name in rotated(systems, rnd):
            rec = run_trial(name, args.tasks, rnd)
            rec["round"] = rnd
            runs[name].append(rec)
            if "tasks_per_s" in rec:
                shown = f"{rec['tasks_per_s']:>8.0f} tasks/s"
            else:
                shown = f"skipped: {rec['skipped']}" if "skipped" in rec else f"FAILED: {rec['error']}"
            print(f"  round {rnd + 1}  {name:<12} {shown}", flush=True)

    breakdown: dict[str, Any] = {}
    if not args.no_breakdown:
        for name in ("loadmaster", "loadmaster-nosandbox"):
            if name in peers and not all("skipped" in r for r in runs[name]):
                breakdown[name] = run_trial(f"{name}-probe", args.tasks)

    medians = {s: median_rate(r) for s, r in runs.items()}
    ratios: dict[str, float | None] = {}
    for mine in ("loadmaster", "loadmaster-nosandbox"):
        lm = medians.get(mine)
        for peer in ("parsl", "dask", "processpool", "limit-libc", "limit-os"):
            other = medians.get(peer)
            if lm and other:
                ratios[f"{mine}/{peer}"] = round(lm / other, 3)
    on_dask = [r for r in runs.get("loadmaster-on-dask", []) if "ratio_to_dask_submit" in r]
    if on_dask:  # per run, on one cluster: loadmaster on Dask against plain client.submit there
        ratios["loadmaster-on-dask/dask-submit (same cluster, median of runs)"] = round(
            statistics.median(r["ratio_to_dask_submit"] for r in on_dask), 3)
        ratios["loadmaster-on-dask-sandbox/dask-submit (same cluster, median of runs)"] = round(
            statistics.median(r["ratio_sandbox_to_dask_submit"] for r in on_dask), 3)
    result = {
        "benchmark": "throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "host": platform.node(), "kernel": platform.release(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "uid": os.getuid(), "loadmaster": code,
        "load_before": runs and next(iter(runs.values()))[0].get("load_before"), "load_after": load_average(),
        "tasks": args.tasks, "repeats": args.repeats, "warmup_tasks": WARMUP_TASKS,
        "medians_tasks_per_s": medians, "ratios": ratios, "runs": runs, "breakdown": breakdown,
        "elapsed_s": round(time.time() - started, 1),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
        fh.write("\n")
    print_summary(result)
    print(f"wrote {os.path.relpath(args.out)} in {result['elapsed_s']:.0f} s")
    failed = [s for s, r in runs.items() if any("error" in x for x in r)]
    failed += [f"{s}-probe" for s, b in breakdown.items() if "error" in b]
    if failed:
        print(f"FAILED runs: {', '.join(failed)} (see 'error' in the JSON)")
    return 1 if failed else 0


def _lines(result: dict[str, Any]) -> Iterator[str]:
    yield ""
    yield f"{'system':<14} {'median tasks/s':>14}  runs"
    for s, m in result["medians_tasks_per_s"].items():
        if m is None and all("skipped" in r for r in result["runs"][s]):
            continue
        rates = ", ".join(f"{r['tasks_per_s']:.0f}" for r in result["runs"][s] if "tasks_per_s" in r)
        yield f"{s:<14} {m if m is not None else 'n/a':>14}  {rates}"
    yield ""
    for k, v in result["ratios"].items():
        label = "fraction of the fork limit" if "limit" in k else "ratio"
        yield f"{k:<24} {v:6.2f}  ({label})"
    for name, b in (result.get("breakdown") or {}).items():
        yield from _breakdown_lines(name, b)


def _breakdown_lines(name: str, b: dict[str, Any]) -> Iterator[str]:
    if "probes_zygote" in b:
        z = b["probes_zygote"]
        yield ""
        yield f"where a {name} task's time goes (instrumented run, {b['tasks_per_s']:.0f} tasks/s; µs per task):"
        yield f"  {'CPU, whole processes':<48} {'cpu':>8}"
        for k, v in b["cpu_us_per_task"].items():
            yield f"  {k:<48} {v:8.1f}"
        yield f"  {'client (engine thread) methods':<48} {'cpu':>8} {'wall':>8}"
        yield f"  {'ex.submit (main thread, wall)':<48} {'':>8} {b['submit_us_per_task']:8.1f}"
        for k, v in b["probes_client"].items():
            yield f"  {k:<48} {v['cpu_us_per_task']:8.1f} {v['wall_us_per_task']:8.1f}"
        yield f"  {'zygote methods (nested: start ⊃ fork)':<48} {'cpu':>8} {'wall':>8}"
        for k, v in z["zygote_methods"].items():
            yield f"  {k:<48} {v['cpu_us_per_task']:8.1f} {v['wall_us_per_task']:8.1f}"
        yield f"  {'one task, medians':<48} {'':>8} {'µs':>8}"
        for k, v in z["median_us"].items():
            yield f"  {k:<48} {'':>8} {v:8.1f}"


LABELS = {
    "loadmaster": "loadmaster (defaults)", "loadmaster-nosandbox": "loadmaster, `sandbox=False`",
    "processpool": "`ProcessPoolExecutor(2)`", "dask": "Dask `LocalCluster` 2×1", "parsl": "Parsl HTEX, 2 workers",
    "limit-libc": "limit: libc `fork`+`_exit`+`wait4`, 2 forkers", "limit-os": "limit: `os.fork`, 2 forkers",
}


def _median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    vals = []
    for r in runs:
        v: Any = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, int | float):
            vals.append(float(v))
    return statistics.median(vals) if vals else None


def markdown(result: dict[str, Any]) -> Iterator[str]:
    """The results as Markdown tables (for bench/README.md)."""
    code = result.get("loadmaster") or {}
    yield (f"{result['when']}, {result['tasks']} tasks × {result['repeats']} rounds, loadmaster at "
           f"{code.get('commit')} ({code.get('uncommitted_files')} uncommitted files), load average "
           f"{result['load_before']} before, {result['load_after']} after.")
    yield ""
    yield "| system | median tasks/s | runs (tasks/s) |"
    yield "|---|---:|---|"
    for s, m in result["medians_tasks_per_s"].items():
        if m is None:
            continue
        rates = ", ".join(f"{r['tasks_per_s']:,.0f}" for r in result["runs"][s] if "tasks_per_s" in r)
        yield f"| {LABELS.get(s, s)} | {m:,.0f} | {rates} |"
    yield ""
    yield "| ratio of medians | value |"
    yield "|---|---:|"
    for k, v in result["ratios"].items():
        yield f"| {k} | {v:.2f} |"
    yield ""
    yield "CPU and minor page faults per task, medians over the runs (µs; faults):"
    yield ""
    yield ("| system | client engine | client main | zygotes / forker | tasks / children | total "
           "| faults: zygote | faults: task |")
    yield "|---|---:|---:|---:|---:|---:|---:|---:|"
    for s in ("loadmaster", "loadmaster-nosandbox", "limit-libc", "limit-os"):
        runs = result["runs"].get(s) or []
        if not any("cpu_us_per_task" in r for r in runs):
            continue
        if s.startswith("limit"):
            cells = [None, None, _median_of(runs, "cpu_us_per_task", "forker"),
                     _median_of(runs, "cpu_us_per_task", "child")]
            faults = [_median_of(runs, "minor_faults_per_task", "forker"),
                      _median_of(runs, "minor_faults_per_task", "child")]
        else:
            cells = [_median_of(runs, "cpu_us_per_task", k)
                     for k in ("client_engine", "client_main", "zygotes", "tasks")]
            faults = [_median_of(runs, "minor_faults_per_task", k)
                      for k in ("zygote_minor_faults", "task_minor_faults")]
        total = sum(c for c in cells if c is not None)
        row = " | ".join("–" if c is None else f"{c:,.0f}" for c in [*cells, total, *faults])
        yield f"| {LABELS.get(s, s)} | {row} |"
    for name, b in (result.get("breakdown") or {}).items():
        if "probes_zygote" not in b:
            continue
        z = b["probes_zygote"]
        yield ""
        yield (f"Instrumented {LABELS.get(name, name)} run ({b['tasks_per_s']:,.0f} tasks/s with the probes), "
               "µs per task:")
        yield ""
        yield "| where | CPU | wall |"
        yield "|---|---:|---:|"
        yield f"| client: `ex.submit` (main thread) | | {b['submit_us_per_task']:.1f} |"
        for k, v in b["probes_client"].items():
            yield f"| client {k} | {v['cpu_us_per_task']:.1f} | {v['wall_us_per_task']:.1f} |"
        for k, v in z["zygote_methods"].items():
            yield f"| zygote `{k}` | {v['cpu_us_per_task']:.1f} | {v['wall_us_per_task']:.1f} |"
        yield ""
        yield "| one task's path (medians) | µs |"
        yield "|---|---:|"
        for k, v in z["median_us"].items():
            yield f"| {k} | {v:.1f} |"


def print_summary(result: dict[str, Any]) -> None:
    """Print the medians, the ratios and the breakdown."""
    for line in _lines(result):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
