"""The Dask backend: loadmaster's nodes on the workers of a Dask cluster.

Runs in the client (``coerce_backend``, ``carrier.py``), in each Dask worker
(``plugin.py``) and beside the workers of each node (``host.py``); see those
modules. ``distributed`` (the ``dask`` extra) is imported only when a Dask
backend is made, never by ``import loadmaster``.

Does not cover: placement, sizing or retries (the engine's and the
scheduler's), nor the node runtime itself (``node/runtime.py``).
"""

from __future__ import annotations

from typing import Any

from loadmaster.errors import InvalidSpec
from loadmaster.node.orders import NodeConfig

__all__ = ["coerce_backend"]


def coerce_backend(target: Any, config: NodeConfig) -> Any:
    """Return a :class:`~loadmaster.backends.dask.carrier.DaskBackend` for ``target``.

    ``target`` is a scheduler address (``"tcp://host:port"``), a
    ``distributed.Client`` (its address and security are used; the client
    itself is left alone), or a cluster object with a ``scheduler_address``
    (``LocalCluster``, dask-jobqueue's ``SLURMCluster``, ``PBSCluster`` and
    the others; the cluster is not closed by the executor). ``config`` is
    the node runtime each node builds.

    Raises:
        InvalidSpec: ``target`` is none of these, or ``distributed`` is not installed.
        WorkerLost: no worker joined, or a node's runtime failed to start.
    """
    address: Any
    if isinstance(target, str):
        address, security = target, None
    else:
        address = getattr(target, "scheduler_address", None)
        security = getattr(target, "security", None)
        if address is None:
            scheduler = getattr(target, "scheduler", None)  # a Client: its rpc to the scheduler
            address = getattr(scheduler, "address", None)
        if not isinstance(address, str):
            raise InvalidSpec(
                f"backend: {target!r} is not a loadmaster Backend, a distributed.Client, a Dask cluster "
                "(an object with .scheduler_address) or a scheduler address such as 'tcp://host:8786'")
    try:
        from loadmaster.backends.dask.carrier import DaskBackend
    except ImportError as exc:
        raise InvalidSpec(f"backend: a Dask backend needs distributed ({exc}); "
                          "install it with `pip install loadmaster[dask]`") from None
    on_close = target.close if type(target).__name__ == "OwnedCluster" else None
    cluster = getattr(target, "cluster", target)

    def grows() -> bool:  # distributed's Cluster.adapt() keeps its Adaptive here
        return getattr(cluster, "_adaptive", None) is not None

    return DaskBackend(address, config=config, security=security, on_close=on_close, grows=grows)
