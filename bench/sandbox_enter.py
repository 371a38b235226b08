"""Where a sandboxed task's set-up time goes: each step of ``enter`` on the namespace-slot path.

Run: ``PYTHONPATH=src .venv/bin/python bench/sandbox_enter.py [--forks 200] [--dir /var/tmp]``
(as root or as an ordinary user; wrap in ``flock /tmp/lm-bench.lock`` on a
shared machine). This process plays the zygote: it makes one namespace slot
(``NamespacePool``, with the default policy's tmpfs size, read-only view, network
namespace and, as root, pids cgroup), then ``prepare``s a default-policy task
and forks a child, ``--forks`` times. Each child runs the steps ``sandbox.child.enter``
runs for such a task, one by one, each timed with ``perf_counter_ns`` (the
child is single-threaded: this is its CPU, copy-on-write faults included),
and reports them; the slot is ``collect``ed after each child. Then one more
set of children runs ``enter`` itself, for the total. Writes
``bench/results/sandbox_enter.json`` and prints the medians in µs.

Does not cover: the fork itself, the report datagram and ``close_range`` of
the task process (``bench/sandbox_protections.py``), the zygote's side
(``prepare``, ``collect``: ``bench/sandbox_overhead.py``'s "cycle").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from loadmaster.node.sandbox import capabilities, child, landlock, namespaces, seccomp  # noqa: E402
from loadmaster.node.sandbox import policy as sb  # noqa: E402
from loadmaster.node.sandbox.ns_slots import NamespacePool  # noqa: E402


def steps(pol: sb.Sandbox, dirs: sb.SandboxDirs) -> list[tuple[str, Callable[[], object]]]:
    """The steps of ``enter`` for a default-policy task in a slot, in order."""
    slot = dirs.slot
    fds: list[int] = []

    def env() -> None:
        e = os.environ
        for var in ("TMPDIR", "TMP", "TEMP"):
            if e.get(var) != "/tmp":
                e[var] = "/tmp"
        e["PWD"] = dirs.workdir
        e["HOME"] = dirs.workdir

    return [
        ("chdir to the work dir", lambda: os.chdir(dirs.workdir)),
        ("O_PATH fds of work, tmp, shm", lambda: None if dirs.ruleset is not None and dirs.ruleset.own_rules
         else fds.extend(landlock.open_path(d) for d in (dirs.workdir, dirs.tmpdir, dirs.shmdir))),
        ("join the pids cgroup (root)", lambda: os.write(slot.pids.procs_fd, b"0") if slot.pids else None),
        ("setns into the slot", lambda: namespaces.join_slot(slot, network=False)),
        ("chdir again", lambda: os.chdir(dirs.workdir)),
        ("environment (5 variables)", env),
        ("drop capabilities, no_new_privs", capabilities.drop_all),
        ("seccomp filter", seccomp.install),
        ("Landlock ruleset + restrict_self", lambda: child._restrict(pol, dirs, fds, landlock.abi_version(), True,
                                                                      (), (), [])),
        ("SandboxState + as_dict", lambda: sb.SandboxState(enabled=True, notes=()).as_dict()),
    ]


def run_child(fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, json.dumps(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    out: dict[str, float] = json.loads(data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forks", type=int, default=200)
    ap.add_argument("--dir", default="/var/tmp", help="where the slot's directories go (not under /tmp)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sandbox_enter.json"))
    args = ap.parse_args()
    parent = os.path.join(args.dir, f"lm-bench-enter-{os.getuid()}")
    os.makedirs(parent, 0o700, exist_ok=True)
    pol = sb.Sandbox()
    pool = NamespacePool(parent)
    slot = pool.acquire(pol.tmp_size)
    if slot is None:
        sys.exit(f"no namespace slot here: {pool.broken}")
    gc.freeze()

    def stepwise(dirs: sb.SandboxDirs) -> dict[str, float]:
        out = {}
        for name, fn in steps(pol, dirs):
            t = time.perf_counter_ns()
            fn()
            out[name] = (time.perf_counter_ns() - t) / 1000
        return out

    def whole(dirs: sb.SandboxDirs) -> dict[str, float]:
        t = time.perf_counter_ns()
        sb.enter(pol, dirs)
        return {"enter (whole)": (time.perf_counter_ns() - t) / 1000}

    runs: dict[str, list[float]] = {}
    load0 = os.getloadavg()[0]
    try:
        for fn in (stepwise, whole):
            for _ in range(args.forks):
                dirs = sb.prepare(pol, parent, 1, slot=slot)  # as the zygote does before each fork
                for k, v in run_child(lambda: fn(dirs)).items():  # noqa: B023
                    runs.setdefault(k, []).append(v)
                sb.collect(dirs)
    finally:
        pool.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {"uid": os.getuid(), "forks": args.forks, "load": [load0, os.getloadavg()[0]],
              "median_us": med, "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    width = max(len(k) for k in med)
    for k, v in med.items():
        print(f"{k:<{width}}  {v:8.1f} µs")
    print(f"sum of steps {sum(v for k, v in med.items() if k != 'enter (whole)'):.1f} µs; "
          f"uid {os.getuid()}, load {load0:.2f} -> {os.getloadavg()[0]:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
