"""Packing memory-unsafe tasks: loadmaster's strategies against an oracle and the peers (issue 4).

Run (as root, the node is a memory cgroup; under ``flock /tmp/lm-bench.lock`` where
other benchmarks share the machine):
``.venv/bin/python bench/packing.py [--systems loadmaster,processpool,parsl,parallel,workqueue]
[--tasks 80] [--seed 4] [--limit-gib 3] [--quick] [--warm]``.
Writes ``bench/results/packing.json`` (the task list, the oracle, every
system's per-task records and summary) and prints a table with ratios to the
oracle.

Process model: this script (the *driver*, run by the venv's Python) creates a
v1 memory cgroup ``<own memory cgroup>/lm-packing-<id>`` with
``memory.limit_in_bytes`` = ``--limit-gib``: the *node*. For each system it
starts one *trial* process (``packing.py --trial NAME``) whose ``preexec_fn``
writes to the node's ``cgroup.procs``, so the trial and everything it starts
(zygotes and task processes, pool workers, Parsl's interchange and workers, GNU
parallel's jobs, the Work Queue worker) are charged to the node and killed by
the kernel when it is full. Trials run one after another; only one system is
alive at a time. Each trial warms its system up (excluded), then times the
whole task list from the first submit to the last result and writes a JSON file
the driver reads. Leftover processes in the node are killed between trials.

The workload (``bench/workload.py``): tasks that touch their memory and hold it
while computing; memory and duration grow with the input size; two large ones
do not fit together.

What each system is (2 tasks at a time at most everywhere: 2 cores):

* ``lm-<strategy>``: ``loadmaster.Executor(history=<fresh file>,
  strategy=<strategy>, ledger=<private dir>)``; each task submitted as the
  function ``workload.run_task`` with ``category=`` and ``size=`` (its input
  bytes), 1 core (the default). ``fixed`` is given the largest task's memory
  (``resources={"memory": ...}``): the user who asks for the worst case. With
  ``--warm``, each strategy also runs a second time on the same history
  (``lm-<strategy>-warm``). ``lm-<strategy>@<order>`` passes
  ``Executor(order=<order>)`` (``longest-first``, the default, or ``fifo``),
  e.g. ``--systems lm-size-aware,lm-size-aware@fifo`` to compare the orders.
* ``processpool``: ``concurrent.futures.ProcessPoolExecutor(2)`` running the
  same function; nothing limits memory. A worker killed by the kernel breaks
  the pool and fails every task not yet finished, as it would for a user.
* ``parsl``: Parsl HTEX on a ``LocalProvider`` (one block), ``cores_per_worker=1``
  and ``mem_per_worker`` = the largest task's memory, ``retries=3``; a
  ``python_app`` calling the function.
* ``parallel``: GNU parallel ``-j 2 --memfree <largest task> --retries 3``
  running the task as a command with ``/usr/bin/python3``.
* ``workqueue``: Work Queue (Debian cctools 9.9, ``/usr/bin/python3``), one
  local ``work_queue_worker --cores 2 --memory <node MB>``, monitoring on
  (``enable_monitoring``, which enforces allocations), every category in
  ``WORK_QUEUE_ALLOCATION_MODE_MAX_THROUGHPUT`` (automatic categories), each
  task ``specify_cores(1)`` and no memory, as a command.
* ``oracle`` (computed, not run): knows each task's true peak and duration.
  Lower bound ``max(Σ peak·duration / C, Σ duration / cores, longest)`` and the
  best of four greedy list schedules (submission order, longest first, largest
  memory first, largest memory·time first) with ``C`` = the node's whole limit.

Measures per system: makespan; *memory utilisation* = Σ true peak·duration /
(node limit × makespan) (how full the node's memory was, on average);
*allocation efficiency* = Σ true peak·wall of the successful attempts / Σ
allocated memory·wall of every attempt (systems that allocate: loadmaster,
Parsl, Work Queue); kernel OOM kills; failed tasks; retries.

Counting OOM kills (cgroup v1, measured here): ``memory.oom_control``
``oom_kill`` counts kills of processes *in that cgroup only* — a kill in a
child cgroup does not show in its parent, and a kill forced by the parent's
limit counts in the child where the victim lived. ``memory.failcnt`` counts
the times a charge hit *that* cgroup's limit. So per trial: kills in the node
= its ``oom_kill`` delta; kills inside loadmaster's per-task slots (children
of the node) = the sum of the slots' counters, read by a poller while they
exist; node-limit hits = the node's ``failcnt`` delta. loadmaster's
intentional kills (a task over its own allocation, killed in its slot and
retried bigger) are its exhausted attempts from the history; slot kills beyond
those, or any node-limit hit, would be node OOM.

Does not cover: sizing accuracy per task (see ``loadmaster history``), more
than one node, throughput of tiny tasks (``bench/throughput.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "packing.json")
WORKLOAD = os.path.join(HERE, "workload.py")
SYSTEM_PYTHON = "/usr/bin/python3"
VENV_PYTHON = os.path.join(REPO, ".venv", "bin", "python")
STRATEGIES = ("learned", "size-aware", "max-seen", "max-throughput", "min-waste", "fixed")
PEERS = ("processpool", "parsl", "parallel", "workqueue")
CORES = 2
MiB = 1 << 20
GiB = 1 << 30
TRIAL_TIMEOUT_S = 600.0

sys.path.insert(0, HERE)
import workload  # noqa: E402  (the bench directory is not a package)


# ══ trial side: runs inside the node cgroup, one system per process ═══════════
def _record(t: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"id": t["id"], "ok": False, "error": None, "start": None, "end": None,
            "attempts": 1, "alloc": [], **kw}


def trial_loadmaster(tasks: list[dict[str, Any]], strategy: str, history: str,
                     order: str | None = None) -> dict[str, Any]:
    """Run the tasks on a loadmaster Executor with ``strategy`` (and ``order``); history in ``history``."""
    import sqlite3

    import cloudpickle

    import loadmaster

    cloudpickle.register_pickle_by_value(workload)
    ledger_dir = tempfile.mkdtemp(prefix="lm-packing-ledger-")
    info: dict[str, Any] = {"strategy": strategy, "order": order or "default"}
    t_start = time.time()
    kw: dict[str, Any] = {"order": order} if order else {}
    ex = loadmaster.Executor(history=history, strategy=strategy, ledger=ledger_dir,
                             label=f"packing-{strategy}", **kw)
    info["node_memory"] = ex.node.memory
    info["capacity_memory"] = ex.capacity.memory
    info["memory_source"] = ex.capacity.sources.get("memory")
    info["measure_method"] = str(ex.measure_method)
    largest = max(t["true_peak"] for t in tasks)
    res = {"memory": largest} if strategy == "fixed" else None
    ex.options(category="warmup").submit(workload.run_task, 1.0, 0.05).result()
    startup = time.time() - t_start
    t0 = time.time()
    futs = [ex.options(category=t["category"], size=t["size"], resources=res).submit(
        workload.run_task, t["mb"], t["seconds"]) for t in tasks]
    recs = []
    for t, f in zip(tasks, futs, strict=True):
        rec = _record(t)
        try:
            out = f.result()
            rec.update(ok=True, start=out["start"], end=out["end"])
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
        r = f.report
        if r is not None:
            rec.update(attempts=r.attempts, peak=r.peak_memory, outcome=str(r.outcome),
                       final_alloc=r.allocation.memory, lm_task_id=r.task_id)
            if rec["start"] is None:
                rec.update(start=r.started_at, end=r.finished_at)
        recs.append(rec)
    t1 = time.time()
    run_id = ex.run_id
    ex.shutdown()
    # Every attempt (exhausted ones too) is a row of the history: its allocation and wall time.
    by_task: dict[int, list[list[Any]]] = {}
    with contextlib.closing(sqlite3.connect(history)) as db:
        for tid, alloc, wall, outcome, exhausted, started, finished in db.execute(
                "SELECT task_id, alloc_memory, wall_time, outcome, exhausted, started_at, finished_at "
                "FROM reports WHERE run_id = ? ORDER BY id", (run_id,)):
            by_task.setdefault(tid, []).append([alloc, wall, outcome, exhausted, started, finished])
    exhausted = 0
    for rec in recs:
        rows = by_task.get(rec.get("lm_task_id", -1), [])
        rec["alloc"] = [[a, w] for a, w, *_ in rows]
        rec["attempt_times"] = [[s, f] for *_, s, f in rows]  # each attempt's start and end (time.time())
        exhausted += sum(1 for _a, _w, _o, e, *_ in rows if e == "memory")
    info["exhausted_attempts"] = exhausted
    shutil.rmtree(ledger_dir, ignore_errors=True)
    return {"t_submit": t0, "t_done": t1, "startup_s": startup, "tasks": recs, "info": info}


def trial_processpool(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the tasks on ``ProcessPoolExecutor(CORES)``; a broken pool fails what is left."""
    import concurrent.futures as cf

    t_start = time.time()
    with cf.ProcessPoolExecutor(CORES) as pool:
        list(pool.map(workload.run_task, [1.0] * CORES, [0.05] * CORES))
        startup = time.time() - t_start
        t0 = time.time()
        futs = [pool.submit(workload.run_task, t["mb"], t["seconds"]) for t in tasks]
        recs = []
        for t, f in zip(tasks, futs, strict=True):
            rec = _record(t)
            try:
                out = f.result()
                rec.update(ok=True, start=out["start"], end=out["end"])
            except Exception as exc:
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            recs.append(rec)
        t1 = time.time()
    return {"t_submit": t0, "t_done": t1, "startup_s": startup, "tasks": recs, "info": {}}


