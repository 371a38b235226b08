"""Run orders on a node runtime of this interpreter and print what happened (a node-side probe).

``python -m loadmaster.deps.nodecheck SPEC.json`` starts a
:class:`~loadmaster.node.runtime.NodeRuntime` here (in whatever environment
this interpreter has: a bare one on a worker), builds the environment of the
key the spec names from its wheel-set directory, runs the spec's function
orders, and prints one JSON object: each task's status, its result when it is
plain data (decoded with the standard unpickler's restricted form: numbers,
strings, lists), the time from submit to ``Done``, and how the environment
was made. Used by the dependency tests and ``bench/deps.py``, which pack on
the submitting side and read this on the node.

SPEC keys: ``source`` (wheel-set directory), ``env_root``, ``key``,
``declare`` (true: each order carries the set as a declared input, staged
into the node's cache at ``cache_dir`` as the executor's orders do),
``fn`` (hex of the cloudpickled function), ``args`` (a list of argument
lists), ``plain`` (hex of a function with no dependencies), ``timed`` (hex
of the function timed, default ``fn``), ``repeat`` (timed rounds of each).
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import time
from typing import Any

from loadmaster.node.orders import Done, NodeConfig, Order, OrderKind
from loadmaster.node.runtime import NodeRuntime
from loadmaster.spec import Resources

ALLOC = Resources(cores=1.0, memory=512 << 20)


class _Plain(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"not plain data: {module}.{name}")


def _result(payload: bytes) -> Any:
    try:
        return _Plain(io.BytesIO(payload)).load()
    except Exception as exc:
        return f"<not plain: {exc}>"


def _run(rt: NodeRuntime, order: Order) -> tuple[Done, float]:
    t0 = time.perf_counter()
    rt.submit([order])
    while True:
        for ev in rt.poll(60.0):
            if isinstance(ev, Done) and ev.task_id == order.task_id:
                return ev, time.perf_counter() - t0


def _declared(spec: dict[str, Any]) -> Any:
    """The wheel set as the executor declares it: one input, named by the digest taken at pack."""
    import os
    import socket

    from loadmaster.data.refs import DataOrder, InputRef, Source
    from loadmaster.deps.pack import read_digest

    path = os.path.join(spec["source"], f"{spec['key']}.tar")
    return DataOrder((InputRef(path, read_digest(path), os.path.getsize(path), "file",
                               (Source("client", socket.gethostname(), path),)),))


def main(argv: list[str] | None = None) -> None:
    """See the module docstring."""
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as fh:
        spec = json.load(fh)
    rt = NodeRuntime(NodeConfig(name="probe", zygotes=1, ledger=False,  # its own work dir, removed at close
                                deps_source=spec["source"], env_root=spec["env_root"],
                                cache_dir=spec.get("cache_dir", "")))
    data = _declared(spec) if spec.get("declare") and spec["key"] else None
    out: dict[str, Any] = {"python": sys.executable, "tasks": [], "plain_s": [], "deps_s": []}
    try:
        fn = bytes.fromhex(spec["fn"])
        ids = iter(range(1, 1 << 30))
        payloads = [pickle.dumps((tuple(a), {})) for a in spec["args"]]
        for payload in payloads:
            done, took = _run(rt, Order(next(ids), 1, OrderKind.FUNCTION, 1, fn, payload, ALLOC, env=spec["key"],
                                        data=data))
            out["tasks"].append({"status": done.status, "result": _result(done.payload)
                                 if done.status == 0 else done.payload.decode("utf-8", "replace")[-2000:],
                                 "seconds": took,
                                 "fetched": None if done.data is None else done.data.bytes_fetched})
        env = rt.environments.get(spec["key"])
        out["environment"] = None if env is None else {
            "site": env.site, "built": env.built, "method": env.method, "seconds": env.seconds}  # type: ignore[attr-defined]
        plain = bytes.fromhex(spec["plain"]) if spec.get("plain") else b""
        timed = bytes.fromhex(spec["timed"]) if spec.get("timed") else fn
        for _ in range(int(spec.get("repeat", 0))):
            if plain:
                _, took = _run(rt, Order(next(ids), 1, OrderKind.FUNCTION, 2, plain, payloads[0], ALLOC))
                out["plain_s"].append(took)
            _, took = _run(rt, Order(next(ids), 1, OrderKind.FUNCTION, 3, timed, payloads[0], ALLOC, env=spec["key"],
                                     data=data))
            out["deps_s"].append(took)
    finally:
        rt.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
