"""One user script that runs unchanged on this machine, a Dask cluster or Slurm: only ``backend=`` differs.

What a user writes: a few Python functions and a shell command, submitted to a
``loadmaster.Executor``; results and per-task reports read back. Run it::

    python examples/same_script.py                              # this machine (the local engine)
    python examples/same_script.py --backend local-cluster      # a Dask LocalCluster of 2 workers
    python examples/same_script.py --backend tcp://host:8786    # any Dask scheduler
    python examples/same_script.py --backend slurm              # dask-jobqueue SLURMCluster, 2 jobs

It prints one JSON document: ``results`` (what each task returned or raised)
and ``reports`` (each task's :class:`~loadmaster.TaskReport` as a dict).
:func:`comparable` drops what differs by design between two places (the
host, times, CPU seconds, and the allocation of tasks the planner sized to
the node they ran on), which is how ``tests/test_same_script.py`` compares
the runs.

The functions travel by value (``cloudpickle.register_pickle_by_value``), as
they would from a user's ``__main__``: the nodes need loadmaster, not this file.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

import cloudpickle

import loadmaster

MiB = 1 << 20


def square(x: int) -> int:
    """A pure function."""
    return x * x


def fails(msg: str) -> None:
    """A function that raises."""
    raise ValueError(msg)


def touch_mib(n: int) -> int:
    """Hold ``n`` MiB, touched page by page; return its length."""
    buf = bytearray(n * MiB)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    return len(buf)


def hostname() -> str:
    """Where the task ran."""
    return socket.gethostname()


def run(backend: Any = None, *, history: str = ":memory:") -> dict[str, Any]:
    """Submit the same tasks to an executor on ``backend``; return their results and reports."""
    this = sys.modules[__name__]
    if this.__name__ != "__main__":
        cloudpickle.register_pickle_by_value(this)
    results: dict[str, Any] = {}
    futures: dict[str, Any] = {}
    with loadmaster.Executor(history=history, sandbox=False, backend=backend) as ex:
        sq = [ex.submit(square, i) for i in range(10)]
        futures["square-3"] = sq[3]
        futures["fails"] = ex.submit(fails, "no good")
        futures["touch-100MiB"] = ex.submit(touch_mib, 100)
        # Categories of their own: what the planner learns of one category meanwhile
        # (a disk size, say) would otherwise depend on which task of it ended first.
        futures["sized"] = ex.options(category="sized", resources={"cores": 1, "memory": "300MiB"}).submit(
            touch_mib, 50)
        futures["too-small"] = ex.options(category="too-small", resources={"memory": "64MiB"}).submit(
            touch_mib, 200)
        futures["command"] = ex.submit_command("echo out-line; echo err-line >&2")
        futures["command-fails"] = ex.submit_command("echo bye >&2; exit 3")
        futures["where"] = ex.submit(hostname)
        results["squares"] = [f.result() for f in sq]
        for name, f in futures.items():
            try:
                value = f.result()
            except loadmaster.TaskFailed as exc:
                value = {"raised": type(exc).__name__, "message": str(exc).splitlines()[0]}
            if isinstance(value, loadmaster.CommandResult):
                value = {"returncode": value.returncode, "stdout": value.stdout, "stderr": value.stderr}
            results[name] = value
        reports = {name: f.report.as_dict() for name, f in futures.items()}
        nodes = [n.name for n in ex.backend.nodes()]
    return {"results": results, "reports": reports, "nodes": nodes}


# Tasks sized by the planner get a share of the node they ran on: their allocation differs by node.
SIZED_BY_NODE = ("square-3", "fails", "touch-100MiB", "command", "command-fails", "where")
DIFFER = ("host", "started_at", "finished_at", "wall_time", "cpu_time", "cores", "disk", "peak_charged", "extra")


def comparable(out: dict[str, Any]) -> dict[str, Any]:
    """``out`` less what differs by design between places: hosts, times, node-sized allocations.

    Peaks are dropped too (compare them with :func:`peaks`, within a margin);
    ``where``'s result (a host name) is dropped.
    """
    results = {k: v for k, v in out["results"].items() if k != "where"}
    for v in results.values():
        if isinstance(v, dict) and "message" in v:
            v["message"] = v["message"].split(" on ")[0]
    reports = {}
    for name, r in out["reports"].items():
        r = {k: v for k, v in r.items() if k not in DIFFER}
        del r["peak_memory"]
        if name in SIZED_BY_NODE:
            r["allocation"] = {"cores": r["allocation"]["cores"]}
        r["error"] = r["error"].split(" on ")[0]
        reports[name] = r
    return {"results": results, "reports": reports}


def peaks(out: dict[str, Any]) -> dict[str, int]:
    """Each task's measured peak memory, in MiB."""
    return {name: r["peak_memory"] // MiB for name, r in out["reports"].items()}


def _backend(name: str) -> tuple[Any, Any]:
    """The ``backend=`` a command-line name stands for, and what to close afterwards."""
    if name == "local":
        return None, None
    if name == "local-cluster":
        from distributed import LocalCluster

        c = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
        return c, c
    if name == "slurm":
        from dask_jobqueue import SLURMCluster

        c = SLURMCluster(cores=1, memory="2GB", processes=1, walltime="00:30:00")
        c.scale(jobs=2)
        return c, c
    return name, None  # a scheduler address


def main(argv: list[str] | None = None) -> int:
    """Run the script on the backend named on the command line; print the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="local", help="local, local-cluster, slurm, or tcp://host:port")
    args = ap.parse_args(argv)
    backend, owned = _backend(args.backend)
    try:
        json.dump(run(backend), sys.stdout, indent=1, default=str)
        print()
    finally:
        if owned is not None:
            owned.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
