"""The node side of peer transfers on emulated nodes: run inside each node's Dask worker.

Used by ``bench/data.py`` and ``tests/test_data_transfer.py``: :func:`node_start`
(through ``client.run``) gives the worker a cache and a transfer server on the
node's address for one run; :func:`node_task` (a Dask task pinned to the node)
stages a declared input through :class:`~loadmaster.data.transfer.peer.PeerFetcher`
from the sources the client's planner chose, then reads it whole, as a task
would; :func:`node_stop` ends the run. The file's bytes never go through Dask.

Does not cover: loadmaster's own node runtime (it does not start a transfer
server yet; see docs/data.md).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

MiB = 1 << 20


def node_start(run: str, secret_hex: str, dask_worker: Any = None) -> str:
    """Start a cache and a transfer server for ``run`` in this worker; return the server's address."""
    from loadmaster.data.cache import Cache
    from loadmaster.data.transfer.server import TransferServer

    root = os.path.join(os.environ["LOADMASTER_CACHE_DIR"], run)
    cache = Cache(root)
    srv = TransferServer(bytes.fromhex(secret_hex), cache=cache, host=dask_worker.ip)
    runs = getattr(dask_worker, "_lm_transfer", {})
    runs[run] = (cache, srv)
    dask_worker._lm_transfer = runs
    return srv.address


def node_stop(run: str, dask_worker: Any = None) -> int:
    """Stop ``run``'s server and remove its cache; return the bytes it sent."""
    cache, srv = dask_worker._lm_transfer.pop(run)
    srv.close()
    cache.close()
    shutil.rmtree(cache.root, ignore_errors=True)
    return int(srv.bytes_sent)


def node_task(run: str, secret_hex: str, digest: str, size: int, sources: list[tuple[str, str, str]],
              name: str) -> dict[str, Any]:
    """The task: stage the input (a peer transfer or a cache hit), then read it whole."""
    from distributed import get_worker

    from loadmaster.data.digest import new_hasher
    from loadmaster.data.refs import Source
    from loadmaster.data.transfer.peer import PeerFetcher

    w = get_worker()
    cache, _srv = w._lm_transfer[run]  # type: ignore[attr-defined]
    t0 = time.time()
    got = PeerFetcher(bytes.fromhex(secret_hex), idle_timeout_s=20).fetch(
        digest, size, "file", [Source(n, h, "", a) for n, h, a in sources], cache, name)
    h = new_hasher()
    n = 0
    with open(got.path, "rb", buffering=0) as fh:
        while chunk := fh.read(MiB):
            n += len(chunk)
            h.update(chunk)
    return {"node": w.name, "start": t0, "end": time.time(), "bytes_moved": got.bytes_moved, "source": got.source,
            "via": [list(v) for v in got.via], "fetch_s": got.seconds, "read": n, "digest": h.hexdigest()}