def _parsl_app(mb: float, seconds: float) -> dict[str, Any]:
    import workload as w  # found through PYTHONPATH in the worker

    return w.run_task(mb, seconds)


def trial_parsl(tasks: list[dict[str, Any]], run_dir: str) -> dict[str, Any]:
    """Run the tasks on Parsl HTEX with ``mem_per_worker`` set for the largest task."""
    import glob
    import re

    import parsl
    from parsl.app.app import python_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    largest_gb = max(t["true_peak"] for t in tasks) / GiB
    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    htex = HighThroughputExecutor(
        label="htex", cores_per_worker=1, mem_per_worker=round(largest_gb + 0.05, 2),
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        worker_logdir_root=run_dir,
    )
    t_start = time.time()
    dfk = parsl.load(Config(executors=[htex], retries=3, run_dir=run_dir, strategy="none"))
    app = python_app(_parsl_app, executors=["htex"])
    for f in [app(1.0, 0.05) for _ in range(CORES)]:
        f.result()
    startup = time.time() - t_start
    t0 = time.time()
    futs = [app(t["mb"], t["seconds"]) for t in tasks]
    recs = []
    alloc = int(round(largest_gb + 0.05, 2) * GiB)
    for t, f in zip(tasks, futs, strict=True):
        rec = _record(t)
        try:
            out = f.result()
            rec.update(ok=True, start=out["start"], end=out["end"])
            rec["alloc"] = [[alloc, out["end"] - out["start"]]]
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rec["attempts"] = 1 + int(f.task_record.get("fail_count", 0) or 0)
        recs.append(rec)
    t1 = time.time()
    dfk.cleanup()
    info: dict[str, Any] = {"mem_per_worker_gb": round(largest_gb + 0.05, 2)}
    for path in glob.glob(os.path.join(run_dir, "**", "manager.log"), recursive=True):
        with open(path, errors="replace") as fh:
            m = re.search(r"Manager will spawn (\d+) workers", fh.read())
        if m:
            info["workers_spawned"] = int(m.group(1))
    return {"t_submit": t0, "t_done": t1, "startup_s": startup, "tasks": recs, "info": info}


