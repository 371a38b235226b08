"""Per-task cost of the loadmaster sandbox, against bwrap and a ptrace interposer.

Run: ``.venv/bin/python bench/sandbox_overhead.py [--repeats 5] [--quick]``
(as root or not; ~4 minutes with the defaults, ~1 with ``--quick``). Writes
``bench/results/sandbox_overhead.json`` and prints tables of medians and the
ratios against each family's baseline.

Who runs what: this script is the only process measured besides its children.
Three families, each task in its own process:

* **Python function tasks, the sandbox's own path.** The script plays the
  zygote (single-threaded, lean, libc ``fork`` through ctypes as the zygote
  does): ``fork`` → task → ``_exit`` → ``wait4``, in three variants:

  - ``fork``: nothing else (what ``Executor(sandbox=False)`` does around a task);
  - ``sandbox, slot``: what the zygote does now: a namespace slot from a
    :class:`~loadmaster.node.sandbox.ns_slots.NamespacePool`, ``prepare(..., slot=)``
    before the fork, ``enter`` (``setns`` into the slot, Landlock) in the
    child, ``collect`` (empties the slot's ``/tmp``, removes the work
    directory) and the slot's release after;
  - ``sandbox, fresh ns``: the old way, a mount namespace made in the child
    (``unshare``, ``MS_PRIVATE``, two bind mounts) and torn down at its exit.

  Per task: *latency* from just before the fork to the child reaped (what a
  task's ``report.wall_time`` measures), the *cycle* from before ``prepare`` to
  after ``collect`` (how long the zygote is busy with the task), and CPU time:
  the child's (``wait4`` rusage) and this process's own (``prepare``, fork,
  ``collect``: ``CLOCK_PROCESS_CPUTIME_ID``).

* **Through the executor.** ``loadmaster.Executor(history=<temp sqlite>,
  ledger=<temp dir>, sandbox=True|False)`` with its defaults otherwise (2
  zygotes, a memory cgroup per task where the process may create one): a
  timed batch of no-op function tasks and one of I/O-heavy function tasks,
  from the first submit to the last result. Reported: tasks/s, the per-task
  overhead ``1/rate(on) - 1/rate(off)`` (two zygotes work in parallel, so this
  is about half of a task's added cost in CPU), the median
  ``report.wall_time`` (fork → reaped, per task), and the whole machine's CPU
  time per task (``/proc/stat``). Each repeat is one fresh interpreter holding
  both executors (on and off) at once; the batches are cut into 10 rounds of
  small batches, on and off alternating, because the disk's stalls here last
  seconds and would otherwise land on one variant only.

* **Command tasks** (one ``exec`` per task): plain ``fork+exec``; loadmaster's
  sandbox (``fork``, ``enter`` in a namespace slot, ``exec``); Debian's
  ``bwrap`` doing the same isolation (user + mount namespaces, private
  ``/tmp``); ``strace -f`` (ptrace interposition, the mechanism Parrot's
  ``parrot_run`` uses; Debian ships no ``parrot_run``). ``bwrap`` and
  ``strace`` are started with ``subprocess.run``, so compare them with the
  ``subprocess.run`` row.

Every family runs a no-op task and an I/O-heavy one (a 32 MiB file written
and read back in 64 KiB blocks in the working directory, then 1,000 small
files created, stat'ed and removed in ``$TMPDIR``), so both the set-up cost
and any slowdown of I/O inside the task show. In the first and last families
the variants' tasks are interleaved one by one, so drift and noisy neighbours
hit every variant alike; a repeat's value is its median task and the reported
value the median of the repeats.

Task directories, sandboxes and namespace slots go under ``--dir`` (default
``/var/tmp``, a disk, where the executor puts its sandboxes too). It may not
lie under ``/tmp`` or ``/dev/shm``: the zygote uses no namespace slots there.
When ``bwrap`` is missing and we are root, ``apt-get install -y bubblewrap``
is run once; otherwise that column is skipped with the reason in the JSON.

Does not cover: tasks that declare inputs or outputs under ``/tmp`` (they get
a namespace of their own, the ``fresh ns`` path), a sandbox parent on tmpfs,
the cost of a sandbox as an unprivileged user (run the script as that user).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))

from loadmaster.node.sandbox import policy as sb  # noqa: E402
from loadmaster.node.sandbox.ns_slots import NamespacePool  # noqa: E402

IO_CODE = r"""
import os
tag = str(os.getpid())
block = b"x" * 65536
with open("big-" + tag, "wb") as f:
    for _ in range(512):
        f.write(block)
