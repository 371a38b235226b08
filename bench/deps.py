"""Dependency shipping: pack, build per node, and what a task in an environment costs (issue 16).

Measures, on this machine (one node):

* finding a function's modules and mapping them to distributions;
* packing the wheel set (cold: rebuilt from RECORD into a plain tar; warm: cached by key);
* a new environment on the node, for a pure-Python set (tqdm, toolz, a small
  package made here) and a numpy-sized one, by ``uv`` and by unpacking, and
  warm (already built);
* from a bare worker venv (Python, loadmaster and Dask only, built offline),
  the round trip submit -> Done of a task with no dependencies against the
  second and later tasks of the numpy + package + helper function in its
  environment's zygote (median of ``--rounds``); each order carries the wheel
  set as a declared input, as the executor's do (staged into the node's cache
  by the first, left out once the environment is built).

    flock /tmp/lm-bench.lock .venv/bin/python bench/deps.py [--rounds 41] [--dask]

``--dask`` (root): the same function through ``Executor(deps=True)`` on two
emulated nodes whose Dask workers run the bare venv and cannot see the
client's wheel sets, the user's files, the package or numpy (``hide=``): the
first tasks (each node gets the set through the data layer and builds), then
sequential round trips of a task with no dependencies and of the function
(Dask's carrying included), and the bytes each node received.

Writes ``bench/results/deps.json``.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import cloudpickle  # noqa: E402
from tests.deps_fixtures.bare import make_bare_venv  # noqa: E402
from tests.deps_fixtures.userdir import tiny_site, user_dir  # noqa: E402

from loadmaster.deps import build, dists, find, pack  # noqa: E402
from loadmaster.deps.source import LocalSource  # noqa: E402


def _ms(s: float) -> float:
    return round(s * 1e3, 2)


def _envs(needs: dists.Needs, tmp: Path, label: str, out: dict) -> None:
    cache = tmp / f"ws-{label}"
    packed = pack.pack(needs, str(cache))
    warm_pack = pack.pack(needs, str(cache))
    row = {"wheels": len(packed.wheels), "set_mb": round(packed.size / 2**20, 1),
           "pack_ms": _ms(packed.seconds), "pack_cached_ms": _ms(warm_pack.seconds)}
    methods = ["unpack"] + (["uv"] if build.find_uv() else [])
    for method in methods:
        root = tmp / f"envs-{label}-{method}"
        env = build.ensure(packed.key, LocalSource(str(cache)), str(root), method=method)
        warm = build.ensure(packed.key, LocalSource(str(cache)), str(root), method=method)
        row[f"{method}_new_ms"] = _ms(env.seconds)
        row[f"{method}_warm_ms"] = _ms(warm.seconds)
    out[label] = row


def _dask(work: object, python: Path, tmp: Path, rounds: int) -> dict:
    """Through Executor(deps=True) on two emulated bare nodes: first tasks (each node builds), then round trips."""
    import numpy
    from tests.cluster.netnodes import EmulatedNodes

    from loadmaster import Executor

    os.environ["LOADMASTER_DEPS_CACHE"] = str(tmp / "ws-dask")
    (tmp / "ws-dask").mkdir()
    hide = [str(tmp / "ws-dask"), str(tmp / "user"), str(tmp / "tiny-site"), os.path.dirname(numpy.__file__)]

    def plain(n: int) -> int:
        return n

    row: dict = {}
    with EmulatedNodes(2, rate_mbit=None, python=str(python), base_dir=tmp / "nodes", hide=hide) as nodes:
        with Executor(backend=nodes.client(), deps=True, sandbox=False, ledger=False,
                      history=str(tmp / "dask.sqlite")) as ex:
            t0 = time.perf_counter()
            first = [ex.submit(work.quick, n) for n in range(4)]  # type: ignore[attr-defined]
            for f in first:
                f.result(timeout=300)
            row["first_4_tasks_s (both nodes fetch and build)"] = round(time.perf_counter() - t0, 3)
            got: dict[str, int] = {}
            for f in first:
                data = f.report.data if f.report is not None else None
                if data is not None:
                    got[data.node] = got.get(data.node, 0) + data.bytes_fetched
            packed = ex.deps._by_key[first[0].report.extra["environment"]].packed  # type: ignore[union-attr]
            row["set_bytes"] = packed.size
            row["set_bytes_received_per_node"] = got
            row["submitter_sent_bytes"] = ex._transfers.server.bytes_sent
            for name, fn in (("no_deps", plain), ("deps", work.quick)):  # type: ignore[attr-defined]
                ex.submit(fn, 1).result(timeout=120)
                took = []
                for _ in range(rounds):
                    t = time.perf_counter()
                    ex.submit(fn, 3).result(timeout=120)
                    took.append(time.perf_counter() - t)
                row[f"{name}_round_trip_median_ms"] = _ms(statistics.median(took))
        row["environments_per_node"] = {
            node.name: sorted(p.name for p in (Path(node.dirs.cache) / "envs").iterdir()
                              if p.is_dir() and not p.name.startswith("."))
            if (Path(node.dirs.cache) / "envs").is_dir() else [] for node in nodes}
    row["extra_ms"] = round(row["deps_round_trip_median_ms"] - row["no_deps_round_trip_median_ms"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--dask", action="store_true",
                    help="also on 2 emulated nodes (root, network namespaces) whose Dask workers run the bare venv")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lm-bench-deps-"))
    udir, site = user_dir(tmp), tiny_site(tmp)
    sys.path[:0] = [str(udir), str(site)]
    dists.forget()
    import work  # type: ignore[import-not-found]

    out: dict = {"python": sys.version.split()[0], "uv": build.find_uv()}
    tm = time.perf_counter()
    dists.is_users_module("loadmaster")  # the installed distributions' metadata, read once per process
    t0 = time.perf_counter()
    out["metadata_ms"] = _ms(t0 - tm)
    found = find.find_modules(work.task)
    t1 = time.perf_counter()
    needs = dists.resolve(found)
    t2 = time.perf_counter()
    out["find_ms"], out["resolve_ms"] = _ms(t1 - t0), _ms(t2 - t1)
    out["found"] = {"dists": {k: d.version for k, d in needs.dists.items()}, "user": sorted(needs.user)}

    pure = dists.with_requirements(["tinypkg", "tqdm", "toolz"], base=frozenset())
    _envs(pure, tmp, "pure_python", out)
    _envs(needs, tmp, "numpy_set", out)

    python = make_bare_venv(tmp / "bare")
    cache = tmp / "ws-numpy_set"
    packed = pack.pack(needs, str(cache))
    spec = {"source": str(cache), "env_root": str(tmp / "envs-node"), "key": packed.key, "declare": True,
            "cache_dir": str(tmp / "node-cache"),
            "fn": cloudpickle.dumps(work.task).hex(), "plain": cloudpickle.dumps(lambda n: n).hex(),
            "timed": cloudpickle.dumps(work.quick).hex(),
            "args": [[10]], "repeat": args.rounds}
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-m", "loadmaster.deps.nodecheck", str(tmp / "spec.json")],
                          env=env, capture_output=True, text=True, check=True, cwd=tmp)
    node = json.loads(done.stdout)
    # The same function on a node where everything is installed already (this interpreter,
    # the user's directory and the package on its path, no environment): what numpy costs
    # a task by itself, apart from shipping.
    (tmp / "spec-local.json").write_text(json.dumps(spec | {"key": ""}))
    local_env = env | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(udir), str(site)])}
    local = json.loads(subprocess.run([sys.executable, "-m", "loadmaster.deps.nodecheck", str(tmp / "spec-local.json")],
                                      env=local_env, capture_output=True, text=True, check=True, cwd=tmp).stdout)
    plain = statistics.median(node["plain_s"][1:])
    deps = statistics.median(node["deps_s"][1:])
    out["bare_worker"] = {
        "first_task_ms (builds the environment, starts its zygote)": _ms(node["tasks"][0]["seconds"]),
        "environment": node["environment"],
        "no_deps_task_median_ms": _ms(plain), "deps_task_median_ms": _ms(deps),
        "extra_ms": _ms(deps - plain), "rounds": args.rounds,
        "same_task_preinstalled_median_ms": _ms(statistics.median(local["deps_s"][1:])),
        "no_deps_task_preinstalled_median_ms": _ms(statistics.median(local["plain_s"][1:])),
        "result": node["tasks"][0]["result"],
    }
    if args.dask:
        out["dask"] = _dask(work, python, tmp, args.rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    res = ROOT / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / "deps.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