def trial_parallel(tasks: list[dict[str, Any]], workdir: str) -> dict[str, Any]:
    """Run the tasks as commands under GNU parallel ``--memfree``."""
    largest_mib = max(t["true_peak"] for t in tasks) // MiB + 1
    table = os.path.join(workdir, "tasks.tsv")
    joblog = os.path.join(workdir, "joblog")
    with open(table, "w") as fh:
        for t in tasks:
            fh.write(f"{t['id']}\t{t['mb']}\t{t['seconds']}\n")
    cmd = ["parallel", "-j", str(CORES), "--memfree", f"{largest_mib}M", "--retries", "3",
           "--joblog", joblog, "--colsep", "\t",
           SYSTEM_PYTHON, WORKLOAD, "task", "--mb", "{2}", "--seconds", "{3}", "::::", table]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    t1 = time.time()
    outs: dict[float, dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            d = json.loads(line)
            outs[round(d["mb"], 1)] = d  # mb identifies the task here (see below)
    attempts: dict[int, list[dict[str, str]]] = {}
    with open(joblog) as fh:
        header = fh.readline().rstrip("\n").split("\t")
        for line in fh:
            row = dict(zip(header, line.rstrip("\n").split("\t"), strict=False))
            attempts.setdefault(int(row["Seq"]), []).append(row)
    recs = []
    for seq, t in enumerate(tasks, start=1):
        rows = attempts.get(seq, [])
        rec = _record(t, attempts=max(1, len(rows)))
        last = rows[-1] if rows else None
        if last is not None and last["Exitval"] == "0" and last["Signal"] == "0":
            start = float(last["Starttime"])
            rec.update(ok=True, start=start, end=start + float(last["JobRuntime"]))
        elif last is not None:
            rec["error"] = f"exit {last['Exitval']} signal {last['Signal']}"
        else:
            rec["error"] = "never run"
        recs.append(rec)
    info = {"memfree": f"{largest_mib}M", "returncode": proc.returncode,
            "stderr_tail": proc.stderr[-500:]}
    return {"t_submit": t0, "t_done": t1, "startup_s": 0.0, "tasks": recs, "info": info}


def trial_workqueue(tasks: list[dict[str, Any]], workdir: str, node_mb: int) -> dict[str, Any]:
    """Run the tasks as commands on Work Queue with automatic categories (system Python)."""
    import work_queue as wq

    q = wq.WorkQueue(port=0, debug_log=os.path.join(workdir, "wq.debug"))
    q.enable_monitoring(os.path.join(workdir, "monitor"), watchdog=True)
    for cat in workload.CATEGORIES:
        q.specify_category_mode(cat, wq.WORK_QUEUE_ALLOCATION_MODE_MAX_THROUGHPUT)
    q.specify_category_mode("warmup", wq.WORK_QUEUE_ALLOCATION_MODE_MAX_THROUGHPUT)
    with open(os.path.join(workdir, "worker.err"), "w") as err:
        worker = subprocess.Popen(
            ["work_queue_worker", "--cores", str(CORES), "--memory", str(node_mb), "--disk", "20000",
             "--single-shot", "-t", "900", "localhost", str(q.port)],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=err)
    t_start = time.time()
    try:
        for _ in range(CORES):
            w = wq.Task(f"{SYSTEM_PYTHON} {WORKLOAD} task --mb 1 --seconds 0.05")
            w.specify_category("warmup")
            w.specify_cores(1)
            q.submit(w)
        while not q.empty():
            q.wait(5)
        startup = time.time() - t_start
        t0 = time.time()
        by_id: dict[int, dict[str, Any]] = {}
        for t in tasks:
            task = wq.Task(f"{SYSTEM_PYTHON} {WORKLOAD} task --mb {t['mb']} --seconds {t['seconds']}")
            task.specify_category(t["category"])
            task.specify_cores(1)
            task.specify_max_retries(5)
            by_id[q.submit(task)] = t
        recs: dict[int, dict[str, Any]] = {}
        while not q.empty():
            task = q.wait(5)
            if task is None:
                continue
            t = by_id[task.id]
            rec = _record(t, attempts=max(1, int(task._task.try_count)))
            alloc_mb = task.resources_allocated.memory if task.resources_allocated else -1
            rec["final_alloc"] = alloc_mb * 1000 * 1000 if alloc_mb and alloc_mb > 0 else None
            rec["exhausted_attempts"] = task.exhausted_attempts
            rec["result"] = task.result_str
            if task.result == wq.WORK_QUEUE_RESULT_SUCCESS and task.return_status == 0:
                try:
                    out = json.loads(task.output.strip().splitlines()[-1])
                    rec.update(ok=True, start=out["start"], end=out["end"])
                    if rec["final_alloc"]:
                        rec["alloc"] = [[rec["final_alloc"], out["end"] - out["start"]]]
                except (ValueError, IndexError) as exc:
                    rec["error"] = f"unreadable output: {exc}: {task.output[-200:]!r}"
            else:
                rec["error"] = f"{task.result_str} status {task.return_status}"
            recs[t["id"]] = rec
        t1 = time.time()
        info = {"worker_memory_mb": node_mb}
        return {"t_submit": t0, "t_done": t1, "startup_s": startup,
                "tasks": [recs[t["id"]] for t in tasks], "info": info}
    finally:
        worker.kill()
        worker.wait()


def trial_main(args: argparse.Namespace) -> int:
    """Run one trial (``--trial NAME``) and write its JSON to ``--result``."""
    with open(args.workload) as fh:
        tasks = json.load(fh)
    work = tempfile.mkdtemp(prefix=f"lm-packing-{args.trial}-")
    try:
        name = args.trial
        if name.startswith("lm-"):
            strategy, _, order = name[3:].removesuffix("-warm").partition("@")
            out = trial_loadmaster(tasks, strategy, args.history or os.path.join(work, "history.sqlite"),
                                   order or None)
        elif name == "processpool":
            out = trial_processpool(tasks)
        elif name == "parsl":
            out = trial_parsl(tasks, work)
        elif name == "parallel":
            out = trial_parallel(tasks, work)
        elif name == "workqueue":
            out = trial_workqueue(tasks, work, args.node_mb)
        else:
            raise SystemExit(f"unknown trial {name!r}")
    finally:
        if args.keep_work is None:
            shutil.rmtree(work, ignore_errors=True)
    out["system"] = args.trial
    with open(args.result, "w") as fh:
        json.dump(out, fh)
    return 0


# ══ driver side: the node cgroup, counters, the oracle, the table ═════════════
class NodeCgroup:
    """A v1 memory cgroup standing for the node: limit, entry, counters, cleanup."""

    def __init__(self, limit_bytes: int) -> None:
        from loadmaster.node.measure import cgroupfs

        parent = cgroupfs.own_dir("memory")
        if os.geteuid() != 0 or parent is None or not cgroupfs.can_create_child("memory"):
            raise SystemExit("packing.py needs root and a writable v1 memory cgroup to build the node "
                             f"(euid {os.geteuid()}, own memory cgroup {parent}); run it as root")
        self.path = os.path.join(parent, f"lm-packing-{uuid.uuid4().hex[:8]}")
        os.mkdir(self.path)
        self.limit = limit_bytes
        self.write("memory.limit_in_bytes", str(limit_bytes))
        self._slot_kills: dict[str, int] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def write(self, name: str, value: str) -> None:
        """Write ``value`` to the control file ``name``."""
        with open(os.path.join(self.path, name), "w") as fh:
            fh.write(value)

    def read(self, name: str, path: str | None = None) -> str:
        """Return the text of control file ``name`` (of ``path``, default the node)."""
        with open(os.path.join(path or self.path, name)) as fh:
            return fh.read()

    def oom_kills(self, path: str | None = None) -> int:
        """The ``oom_kill`` counter of ``memory.oom_control`` (kills of processes in that cgroup)."""
        for line in self.read("memory.oom_control", path).splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def counters(self) -> dict[str, int]:
        """The node's OOM kills, limit hits (``failcnt``) and peak usage."""
        return {"oom_kill": self.oom_kills(), "failcnt": int(self.read("memory.failcnt")),
                "max_usage": int(self.read("memory.max_usage_in_bytes"))}

    def enter(self) -> None:
        """``preexec_fn``: move the calling (forked) process into the node."""
        self.write("cgroup.procs", "0")

    def procs(self) -> list[int]:
        """Every pid in the node, its children cgroups included."""
        pids: list[int] = []
        for root, _dirs, _files in os.walk(self.path):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in self.read("cgroup.procs", root).split()]
        return pids

    def kill_all(self) -> int:
        """SIGKILL every process left in the node; return how many there were."""
        n = 0
        for _ in range(50):
            pids = self.procs()
            if not pids:
                return n
            n = max(n, len(pids))
            for p in pids:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.1)
        return n

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            self._scan()

    def _scan(self) -> None:
        for name in os.listdir(self.path):
            sub = os.path.join(self.path, name)
            if os.path.isdir(sub):
                with contextlib.suppress(OSError, ValueError):
                    self._slot_kills[sub] = max(self._slot_kills.get(sub, 0), self.oom_kills(sub))

    @contextlib.contextmanager
    def watching_slots(self) -> Iterator[dict[str, int]]:
        """Poll the children cgroups' OOM kill counters (loadmaster's slots) while inside."""
        self._slot_kills = {}
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()
        try:
            yield self._slot_kills
        finally:
            self._stop.set()
            self._poller.join()
            with contextlib.suppress(OSError):
                self._scan()

    def remove(self) -> None:
        """Kill what is left and remove the cgroup (and any children left behind)."""
        self.kill_all()
        for root, _dirs, _files in sorted(os.walk(self.path), key=lambda x: -len(x[0])):
            with contextlib.suppress(OSError):
                os.rmdir(root)