with open("big-" + tag, "rb") as f:
    while f.read(65536):
        pass
os.unlink("big-" + tag)
d = os.environ.get("TMPDIR", "/tmp")
for i in range(1000):
    p = os.path.join(d, "s" + tag + "-" + str(i))
    with open(p, "w") as f:
        f.write("y")
    os.stat(p)
    os.unlink(p)
"""

_libc = ctypes.PyDLL(None, use_errno=True)
_libc.fork.restype = ctypes.c_int


def fork() -> int:
    """libc ``fork`` through ctypes, as the zygote does (no CPython at-fork hooks)."""
    pid = int(_libc.fork())
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def noop_task(*_: Any) -> None:
    """A task that does nothing."""


def io_task(*_: Any) -> None:
    """The I/O-heavy task, in the task's own process, working directory and TMPDIR."""
    exec(IO_CODE, {"__name__": "io_task"})


# ── family 1: Python function tasks, the sandbox's own path ─────────────────
FN_VARIANTS = ("fork", "sandbox, slot", "sandbox, fresh ns")
FN_METRICS = ("latency", "cycle", "cpu_child", "cpu_parent", "cpu_total")


@dataclass(frozen=True)
class Sample:
    """One function task: seconds of latency (fork → reaped), cycle and CPU."""

    latency: float
    cycle: float
    cpu_child: float
    cpu_parent: float

    @property
    def cpu_total(self) -> float:
        """Child and parent CPU together."""
        return self.cpu_child + self.cpu_parent


class FnRunner:
    """Runs one function task per call the way the zygote does, in one of FN_VARIANTS."""

    def __init__(self, parent: str, policy: sb.Sandbox) -> None:
        self.parent = parent
        self.policy = policy
        self.pool = NamespacePool(parent)
        self.task_id = 0

    def run(self, task: Callable[[], None], variant: str) -> Sample:
        """Prepare, fork, run ``task`` in the child, reap, collect; return the sample."""
        self.task_id += 1
        c0 = time.process_time()
        t0 = time.perf_counter()
        dirs = slot = None
        if variant == "sandbox, slot":
            slot = self.pool.acquire(self.policy.tmp_size)
            if slot is None:
                raise SystemExit(f"no namespace slot: {self.pool.broken}")
            dirs = sb.prepare(self.policy, self.parent, self.task_id, slot=slot)
        elif variant == "sandbox, fresh ns":
            dirs = sb.prepare(self.policy, self.parent, self.task_id)
        t1 = time.perf_counter()
        pid = fork()
        if pid == 0:
            code = 0
            try:
                if dirs is not None:
                    state = sb.enter(self.policy, dirs)
                    if not (state.private_tmp and state.fs_rules):
                        code = 3
                task()
            except BaseException:
                code = 1
            os._exit(code)
        _, status, ru = os.wait4(pid, 0)
        t2 = time.perf_counter()
        if dirs is not None:
            left = sb.collect(dirs)
            if left.errors:
                raise SystemExit(f"collect failed: {left.errors}")
        if slot is not None:
            self.pool.release(slot)
        t3 = time.perf_counter()
        c1 = time.process_time()
        if status != 0:
            raise SystemExit(f"{variant}: task failed with wait status {status} (3: sandbox not in force)")
        return Sample(t2 - t1, t3 - t0, ru.ru_utime + ru.ru_stime, c1 - c0)


