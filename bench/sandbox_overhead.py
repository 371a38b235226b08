"""Per-task cost of the loadmaster sandbox, against bwrap and a ptrace interposer.

Run: ``.venv/bin/python bench/sandbox_overhead.py [--repeats 3] [--quick]``.
Writes ``bench/results/sandbox_overhead.json`` and prints a table of medians.

Two families, each task in its own process, the benchmark itself playing the
zygote (single-threaded, lean):

* **Python function tasks** (what the executor runs): ``fork`` → task →
  ``_exit`` → ``waitpid``, bare vs. with the sandbox (``prepare`` before the
  fork, ``enter`` in the child, ``collect`` after). The difference is the
  sandbox's per-task overhead on top of the fork.
* **Command tasks** (one ``exec`` per task): plain ``fork+exec``; loadmaster's
  sandbox (``fork``, ``enter``, ``exec``); Debian's ``bwrap`` doing the same
  isolation (user + mount namespaces, private ``/tmp``); ``strace -f`` (ptrace
  interposition, the mechanism Parrot's ``parrot_run`` uses; Debian ships no
  ``parrot_run``).

Each family runs a no-op task and an I/O-heavy task (a 32 MiB file written and
read back in 64 KiB blocks, then 1,000 small files created, stat'ed and
removed), so both the setup cost and any slowdown of I/O inside the task show.

When ``bwrap`` is missing and we are root, ``apt-get install -y bubblewrap``
is run once (a small package with no conflicts); otherwise that column is
skipped with the reason in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from loadmaster.node import sandbox as sb  # noqa: E402

IO_CODE = r"""
import os
block = b"x" * 65536
with open("big.bin", "wb") as f:
    for _ in range(512):
        f.write(block)
with open("big.bin", "rb") as f:
    while f.read(65536):
        pass
os.unlink("big.bin")
d = os.environ.get("TMPDIR", "/tmp")
for i in range(1000):
    p = os.path.join(d, f"s{i}")
    with open(p, "w") as f:
        f.write("y")
    os.stat(p)
    os.unlink(p)
"""


def noop_task() -> None:
    """A task that does nothing."""


def io_task() -> None:
    """The I/O-heavy task, in the task's own process and working directory."""
    exec(IO_CODE, {"__name__": "io_task"})


def run_fn(task: Callable[[], None], sandboxed: bool, parent: str, policy: sb.Sandbox) -> float:
    """Run one function task in a forked child; return wall seconds, sandbox work included."""
    t0 = time.perf_counter()
    dirs = sb.prepare(policy, parent, 1) if sandboxed else None
    if dirs is None:
        # The same work a bare task needs: its own fresh directory for cwd and TMPDIR.
        workdir = tempfile.mkdtemp(dir=parent)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if dirs is not None:
                sb.enter(policy, dirs)
            else:
                os.chdir(workdir)
                os.environ["TMPDIR"] = workdir
            task()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if dirs is not None:
        sb.collect(dirs)
    else:
        shutil.rmtree(workdir)
    dt = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"task failed with status {status}")
    return dt


def run_cmd_sandboxed(argv: list[str], parent: str, policy: sb.Sandbox) -> float:
    """fork, enter the sandbox, exec ``argv``; wait; collect."""
    t0 = time.perf_counter()
    dirs = sb.prepare(policy, parent, 2)
    pid = os.fork()
    if pid == 0:
        try:
            sb.enter(policy, dirs)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    sb.collect(dirs)
    dt = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"{argv[:2]} failed with status {status}")
    return dt


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


def run_cmd_forked(argv: list[str], parent: str) -> float:
    """Plain os.fork + execv from this Python process, in a fresh per-task directory:
    the baseline of the sandboxed exec."""
    t0 = time.perf_counter()
    d = tempfile.mkdtemp(dir=parent)
    pid = os.fork()
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
        raise RuntimeError(f"{argv[:2]} failed with status {status}")
    return time.perf_counter() - t0