def ensure_tools(systems: list[str]) -> dict[str, str]:
    """Install GNU parallel / Work Queue with apt when root and missing; return why a system cannot run."""
    missing: dict[str, str] = {}
    need: list[str] = []
    if "parallel" in systems and shutil.which("parallel") is None:
        need.append("parallel")
    wq_ok = subprocess.run([SYSTEM_PYTHON, "-c", "import work_queue"], capture_output=True).returncode == 0
    if "workqueue" in systems and (not wq_ok or shutil.which("work_queue_worker") is None):
        need += ["coop-computing-tools", "python3-workqueue"]
    if need and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(need)} with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", *need], env=env, capture_output=True)
    if "parallel" in systems and shutil.which("parallel") is None:
        missing["parallel"] = "GNU parallel is not installed (Debian package 'parallel') and apt-get failed"
    if "workqueue" in systems:
        ok = subprocess.run([SYSTEM_PYTHON, "-c", "import work_queue"], capture_output=True).returncode == 0
        if not ok or shutil.which("work_queue_worker") is None:
            missing["workqueue"] = ("Work Queue is not installed (Debian 'coop-computing-tools' and "
                                    "'python3-workqueue' for /usr/bin/python3) and apt-get failed")
    return missing


def run_trial(node: NodeCgroup, name: str, workload_path: str, result_path: str, *,
              history: str | None, timeout_s: float) -> dict[str, Any]:
    """Start the trial ``name`` inside the node, wait, and return its JSON plus the node's counters."""
    python = SYSTEM_PYTHON if name == "workqueue" else VENV_PYTHON
    cmd = [python, os.path.abspath(__file__), "--trial", name, "--workload", workload_path,
           "--result", result_path, "--node-mb", str(node.limit // (1000 * 1000))]
    if history:
        cmd += ["--history", history]
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src"),
           "PATH": os.path.dirname(VENV_PYTHON) + os.pathsep + os.environ.get("PATH", "")}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(result_path)
    node.kill_all()
    node.write("memory.max_usage_in_bytes", "0")
    before = node.counters()
    t0 = time.time()
    with node.watching_slots() as slot_kills:
        proc = subprocess.Popen(cmd, preexec_fn=node.enter, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
        try:
            log, _ = proc.communicate(timeout=timeout_s)
            error = None if proc.returncode == 0 else f"trial exited with {proc.returncode}"
        except subprocess.TimeoutExpired:
            node.kill_all()
            log, _ = proc.communicate()
            error = f"trial timed out after {timeout_s:.0f} s"
        leftovers = node.kill_all()
    after = node.counters()
    out: dict[str, Any] = {"system": name, "tasks": []}
    if os.path.exists(result_path):
        with open(result_path) as fh:
            out = json.load(fh)
    elif error is None:
        error = "trial wrote no result"
    out["trial_error"] = error
    out["trial_wall_s"] = round(time.time() - t0, 2)
    out["log_tail"] = (log or "")[-3000:]
    out["leftover_processes"] = leftovers
    out["node"] = {
        "oom_kills_in_node": after["oom_kill"] - before["oom_kill"],
        "oom_kills_in_children": sum(slot_kills.values()),
        "limit_hits": after["failcnt"] - before["failcnt"],
        "peak_usage": after["max_usage"],
    }
    return out


# ── the oracle ───────────────────────────────────────────────────────────────
def _list_schedule(jobs: list[tuple[int, float]], capacity: int, cores: int,
                   key: Callable[[tuple[int, float]], float] | None) -> float:
    """Makespan of a greedy list schedule: start the first waiting job that fits, whenever one can."""
    waiting = list(jobs) if key is None else sorted(jobs, key=key, reverse=True)
    running: list[tuple[float, int]] = []  # (end, memory)
    now = 0.0
    while waiting or running:
        used = sum(m for _e, m in running)
        started = False
        for i, (mem, dur) in enumerate(waiting):
            if len(running) < cores and used + mem <= capacity:
                running.append((now + dur, mem))
                del waiting[i]
                started = True
                break
        if started:
            continue
        if not running:
            raise ValueError(f"a task needs {waiting[0][0]} bytes, more than the node's {capacity}")
        running.sort()
        now = running[0][0]
        running = [r for r in running if r[0] > now]
    return now


def oracle(tasks: list[dict[str, Any]], capacity: int, cores: int) -> dict[str, Any]:
    """Lower bound and best greedy makespan for tasks of known true peak and duration."""
    jobs = [(int(t["true_peak"]), float(t["seconds"])) for t in tasks]
    mem_bound = sum(m * d for m, d in jobs) / capacity
    cpu_bound = sum(d for _m, d in jobs) / cores
    longest = max(d for _m, d in jobs)
    heuristics: dict[str, Callable[[tuple[int, float]], float] | None] = {
        "submission order": None, "longest first": lambda j: j[1],
        "largest memory first": lambda j: j[0], "largest memory×time first": lambda j: j[0] * j[1],
    }
    greedy = {name: round(_list_schedule(jobs, capacity, cores, k), 3) for name, k in heuristics.items()}
    best = min(greedy, key=lambda n: greedy[n])
    return {"capacity": capacity, "cores": cores, "memory_bound_s": round(mem_bound, 3),
            "cpu_bound_s": round(cpu_bound, 3), "longest_s": longest,
            "lower_bound_s": round(max(mem_bound, cpu_bound, longest), 3),
            "greedy_s": greedy, "best_greedy": best, "makespan_s": greedy[best]}


# ── summary ──────────────────────────────────────────────────────────────────
def summarize(trial: dict[str, Any], tasks: list[dict[str, Any]], capacity: int,
              orc: dict[str, Any]) -> dict[str, Any]:
    """One row of the table from a trial's records."""
    by_id = {t["id"]: t for t in tasks}
    recs = trial.get("tasks") or []
    ok = [r for r in recs if r["ok"]]
    failed = len(tasks) - len(ok)
    makespan = (trial["t_done"] - trial["t_submit"]) if "t_done" in trial else None
    useful = sum(by_id[r["id"]]["true_peak"] * by_id[r["id"]]["seconds"] for r in ok)
    util = useful / (capacity * makespan) if makespan else None
    num = den = 0.0
    has_alloc = any(r.get("alloc") for r in recs)
    for r in recs:
        rows = r.get("alloc") or []
        for alloc, wall in rows:
            if alloc:
                den += alloc * (wall or 0.0)
        if r["ok"] and rows and rows[-1][0]:
            num += by_id[r["id"]]["true_peak"] * (rows[-1][1] or 0.0)
    node = trial.get("node", {})
    info = trial.get("info", {})
    intended = info.get("exhausted_attempts")
    slot_kills = node.get("oom_kills_in_children", 0)
    node_ooms = node.get("oom_kills_in_node", 0) + max(0, slot_kills - (intended or 0))
    retries = sum(max(0, int(r.get("attempts") or 1) - 1) for r in recs)
    finished = failed == 0 and not trial.get("trial_error")
    return {
        "system": trial["system"], "finished": finished, "completed": len(ok), "failed": failed,
        "makespan_s": round(makespan, 2) if makespan else None,
        "vs_oracle": round(makespan / orc["makespan_s"], 3) if makespan else None,
        "vs_lower_bound": round(makespan / orc["lower_bound_s"], 3) if makespan else None,
        "memory_utilisation": round(util, 3) if util is not None else None,
        "allocation_efficiency": round(num / den, 3) if has_alloc and den > 0 else None,
        "node_oom_kills": node_ooms, "intended_kills": intended, "kills_in_slots": slot_kills,
        "node_limit_hits": node.get("limit_hits"), "node_peak_usage": node.get("peak_usage"),
        "retries": retries, "startup_s": round(trial.get("startup_s", 0.0), 2),
        "trial_error": trial.get("trial_error"),
    }


def print_table(rows: list[dict[str, Any]], orc: dict[str, Any]) -> None:
    """Print the results table and the ratios to the oracle."""
    print(f"\noracle: lower bound {orc['lower_bound_s']:.1f} s (memory {orc['memory_bound_s']:.1f}, "
          f"cpu {orc['cpu_bound_s']:.1f}, longest {orc['longest_s']:.1f}); best greedy "
          f"{orc['makespan_s']:.1f} s ({orc['best_greedy']})")
    head = (f"{'system':<22} {'done':>6} {'makespan':>9} {'×oracle':>8} {'×LB':>6} {'mem use':>8} "
            f"{'alloc eff':>9} {'node OOM':>8} {'lm kills':>8} {'limit hits':>10} {'retries':>7}")
    print(head)
    print("-" * len(head))

    def f(x: Any, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    for r in rows:
        print(f"{r['system']:<22} {r['completed']:>3}/{r['completed'] + r['failed']:<2} "
              f"{f(r['makespan_s'], '8.1f')}s {f(r['vs_oracle'], '8.2f')} {f(r['vs_lower_bound'], '6.2f')} "
              f"{f(r['memory_utilisation'], '8.0%')} {f(r['allocation_efficiency'], '9.0%')} "
              f"{r['node_oom_kills']:>8} {f(r['intended_kills'], '>8')} {f(r['node_limit_hits'], '>10')} "
              f"{r['retries']:>7}" + (f"  ({r['trial_error']})" if r["trial_error"] else ""))


ORDERS = ("longest-first", "fifo")


def _lm_name_ok(word: str) -> bool:
    """Whether ``word`` is ``lm-<strategy>[@<order>][-warm]``."""
    strategy, at, order = word[3:].removesuffix("-warm").partition("@")
    return strategy in STRATEGIES and (not at or order in ORDERS)


def expand_systems(text: str) -> list[str]:
    """``loadmaster`` → every ``lm-<strategy>``; ``all`` → everything; names kept as given."""
    out: list[str] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        if word == "all":
            out += [f"lm-{s}" for s in STRATEGIES] + list(PEERS)
        elif word == "loadmaster":
            out += [f"lm-{s}" for s in STRATEGIES]
        elif word in STRATEGIES:
            out.append(f"lm-{word}")
        elif word in PEERS or (word.startswith("lm-") and _lm_name_ok(word)):
            out.append(word)
        else:
            raise SystemExit(f"--systems: unknown {word!r}; choose from all, loadmaster, "
                             f"{', '.join(STRATEGIES)}, lm-<strategy>[@<order>][-warm] (order: "
                             f"{', '.join(ORDERS)}), {', '.join(PEERS)}")
    return list(dict.fromkeys(out))


def driver_main(args: argparse.Namespace) -> int:
    """Build the node, run every system, compute the oracle, print and write the results."""
    if args.quick:
        args.tasks = min(args.tasks, 24)
    systems = expand_systems(args.systems)
    if args.warm:
        systems += [f"{s}-warm" for s in systems if s.startswith("lm-") and not s.endswith("-warm")]
    tasks = workload.make_tasks(args.tasks, args.seed)
    limit = int(args.limit_gib * GiB)
    unavailable = ensure_tools(systems)
    node = NodeCgroup(limit)
    scratch = tempfile.mkdtemp(prefix="lm-packing-")
    wl_path = os.path.join(scratch, "tasks.json")
    with open(wl_path, "w") as fh:
        json.dump(tasks, fh)
    orc = oracle(tasks, limit, CORES)
    print(workload.summary(tasks))
    print(f"node: {node.path}, limit {limit / GiB:.2f} GiB, {CORES} cores; oracle makespan "
          f"{orc['makespan_s']:.1f} s (lower bound {orc['lower_bound_s']:.1f} s)", flush=True)
    trials: list[dict[str, Any]] = []
    histories: dict[str, str] = {}
    try:
        order = sorted(systems, key=lambda s: s.endswith("-warm"))  # warm runs after their cold one
        for name in order:
            if name in unavailable:
                trials.append({"system": name, "tasks": [], "trial_error": unavailable[name]})
                print(f"== {name}: not run: {unavailable[name]}", flush=True)
                continue
            history = None
            if name.startswith("lm-"):
                base = name.removesuffix("-warm")
                history = histories.setdefault(base, os.path.join(scratch, f"{base}.sqlite"))
                if not name.endswith("-warm") and os.path.exists(history):
                    os.unlink(history)
            print(f"== {name} ({time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.2f})", flush=True)
            trial = run_trial(node, name, wl_path, os.path.join(scratch, f"{name}.json"),
                              history=history, timeout_s=args.timeout)
            trials.append(trial)
            row = summarize(trial, tasks, limit, orc)
            print(f"   {row['completed']}/{len(tasks)} ok, makespan {row['makespan_s']} s "
                  f"(×{row['vs_oracle']} oracle), node OOM kills {row['node_oom_kills']}, "
                  f"retries {row['retries']}" + (f", {row['trial_error']}" if row["trial_error"] else ""),
                  flush=True)
            if trial.get("trial_error"):
                print("   " + trial.get("log_tail", "")[-1500:].replace("\n", "\n   "), flush=True)
    finally:
        node.remove()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [summarize(t, tasks, limit, orc) for t in trials]
    print_table(rows, orc)
    for t in trials:
        t.pop("log_tail", None) if not t.get("trial_error") else None
    result = {
        "benchmark": "packing", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"host": platform.node(), "kernel": platform.release(), "cores": os.cpu_count(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"tasks": args.tasks, "seed": args.seed, "limit_bytes": limit, "cores": CORES,
                     "systems": systems, "warm_runs": args.warm},
        "definitions": {
            "makespan_s": "first submit to last result, system start-up excluded",
            "memory_utilisation": "Σ true peak × duration of completed tasks / (node limit × makespan)",
            "allocation_efficiency": "Σ true peak × wall of successful attempts / Σ allocated × wall of all "
                                     "attempts (Work Queue: final attempts only)",
            "node_oom_kills": "kernel OOM kills of processes in the node cgroup, plus kills in loadmaster's "
                              "slots beyond its exhausted attempts",
            "intended_kills": "loadmaster: attempts killed at their own allocation and retried",
            "node_limit_hits": "memory.failcnt delta of the node cgroup",
        },
        "tasks": tasks, "oracle": orc, "summary": rows, "trials": trials,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"\nwrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line; run the driver, or one ``--trial``."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--systems", default="all",
                   help="comma list: all, loadmaster, a strategy, lm-<strategy>[@<order>][-warm] (order: "
                        + ", ".join(ORDERS) + ", default the executor's), " + ", ".join(PEERS))
    p.add_argument("--tasks", type=int, default=workload.DEFAULT_TASKS)
    p.add_argument("--seed", type=int, default=workload.DEFAULT_SEED)
    p.add_argument("--limit-gib", type=float, default=3.0, help="the node cgroup's memory limit")
    p.add_argument("--quick", action="store_true", help="at most 24 tasks")
    p.add_argument("--warm", action="store_true", help="also run each strategy again on its history")
    p.add_argument("--timeout", type=float, default=TRIAL_TIMEOUT_S, help="per system, seconds")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--trial", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--history", help=argparse.SUPPRESS)
    p.add_argument("--node-mb", type=int, default=3000, help=argparse.SUPPRESS)
    p.add_argument("--keep-work", help=argparse.SUPPRESS)
    args, _unknown = p.parse_known_args(argv)  # run-all.sh passes other benchmarks' options too
    if args.trial:
        return trial_main(args)
    return driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