# ── family 3: command tasks ──────────────────────────────────────────────────
def run_cmd_sandboxed(argv: list[str], fr: FnRunner) -> float:
    """Namespace slot, prepare, fork, enter, exec ``argv``; wait; collect (as the zygote does)."""
    t0 = time.perf_counter()
    fr.task_id += 1
    slot = fr.pool.acquire(fr.policy.tmp_size)
    dirs = sb.prepare(fr.policy, fr.parent, fr.task_id, slot=slot)
    pid = fork()
    if pid == 0:
        try:
            sb.enter(fr.policy, dirs)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    sb.collect(dirs)
    if slot is not None:
        fr.pool.release(slot)
    dt = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{argv[:2]} failed with status {status}")
    return dt


def run_cmd_forked(argv: list[str], parent: str) -> float:
    """fork + execv from this process in a fresh per-task directory: the sandboxed exec's baseline."""
    t0 = time.perf_counter()
    d = tempfile.mkdtemp(dir=parent)
    pid = fork()
    if pid == 0:
        try:
            os.chdir(d)
            os.environ["TMPDIR"] = d
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(d)
    if status != 0:
        raise SystemExit(f"{argv[:2]} failed with status {status}")
    return time.perf_counter() - t0


def run_cmd_plain(argv: list[str], parent: str, bwrap: str | None = None) -> float:
    """subprocess.run of ``argv`` (optionally wrapped in bwrap) in a fresh per-task
    directory (cwd and TMPDIR; bwrap binds it on /tmp), removed afterwards."""
    t0 = time.perf_counter()
    d = tempfile.mkdtemp(dir=parent)
    if bwrap:
        argv = bwrap_argv(bwrap, argv, d)
    subprocess.run(argv, cwd=d, check=True, close_fds=False, env={**os.environ, "TMPDIR": d})
    shutil.rmtree(d)
    return time.perf_counter() - t0


def ensure_bwrap() -> tuple[str | None, str]:
    """Return (path to bwrap, "") or (None, why not)."""
    path = shutil.which("bwrap")
    if path:
        return path, ""
    if os.geteuid() != 0:
        return None, "bwrap missing and not root: apt-get install bubblewrap"
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "bubblewrap"],
        capture_output=True,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    path = shutil.which("bwrap")
    return (path, "") if path else (None, f"apt-get install bubblewrap failed: {proc.stderr[-300:]}")


def bwrap_argv(bwrap: str, argv: list[str], tmp: str) -> list[str]:
    """bwrap doing what the loadmaster sandbox does with namespaces: a private,
    disk-backed /tmp (a bind of a per-task directory, as ours), fresh cwd."""
    return [
        bwrap,
        "--unshare-user",
        "--dev-bind",
        "/",
        "/",
        "--bind",
        tmp,
        "/tmp",
        "--setenv",
        "TMPDIR",
        "/tmp",
        "--chdir",
        "/tmp",
        "--die-with-parent",
        "--",
        *argv,
    ]