def main() -> int:
    """Run every variant ``--repeats`` times; print medians and ratios; write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer tasks per batch")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sandbox_overhead.json"))
    ap.add_argument(
        "--dir",
        default="/var/tmp",
        help="where task directories and sandboxes go (default /var/tmp, a disk; "
        "/dev/shm takes the disk's noise out of the I/O columns)",
    )
    args = ap.parse_args()
    n_noop_fn, n_io_fn, n_noop_cmd, n_io_cmd = (100, 5, 20, 3) if args.quick else (400, 20, 60, 8)
    parent = tempfile.mkdtemp(prefix="lm-bench-sbx-", dir=args.dir)
    policy = sb.Sandbox()
    caps = sb.capabilities()
    bwrap, bwrap_why = ensure_bwrap()
    strace = shutil.which("strace")
    py = sys.executable
    # -S: no site import, so the same interpreter start-up cost in every column.
    cmd_noop = ["/bin/true"]
    cmd_io = [os.path.realpath(py), "-S", "-c", IO_CODE]

    variants: dict[str, dict[str, Callable[[], float]]] = {
        "fn_noop": {
            "fork": lambda: run_fn(noop_task, False, parent, policy),
            "fork+sandbox": lambda: run_fn(noop_task, True, parent, policy),
        },
        "fn_io": {
            "fork": lambda: run_fn(io_task, False, parent, policy),
            "fork+sandbox": lambda: run_fn(io_task, True, parent, policy),
        },
        "cmd_noop": {
            "exec": lambda: run_cmd_forked(cmd_noop, parent),
            "subprocess.run": lambda: run_cmd_plain(cmd_noop, parent),
        },
        "cmd_io": {
            "exec": lambda: run_cmd_forked(cmd_io, parent),
            "subprocess.run": lambda: run_cmd_plain(cmd_io, parent),
        },
    }
    for kind, argv in (("cmd_noop", cmd_noop), ("cmd_io", cmd_io)):
        variants[kind]["loadmaster sandbox"] = lambda a=argv: run_cmd_sandboxed(a, parent, policy)
        if bwrap:
            variants[kind]["bwrap"] = lambda a=argv: run_cmd_plain(a, parent, bwrap)
        if strace:
            st = [strace, "-f", "-qq", "-o", "/dev/null", *argv]
            variants[kind]["strace -f"] = lambda a=st: run_cmd_plain(a, parent)
    sizes = {"fn_noop": n_noop_fn, "fn_io": n_io_fn, "cmd_noop": n_noop_cmd, "cmd_io": n_io_cmd}

    # Per repeat: every variant's tasks interleaved one by one (so drift and noisy
    # neighbours hit every variant alike); the repeat's value is the median task.
    runs: dict[str, dict[str, list[float]]] = {k: {v: [] for v in d} for k, d in variants.items()}
    try:
        for vs in variants.values():
            for fn in vs.values():
                fn()  # warm-up
        for rep in range(args.repeats):
            for kind, vs in variants.items():
                times: dict[str, list[float]] = {v: [] for v in vs}
                for _ in range(sizes[kind]):
                    for name, fn in vs.items():
                        times[name].append(fn())
                for name, ts in times.items():
                    runs[kind][name].append(statistics.median(ts))
            print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        shutil.rmtree(parent, ignore_errors=True)

    medians = {k: {v: statistics.median(x) for v, x in d.items()} for k, d in runs.items()}
    base_of = {"fn_noop": "fork", "fn_io": "fork", "cmd_noop": "exec", "cmd_io": "exec"}
    table = []
    for kind, d in medians.items():
        base = d[base_of[kind]]
        for name, m in d.items():
            table.append(
                {
                    "workload": kind,
                    "variant": name,
                    "ms_per_task": round(m * 1e3, 3),
                    "overhead_ms": round((m - base) * 1e3, 3),
                    "ratio": round(m / base, 3),
                }
            )
    result = {
        "benchmark": "sandbox_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": os.uname().nodename,
        "kernel": os.uname().release,
        "uid": os.getuid(),
        "python": sys.version.split()[0],
        "landlock_abi": caps.landlock_abi,
        "namespaces": caps.namespaces,
        "repeats": args.repeats,
        "task_dir": args.dir,
        "tasks_per_batch": sizes,
        "bwrap": bwrap or f"skipped: {bwrap_why}",
        "strace": strace or "skipped: strace missing",
        "medians": table,
        "runs_ms": {k: {v: [round(t * 1e3, 3) for t in x] for v, x in d.items()} for k, d in runs.items()},
        "note": (
            "medians of per-task medians. fn_*: fork+task+exit+wait from this lean, "
            "single-threaded process; the sandbox adds prepare+enter+collect. The executor's "
            "monitored fork adds its own cost on top of 'fork', the same with and without the "
            "sandbox. cmd_*: 'exec' is os.fork+execv from this process, the baseline of "
            "'loadmaster sandbox' (fork, enter, execv); bwrap and strace are started with "
            "subprocess.run, compare them with 'subprocess.run'."
        ),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'workload':10} {'variant':20} {'ms/task':>9} {'+ms':>8} {'ratio':>7}")
    for row in table:
        print(
            f"{row['workload']:10} {row['variant']:20} {row['ms_per_task']:9.3f} "
            f"{row['overhead_ms']:8.3f} {row['ratio']:7.2f}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
