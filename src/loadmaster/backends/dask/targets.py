"""Naming a Dask cluster on the command line, and what each of its nodes holds.

Runs in the client (``loadmaster run --scheduler/--cluster``, ``loadmaster
nodes``); :func:`node_probe` runs in each Dask worker (``client.run``).

``--cluster KIND:key=value,...`` starts a cluster for the command and stops
it afterwards: ``slurm`` (dask-jobqueue's ``SLURMCluster``), ``pbs``,
``sge``, ``lsf``, ``htcondor`` (their jobqueue clusters) or ``local``
(``LocalCluster``). ``jobs=N`` (jobqueue) or ``workers=N`` (local) is how
many to start; every other key is the cluster class's own keyword (``cores``,
``memory``, ``processes``, ``queue``, ``walltime``, ``account``...), its value
an int or float where it reads as one.

Does not cover: carrying orders (``carrier.py``); the node's own view of its
capacity (``node/capacity.py``) and ledger (``node/ledger/book.py``), which
:func:`node_probe` only reads.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

from loadmaster.errors import InvalidSpec

KINDS = {
    "slurm": ("dask_jobqueue", "SLURMCluster"),
    "pbs": ("dask_jobqueue", "PBSCluster"),
    "sge": ("dask_jobqueue", "SGECluster"),
    "lsf": ("dask_jobqueue", "LSFCluster"),
    "htcondor": ("dask_jobqueue", "HTCondorCluster"),
    "local": ("distributed", "LocalCluster"),
}
START_TIMEOUT_S = 300.0  # a batch system may take a while to start the jobs


def _value(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_cluster_spec(spec: str) -> tuple[str, dict[str, Any], int]:
    """Split ``KIND:key=value,...`` into the kind, the cluster's keywords and the job/worker count.

    Raises:
        InvalidSpec: an unknown kind, or a part that is not ``key=value``.
    """
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise InvalidSpec(f"--cluster {spec!r}: unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise InvalidSpec(f"--cluster {spec!r}: {part!r} is not key=value (e.g. slurm:cores=1,memory=2GB,jobs=4)")
        options[key.strip()] = _value(value.strip())
    count_key = "workers" if kind == "local" else "jobs"
    count = options.pop(count_key, 1)
    if not isinstance(count, int) or count < 1:
        raise InvalidSpec(f"--cluster {spec!r}: {count_key}={count!r} must be a whole number >= 1")
    return kind, options, count


class OwnedCluster:
    """A cluster started for one executor: its Dask backend closes it when it closes."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.scheduler_address: str = cluster.scheduler_address
        self.security = getattr(cluster, "security", None)

    def close(self) -> None:
        """Stop the cluster (its jobs or worker processes)."""
        self.cluster.close()


def start_cluster(spec: str) -> Any:
    """Start the cluster ``spec`` names (``KIND:key=value,...``, see the module docstring).

    Raises:
        InvalidSpec: a bad spec, or the package its kind needs is missing.
    """
    kind, options, count = parse_cluster_spec(spec)
    module_name, cls_name = KINDS[kind]
    try:
        module = __import__(module_name, fromlist=[cls_name])
    except ImportError as exc:
        raise InvalidSpec(f"--cluster {kind}: needs {module_name} ({exc}); "
                          "install it with `pip install loadmaster[dask]`") from None
    cls = getattr(module, cls_name)
    try:
        if kind == "local":
            options.setdefault("dashboard_address", None)
            return cls(n_workers=count, **options)
        c = cls(**options)
    except TypeError as exc:
        raise InvalidSpec(f"--cluster {spec!r}: {exc}") from None
    c.scale(jobs=count)
    return c


def backend_from_args(scheduler: str | None, cluster: str | None) -> Any:
    """The ``backend=`` a command line names: ``None`` (this machine), an address, or a cluster it starts.

    Raises:
        InvalidSpec: both given, or a bad ``--cluster``.
    """
    if scheduler and cluster:
        raise InvalidSpec("give --scheduler or --cluster, not both")
    if cluster:
        return OwnedCluster(start_cluster(cluster))
    return scheduler or None


@contextlib.contextmanager
def open_target(scheduler: str | None, cluster: str | None) -> Iterator[Any]:
    """Like :func:`backend_from_args`, for a command that uses the cluster itself: stops what it started."""
    target = backend_from_args(scheduler, cluster)
    try:
        yield target.scheduler_address if isinstance(target, OwnedCluster) else target
    finally:
        if isinstance(target, OwnedCluster):
            target.close()


def node_probe() -> dict[str, Any]:
    """What this worker's node grants and holds (run in a Dask worker by ``loadmaster nodes``).

    ``key`` names the node as the Dask backend does (one node runtime per
    host, network namespace and Slurm job): workers with the same key are one node.
    """
    from loadmaster.node.capacity import detect_capacity
    from loadmaster.node.ledger.book import MemoryLedger
    from loadmaster.node.runtime import node_capacity
    from loadmaster.spec import Resources

    detected = detect_capacity(os.getcwd())
    cap = node_capacity(detected, Resources())
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    out: dict[str, Any] = {
        "key": f"{socket.gethostname()}/{netns}/{os.environ.get('SLURM_JOB_ID', '')}",
        "host": socket.gethostname(),
        "capacity": cap.as_dict(),
        "sources": dict(detected.sources),
        "runtimes": _host_runtimes(),
    }
    try:
        snap = MemoryLedger().snapshot()
        out["ledger"] = {"path": snap.path, "held_bytes": snap.held_bytes,
                         "holders": [{"label": h.label, "pid": h.pid, "nbytes": h.nbytes} for h in snap.holders]}
    except Exception as exc:  # the ledger is a view here; the node still shows
        out["ledger"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _host_runtimes() -> int:
    """How many loadmaster node hosts of this user listen in this network namespace."""
    prefix = f"@loadmaster-host-{os.getuid()}-"
    n = 0
    try:
        with open("/proc/net/unix") as fh:
            for line in fh:
                f = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; a listener's flags: __SO_ACCEPTCON
                if len(f) >= 8 and f[7].startswith(prefix) and f[3] == "00010000":
                    n += 1
    except OSError:
        return 0
    return n