# ── family 2: through the executor ───────────────────────────────────────────
def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def executor_batches(n_noop: int, n_io: int, base: str, rounds: int, first: str) -> dict[str, Any]:
    """Two executors, sandbox on and off, alive together and warmed up; ``rounds`` rounds of
    small batches (no-op, then I/O), on and off alternating, so disk stalls and neighbours hit
    both alike. Returns per variant and workload: summed batch time, rate, median
    ``report.wall_time`` and task CPU, the machine's CPU per task."""
    import loadmaster

    tmp = tempfile.mkdtemp(prefix="exec-", dir=base)
    execs: dict[str, Any] = {}
    acc: dict[str, dict[str, dict[str, Any]]] = {
        v: {w: {"seconds": 0.0, "cpu": 0.0, "tasks": 0, "wall": [], "task_cpu": []} for w in ("noop", "io")}
        for v in ("on", "off")
    }
    try:
        for v in ("on", "off"):
            execs[v] = loadmaster.Executor(
                history=os.path.join(tmp, f"history-{v}.sqlite"),
                ledger=os.path.join(tmp, f"ledger-{v}"),
                sandbox=v == "on",
                sandbox_dir=os.path.join(tmp, f"sandboxes-{v}"),
                label=f"bench-sandbox-overhead-{v}",
            )
            for f in [execs[v].options(category="noop").submit(noop_task, i) for i in range(40)]:
                f.result()
            for f in [execs[v].options(category="io").submit(io_task, i) for i in range(4)]:
                f.result()
        per_round = {"noop": max(1, n_noop // rounds), "io": max(1, n_io // rounds)}
        order = [first, "off" if first == "on" else "on"]
        for _ in range(rounds):
            for w, fn in (("noop", noop_task), ("io", io_task)):
                for v in order:
                    ex, a, n = execs[v], acc[v][w], per_round[w]
                    opts = ex.options(category=w)
                    cpu0, t0 = machine_cpu_s(), time.perf_counter()
                    fs = [opts.submit(fn, i) for i in range(n)]
                    concurrent.futures.wait(fs)
                    a["seconds"] += time.perf_counter() - t0
                    a["cpu"] += machine_cpu_s() - cpu0
                    a["tasks"] += n
                    for f in fs:
                        f.result()
                    reports = [f.report for f in fs if f.report is not None]
                    boxes = [r.extra.get("sandbox") or {} for r in reports]
                    in_force = sum(1 for b in boxes if b.get("private_tmp") and b.get("fs_rules"))
                    if len(reports) != n or in_force != (n if v == "on" else 0):
                        raise SystemExit(f"executor sandbox={v}: {len(reports)} reports, sandbox in force "
                                         f"for {in_force}, of {n} tasks")
                    a["wall"].extend(r.wall_time for r in reports)
                    a["task_cpu"].extend(r.cpu_time for r in reports)
                    a["method"] = reports[0].measure_method.value
            order.reverse()
    finally:
        for ex in execs.values():
            ex.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        v: {
            w: {
                "tasks": a["tasks"],
                "seconds": a["seconds"],
                "rate": a["tasks"] / a["seconds"],
                "wall_time_median": statistics.median(a["wall"]),
                "cpu_task_median": statistics.median(a["task_cpu"]),
                "machine_cpu_per_task": a["cpu"] / a["tasks"],
                "measure_method": a["method"],
            }
            for w, a in by_w.items()
        }
        for v, by_w in acc.items()
    }


def executor_trial(first: str, n_noop: int, n_io: int, base: str) -> dict[str, Any]:
    """Run :func:`executor_batches` in a fresh interpreter (this process stays lean and thread-free)."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--executor-trial", first,
         "--trial-sizes", f"{n_noop},{n_io}", "--dir", base],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"executor trial failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ── driver ───────────────────────────────────────────────────────────────────
EXEC_ROUNDS = 10  # small interleaved batches per executor trial
def _tmpish(path: str) -> bool:
    p = os.path.realpath(path)
    return any(p == top or p.startswith(top + "/") for top in ("/tmp", "/dev/shm"))


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def loadmaster_commit() -> str:
    """The code under test: ``git describe`` of this checkout (with ``-dirty``)."""
    try:
        out = subprocess.run(
            ["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "?"
    except OSError:
        return "?"


def main() -> int:
    """Run the three families ``--repeats`` times; print medians and ratios; write the JSON."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer tasks per batch and 3 repeats")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sandbox_overhead.json"))
    ap.add_argument("--dir", default="/var/tmp", help="where task directories and sandboxes go (not under /tmp)")
    ap.add_argument("--families", default="fn,executor,cmd", help="comma-separated subset of fn,executor,cmd")
    ap.add_argument("--executor-trial", choices=("on", "off"), help=argparse.SUPPRESS)
    ap.add_argument("--trial-sizes", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.executor_trial:
        n_noop, n_io = (int(x) for x in args.trial_sizes.split(","))
        print(json.dumps(executor_batches(n_noop, n_io, args.dir, EXEC_ROUNDS, args.executor_trial)))
        return 0
    if _tmpish(args.dir):
        ap.error(f"--dir {args.dir}: under /tmp or /dev/shm the zygote uses no namespace slots; pick a disk")
    families = set(args.families.split(","))
    repeats = 3 if args.quick and args.repeats == 5 else args.repeats
    if args.quick:
        sizes = {"fn_noop": 100, "fn_io": 5, "exec_noop": 200, "exec_io": 10, "cmd_noop": 20, "cmd_io": 3}
    else:
        sizes = {"fn_noop": 300, "fn_io": 15, "exec_noop": 600, "exec_io": 30, "cmd_noop": 60, "cmd_io": 8}
    load_before = os.getloadavg()
    parent = tempfile.mkdtemp(prefix="lm-bench-sbx-", dir=args.dir)
    # The bare variants' tasks write in this process's cwd and TMPDIR: a directory beside the sandboxes.
    bare = os.path.join(parent, "bare")
    os.mkdir(bare)
    os.chdir(bare)
    os.environ["TMPDIR"] = bare
    policy = sb.Sandbox()
    caps = sb.capabilities()
    bwrap, bwrap_why = ensure_bwrap()
    strace = shutil.which("strace")
    py = os.path.realpath(sys.executable)
    cmd_noop = ["/bin/true"]
    cmd_io = [py, "-S", "-c", IO_CODE]  # -S: the same interpreter start-up in every column
    fr = FnRunner(os.path.join(parent, "sandboxes"), policy)

    fn_runs: dict[str, dict[str, dict[str, list[float]]]] = {
        w: {v: {m: [] for m in FN_METRICS} for v in FN_VARIANTS} for w in ("noop", "io")
    }
    ex_runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    cmd_variants: dict[str, dict[str, Callable[[], float]]] = {}
    for kind, argv in (("noop", cmd_noop), ("io", cmd_io)):
        vs: dict[str, Callable[[], float]] = {
            "exec": functools.partial(run_cmd_forked, argv, parent),
            "loadmaster sandbox": functools.partial(run_cmd_sandboxed, argv, fr),
            "subprocess.run": functools.partial(run_cmd_plain, argv, parent),
        }
        if bwrap:
            vs["bwrap"] = functools.partial(run_cmd_plain, argv, parent, bwrap)
        if strace:
            vs["strace -f"] = functools.partial(
                run_cmd_plain, [strace, "-f", "-qq", "-o", "/dev/null", *argv], parent)
        cmd_variants[kind] = vs
    cmd_runs: dict[str, dict[str, list[float]]] = {k: {v: [] for v in d} for k, d in cmd_variants.items()}
    tasks = {"noop": noop_task, "io": io_task}
    started = time.perf_counter()
    try:
        for v in FN_VARIANTS:  # warm-up: probe, slot made, rules' fds opened, pages touched
            for _ in range(3):
                fr.run(noop_task, v)
            fr.run(io_task, v)
        for vs in cmd_variants.values():
            for fn in vs.values():
                fn()
        for rep in range(repeats):
            if "fn" in families:
                for w, task in tasks.items():
                    samples: dict[str, list[Sample]] = {v: [] for v in FN_VARIANTS}
                    for _ in range(sizes[f"fn_{w}"]):
                        for v in FN_VARIANTS:
                            samples[v].append(fr.run(task, v))
                    for v, ss in samples.items():
                        for m in FN_METRICS:
                            fn_runs[w][v][m].append(_med([getattr(s, m) for s in ss]))
            if "executor" in families:
                trial = executor_trial("on" if rep % 2 == 0 else "off", sizes["exec_noop"], sizes["exec_io"], parent)
                for which in ("on", "off"):
                    ex_runs[which].append(trial[which])
            if "cmd" in families:
                for kind, vs in cmd_variants.items():
                    times: dict[str, list[float]] = {v: [] for v in vs}
                    for _ in range(sizes[f"cmd_{kind}"]):
                        for name, fn in vs.items():
                            times[name].append(fn())
                    for name, ts in times.items():
                        cmd_runs[kind][name].append(_med(ts))
            print(f"repeat {rep + 1}/{repeats} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    finally:
        fr.pool.close()
        os.chdir("/")
        shutil.rmtree(parent, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    # ── summaries ──
    fn_table = []
    if "fn" in families:
        for w in ("noop", "io"):
            base = {m: _med(fn_runs[w]["fork"][m]) for m in FN_METRICS}
            for v in FN_VARIANTS:
                row: dict[str, Any] = {"workload": w, "variant": v}
                for m in FN_METRICS:
                    val = _med(fn_runs[w][v][m])
                    row[f"{m}_ms"] = round(val * 1e3, 3)
                    row[f"{m}_plus_ms"] = round((val - base[m]) * 1e3, 3)
                row["latency_ratio"] = round(_med(fn_runs[w][v]["latency"]) / base["latency"], 3)
                fn_table.append(row)
    ex_table = []
    if "executor" in families:
        for w in ("noop", "io"):
            med = {
                which: {k: _med([r[w][k] for r in ex_runs[which]]) for k in (
                    "rate", "wall_time_median", "cpu_task_median", "machine_cpu_per_task")}
                for which in ("off", "on")
            }
            ex_table.append({
                "workload": w,
                "tasks": sizes[f"exec_{w}"],
                "rate_off": round(med["off"]["rate"], 1),
                "rate_on": round(med["on"]["rate"], 1),
                "overhead_ms_per_task": round((1 / med["on"]["rate"] - 1 / med["off"]["rate"]) * 1e3, 3),
                "rate_ratio_on_off": round(med["on"]["rate"] / med["off"]["rate"], 3),
                "wall_time_off_ms": round(med["off"]["wall_time_median"] * 1e3, 3),
                "wall_time_on_ms": round(med["on"]["wall_time_median"] * 1e3, 3),
                "wall_time_plus_ms": round((med["on"]["wall_time_median"] - med["off"]["wall_time_median"]) * 1e3, 3),
                "task_cpu_off_ms": round(med["off"]["cpu_task_median"] * 1e3, 3),
                "task_cpu_on_ms": round(med["on"]["cpu_task_median"] * 1e3, 3),
                "machine_cpu_off_ms_per_task": round(med["off"]["machine_cpu_per_task"] * 1e3, 3),
                "machine_cpu_on_ms_per_task": round(med["on"]["machine_cpu_per_task"] * 1e3, 3),
                "measure_method": ex_runs["on"][0][w]["measure_method"],
            })
    cmd_table = []
    if "cmd" in families:
        for kind, d in cmd_runs.items():
            base_v = _med(d["exec"])
            sub = _med(d["subprocess.run"])
            for name, x in d.items():
                med_v = _med(x)
                ref = sub if name in ("bwrap", "strace -f") else base_v
                cmd_table.append({
                    "workload": kind,
                    "variant": name,
                    "ms_per_task": round(med_v * 1e3, 3),
                    "vs": "subprocess.run" if name in ("bwrap", "strace -f") else "exec",
                    "plus_ms": round((med_v - ref) * 1e3, 3),
                    "ratio": round(med_v / ref, 3),
                })

    result = {
        "benchmark": "sandbox_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadmaster_commit": loadmaster_commit(),
        "host": os.uname().nodename,
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "uid": os.getuid(),
        "python": sys.version.split()[0],
        "landlock_abi": caps.landlock_abi,
        "namespaces": caps.namespaces or caps.namespaces_error,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "elapsed_s": round(elapsed, 1),
        "repeats": repeats,
        "quick": args.quick,
        "task_dir": args.dir,
        "tasks_per_batch": sizes,
        "bwrap": bwrap or f"skipped: {bwrap_why}",
        "strace": strace or "skipped: strace missing",
        "functions": fn_table,
        "executor": ex_table,
        "commands": cmd_table,
        "runs": {
            "functions_ms": {w: {v: {m: [round(t * 1e3, 3) for t in x] for m, x in d.items()}
                                 for v, d in vs_.items()} for w, vs_ in fn_runs.items()},
            "executor": ex_runs,
            "commands_ms": {k: {v: [round(t * 1e3, 3) for t in x] for v, x in d.items()} for k, d in cmd_runs.items()},
        },
        "note": (
            "functions: medians over repeats of per-repeat median tasks; latency = fork to reaped, "
            "cycle = prepare to collected, cpu_child from wait4, cpu_parent = this process's CPU for the "
            "task (prepare, fork, wait, collect). executor: overhead_ms_per_task = 1/rate(on) - 1/rate(off) "
            "with 2 zygotes in parallel; wall_time = report.wall_time (fork to reaped). commands: bwrap and "
            "strace are compared with subprocess.run, the loadmaster sandbox with exec (fork+execv)."
        ),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print_tables(result)
    print(f"wrote {args.out}  (load {load_before[0]:.2f} -> {load_after[0]:.2f}, {elapsed:.0f} s)")
    return 0


def print_tables(result: dict[str, Any]) -> None:
    """Print the three families' medians, with the differences and ratios to each baseline."""
    if result["functions"]:
        print("\nPython function tasks (ms per task; + is vs. bare fork)")
        print(f"{'task':5} {'variant':18} {'latency':>8} {'+':>7} {'ratio':>6} {'cycle':>8} {'+':>7} "
              f"{'cpu chld':>8} {'cpu par':>8} {'cpu tot':>8} {'+':>7}")
        for r in result["functions"]:
            print(f"{r['workload']:5} {r['variant']:18} {r['latency_ms']:8.3f} {r['latency_plus_ms']:7.3f} "
                  f"{r['latency_ratio']:6.2f} {r['cycle_ms']:8.3f} {r['cycle_plus_ms']:7.3f} "
                  f"{r['cpu_child_ms']:8.3f} {r['cpu_parent_ms']:8.3f} {r['cpu_total_ms']:8.3f} "
                  f"{r['cpu_total_plus_ms']:7.3f}")
    if result["executor"]:
        print("\nThrough loadmaster.Executor (sandbox off vs on)")
        print(f"{'task':5} {'tasks/s off':>11} {'on':>8} {'ratio':>6} {'+ms/task':>9} "
              f"{'wall off':>9} {'on':>8} {'+ms':>7} {'cpu/task off':>12} {'on':>8}")
        for r in result["executor"]:
            print(f"{r['workload']:5} {r['rate_off']:11.1f} {r['rate_on']:8.1f} {r['rate_ratio_on_off']:6.2f} "
                  f"{r['overhead_ms_per_task']:9.3f} {r['wall_time_off_ms']:9.3f} {r['wall_time_on_ms']:8.3f} "
                  f"{r['wall_time_plus_ms']:7.3f} {r['machine_cpu_off_ms_per_task']:12.3f} "
                  f"{r['machine_cpu_on_ms_per_task']:8.3f}")
    if result["commands"]:
        print("\nCommand tasks (ms per task)")
        print(f"{'task':5} {'variant':20} {'ms/task':>9} {'vs':>15} {'+ms':>8} {'ratio':>7}")
        for r in result["commands"]:
            print(f"{r['workload']:5} {r['variant']:20} {r['ms_per_task']:9.3f} {r['vs']:>15} "
                  f"{r['plus_ms']:8.3f} {r['ratio']:7.2f}")


if __name__ == "__main__":
    sys.exit(main())
