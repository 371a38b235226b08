"""N emulated nodes on one machine: Dask workers in network namespaces behind shaped links.

Who runs this: the pytest process or a bench script, as root. It builds, per run::

    root netns (the host: this process, the Dask scheduler, the client)
       lh<tag>  10.A.B.1/24 ──veth── switch netns "lmsw-<tag>": bridge br0
                                       ├─veth── node netns "lmn-<tag>-0": eth0 10.A.B.2
                                       ├─veth── node netns "lmn-<tag>-1": eth0 10.A.B.3
                                       └─ ...

``tc tbf`` on a node's ``eth0`` limits its uplink, on the switch's end of the same
pair its downlink (netem, fq, sfq are not in this kernel: rates work, delay and
loss do not). The host's own link is not shaped. One Dask scheduler runs on the host
at 10.A.B.1; each node runs one ``dask worker`` (no nanny: ``kill -9`` really loses
the node) entered into the node's network namespace with ``nsenter --net`` (not
``ip netns exec``, which remounts ``/sys`` and would hide ``/sys/fs/cgroup`` from the
node), into a UTS namespace of its own whose host name is the node's name (``node-<i>``:
``socket.gethostname()`` on the node, and so ``TaskReport.host``, says which node ran a
task) and, with ``memory_limit``, into a v1 memory cgroup of its own (a child of this
process's memory cgroup) so the node and everything it forks is a machine of that
size to the kernel.

Each node gets its own directories under ``base_dir/node-<i>/`` and the environment
variables that point loadmaster there: ``LOADMASTER_LEDGER`` (ledger dir),
``LOADMASTER_HISTORY`` (history database), ``TMPDIR`` (temporary files; the local
backend's work and sandbox directories go there), ``LOADMASTER_SANDBOX_DIR`` and
``LOADMASTER_CACHE_DIR`` (reserved for the sandbox), ``LOADMASTER_CACHE`` (the
node runtime's cache of declared files; each node has its own).

``hide``: directories the nodes must not see (no shared file system): each worker
starts in a mount namespace of its own in which a small empty ``tmpfs`` covers
each of them, so a file the submitter keeps there can reach a node only over the
network.

Names are unique per run (pid + counter), the subnet is chosen under a lock among
those no interface uses, so runs may overlap. ``__exit__`` always tears everything
down: worker processes, anything left in the node cgroups, the scheduler, the
namespaces (their veths go with them), the cgroups, the directories it created.

Usage::

    with EmulatedNodes(4, rate_mbit=100, memory_limit="2GiB") as nodes:
        client = nodes.client()
        client.submit(f, workers=[nodes[0].worker_address]).result()
        nodes.kill_worker(1)                 # SIGKILL: the scheduler sees it leave
        sent = nodes.link_counters(0).tx_bytes

What it does *not* cover: added latency or loss (no netem), shaping between two nodes
beyond each one's own up/downlink, more than 250 nodes per run, cgroup v2 hosts (a
``memory_limit`` needs the v1 memory controller).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

_COUNTER = itertools.count()
REPO = Path(__file__).resolve().parents[2]
LOCK_PATH = "/run/lock/loadmaster-netnodes.lock"
START_TIMEOUT_S = 180  # 2 loaded cores start N dask workers slowly
V1_MEMORY = Path("/sys/fs/cgroup/memory")


class NodesUnavailable(RuntimeError):
    """Raised when this machine cannot build emulated nodes (not root, no netns, no cgroup)."""


@dataclass(frozen=True)
class NodeDirs:
    """One node's own directories (all under ``root``)."""

    root: Path
    ledger: Path
    history: Path
    sandbox: Path
    cache: Path
    tmp: Path

    def env(self) -> dict[str, str]:
        """The environment variables that point a node's processes at these directories."""
        return {
            "LOADMASTER_LEDGER": str(self.ledger),
            "LOADMASTER_HISTORY": str(self.history),
            "LOADMASTER_SANDBOX_DIR": str(self.sandbox),
            "LOADMASTER_CACHE_DIR": str(self.cache),
            "LOADMASTER_CACHE": str(self.cache),  # the node runtime's cache of declared files
            "TMPDIR": str(self.tmp),
        }


@dataclass(frozen=True)
class LinkCounters:
    """Bytes through a node's link, read on the node's end (``/sys/class/net/eth0/statistics``).

    ``tx_bytes`` is what the node sent (its uplink), ``rx_bytes`` what it received.
    """

    tx_bytes: int
    rx_bytes: int


@dataclass
class Node:
    """One emulated node: its namespace, address, directories, cgroup and worker process."""

    index: int
    name: str
    rate_mbit: float | None
    netns: str
    address: str
    dirs: NodeDirs
    cgroup: Path | None
    proc: subprocess.Popen[bytes] | None = None
    worker_address: str = ""
    log: Path = field(default=Path())


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise NodesUnavailable(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why emulated nodes cannot run here, or None when they can (root, ``ip netns``, veth, tbf)."""
    if os.geteuid() != 0:
        return "emulated nodes need root (network namespaces, veth, tc)"
    for tool in ("ip", "tc", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / util-linux)"
    ns = f"lm-probe-{os.getpid()}-{next(_COUNTER)}"
    try:
        _run("ip", "netns", "add", ns)
        try:
            _run("ip", "-n", ns, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "pa", "root", "tbf",
                 "rate", "10mbit", "burst", "32kbit", "latency", "400ms")
        finally:
            _run("ip", "netns", "del", ns, check=False)
    except NodesUnavailable as e:
        return f"network namespaces with veth and tbf do not work here: {e}"
    return None


def _own_memory_cgroup() -> Path:
    """This process's v1 memory cgroup directory (node cgroups are made inside it)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return V1_MEMORY / path.lstrip("/")
    raise NodesUnavailable("no v1 memory controller (see /proc/self/cgroup): memory_limit needs one")


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    s = size.strip().lower().removesuffix("b").removesuffix("i")
    if s and s[-1] in units:
        return int(float(s[:-1]) * units[s[-1]])
    return int(s)


def _free_subnet() -> tuple[int, int]:
    """A 10.A.B.0/24 no interface or route of the root namespace uses (call under the lock)."""
    used = _run("ip", "-4", "-o", "addr").stdout + _run("ip", "-4", "route").stdout
    start = os.getpid() % 200
    for k in range(200 * 250):
        a, b = 100 + (start + k // 250) % 150, (os.getpid() + k) % 250 + 1
        if f"10.{a}.{b}." not in used:
            return a, b
    raise NodesUnavailable("no free 10.x.y.0/24 subnet for the emulated nodes")


class EmulatedNodes:
    """A context manager: N nodes, a switch, the host link, a scheduler and N Dask workers.

    Args:
        n: number of nodes (1..250).
        rate_mbit: each node's uplink and downlink rate (``tbf``); None leaves links unshaped;
            a sequence gives one rate (or None) per node.
        memory_limit: each node's memory cgroup limit (``"2GiB"`` or bytes); None: no cgroup.
        nthreads: ``dask worker --nthreads``.
        worker_memory_limit: ``dask worker --memory-limit`` (``"0"`` turns Dask's memory
            manager off; default: the node's memory_limit, else ``"0"``).
        resources: ``dask worker --resources`` (e.g. ``{"node": 1}``).
        env: extra environment for every worker.
        base_dir: where the node directories go (default: a new temporary directory,
            removed at exit).
        worker_args: extra ``dask worker`` arguments.
        python: the interpreter the workers run (default: this one).
        hide: directories covered by an empty tmpfs in every worker's own mount namespace
            (the nodes cannot read what the submitter keeps there).

    Raises (from ``__enter__``):
        NodesUnavailable: the machine refuses (not root, no netns/veth/tbf, no cgroup v1
            memory controller for ``memory_limit``).
        TimeoutError: the workers did not join within START_TIMEOUT_S (their logs' tails
            are in the message).
    """

    def __init__(
        self,
        n: int,
        rate_mbit: float | Sequence[float | None] | None = 100,
        memory_limit: int | str | None = None,
        *,
        nthreads: int = 1,
        worker_memory_limit: str | None = None,
        resources: Mapping[str, float] | None = None,
        env: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        worker_args: Sequence[str] = (),
        python: str = sys.executable,
        hide: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        if not 1 <= n <= 250:
            raise ValueError(f"n={n}: between 1 and 250 nodes per run")
        self.n = n
        rates = list(rate_mbit) if isinstance(rate_mbit, Sequence) else [rate_mbit] * n
        if len(rates) != n:
            raise ValueError(f"{len(rates)} rates for {n} nodes")
        self.rates_mbit: list[float | None] = rates
        self.memory_limit_bytes = None if memory_limit is None else _parse_size(memory_limit)
        self.nthreads = nthreads
        self.worker_memory_limit = worker_memory_limit or (
            str(self.memory_limit_bytes) if self.memory_limit_bytes else "0"
        )
        self.resources = dict(resources or {})
        self.extra_env = dict(env or {})
        self.worker_args = list(worker_args)
        self.python = python
        self.hide = [os.path.abspath(os.fspath(d)) for d in hide]
        self.tag = f"{os.getpid() % 100000}x{next(_COUNTER)}"
        self.switch_ns = f"lmsw-{self.tag}"
        self.host_if = f"lh{self.tag}"[:15]
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="lm-nodes-"))
        self.nodes: list[Node] = []
        self.host_address = ""
        self.scheduler_address = ""
        self._scheduler: subprocess.Popen[bytes] | None = None
        self._clients: list[Client] = []
        self._made_ns: list[str] = []
        self._made_cgroups: list[Path] = []

    # -- public -----------------------------------------------------------------

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def client(self, **kwargs: Any) -> Client:
        """A new ``distributed.Client`` on the scheduler (closed at teardown)."""
        from distributed import Client

        c = Client(self.scheduler_address, **kwargs)
        self._clients.append(c)
        return c

    def kill_worker(self, i: int) -> None:
        """SIGKILL node i's Dask worker (and everything in its cgroup); returns once it is dead."""
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=30)
        if node.cgroup is not None:
            self._empty_cgroup(node.cgroup)

    def link_counters(self, i: int) -> LinkCounters:
        """Bytes sent and received on node i's link, read inside its namespace."""
        ns = self.nodes[i].netns
        out = _run("ip", "netns", "exec", ns, "cat",
                   "/sys/class/net/eth0/statistics/tx_bytes", "/sys/class/net/eth0/statistics/rx_bytes").stdout
        tx, rx = (int(x) for x in out.split())
        return LinkCounters(tx_bytes=tx, rx_bytes=rx)

    def oom_kills(self, i: int) -> int:
        """The kernel's OOM kills in node i's memory cgroup (0 without a cgroup)."""
        cg = self.nodes[i].cgroup
        if cg is None:
            return 0
        for line in (cg / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    # -- set-up -----------------------------------------------------------------

    def __enter__(self) -> EmulatedNodes:
        reason = unavailable_reason()
        if reason:
            raise NodesUnavailable(reason)
        try:
            self._build_network()
            self._make_nodes()
            self._start_scheduler()
            self._start_workers()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _shape(self, ns: str, dev: str, rate_mbit: float | None) -> None:
        if rate_mbit is None:
            return
        rate_bps = rate_mbit * 1e6
        burst_bytes = max(int(rate_bps * 0.004 / 8), 4096)  # >= rate x 4 ms (HZ=250 here)
        _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
             "rate", f"{int(rate_bps)}bit", "burst", str(burst_bytes), "latency", "400ms")

    def _build_network(self) -> None:
        sw = self.switch_ns
        _run("ip", "netns", "add", sw)
        self._made_ns.append(sw)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        _run("ip", "-n", sw, "link", "set", "lo", "up")
        with open(LOCK_PATH, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            a, b = _free_subnet()
            self._prefix = f"10.{a}.{b}"
            self.host_address = f"{self._prefix}.1"
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "host", "netns", sw)
            _run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "-n", sw, "link", "set", "host", "master", "br0", "up")

    def _make_nodes(self) -> None:
        parent = _own_memory_cgroup() if self.memory_limit_bytes else None
        for i in range(self.n):
            ns = f"lmn-{self.tag}-{i}"
            _run("ip", "netns", "add", ns)
            self._made_ns.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"n{i}", "netns",
                 self.switch_ns)
            addr = f"{self._prefix}.{i + 2}"
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", self.switch_ns, "link", "set", f"n{i}", "master", "br0", "up")
            self._shape(ns, "eth0", self.rates_mbit[i])  # the node's uplink
            self._shape(self.switch_ns, f"n{i}", self.rates_mbit[i])  # its downlink
            root = self.base_dir / f"node-{i}"
            dirs = NodeDirs(root=root, ledger=root / "ledger", history=root / "history.sqlite",
                            sandbox=root / "sandbox", cache=root / "cache", tmp=root / "tmp")
            for d in (dirs.ledger, dirs.sandbox, dirs.cache, dirs.tmp):
                d.mkdir(parents=True, exist_ok=True)
            cgroup = None
            if parent is not None:
                cgroup = parent / f"lm-node-{self.tag}-{i}"
                try:
                    cgroup.mkdir()
                    self._made_cgroups.append(cgroup)
                    (cgroup / "memory.limit_in_bytes").write_text(str(self.memory_limit_bytes))
                except OSError as e:
                    raise NodesUnavailable(f"cannot make a node's memory cgroup {cgroup}: {e}") from e
            self.nodes.append(Node(index=i, name=f"node-{i}", rate_mbit=self.rates_mbit[i], netns=ns,
                                   address=addr, dirs=dirs, cgroup=cgroup, log=root / "worker.log"))

    def _start_scheduler(self) -> None:
        sched_file = self.base_dir / "scheduler.json"
        log = open(self.base_dir / "scheduler.log", "wb")  # noqa: SIM115 (kept by the child)
        self._scheduler = subprocess.Popen(
            [self.python, "-m", "distributed.cli.dask_scheduler", "--host", self.host_address, "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not sched_file.exists() or not sched_file.read_text().strip().endswith("}"):
            if self._scheduler.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(f"the Dask scheduler did not start: {self._tail(self.base_dir / 'scheduler.log')}")
            time.sleep(0.05)  # readiness wait for the scheduler file, bounded by the deadline
        import json

        self.scheduler_address = json.loads(sched_file.read_text())["address"]

    def _start_workers(self) -> None:
        for node in self.nodes:
            env = dict(os.environ)
            env.update(node.dirs.env())
            env.update(self.extra_env)
            env["LOADMASTER_NODE_NAME"] = node.name
            # Functions of tests/ and bench/ travel by reference: the workers import them.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
            cmd = [self.python, "-m", "distributed.cli.dask_worker", self.scheduler_address,
                   "--name", node.name, "--host", node.address, "--nthreads", str(self.nthreads),
                   "--memory-limit", self.worker_memory_limit, "--no-nanny", "--no-dashboard",
                   "--local-directory", str(node.dirs.tmp), "--death-timeout", "60"]
            if self.resources:
                cmd += ["--resources", " ".join(f"{k}={v}" for k, v in self.resources.items())]
            cmd += self.worker_args
            # A UTS namespace of its own (the node's hostname), and with ``hide`` a mount
            # namespace of its own (private propagation) where an empty tmpfs covers each
            # hidden directory: hidden from this worker and all it forks, not from the host.
            mounts = "".join(f'mount -t tmpfs -o size=64k,mode=0755 lm-hidden "${k + 1}" && '
                             for k in range(len(self.hide)))
            ns = ["--uts", "--mount", "--propagation", "private"] if self.hide else ["--uts"]
            inner = ["unshare", *ns, "--", "sh", "-c",
                     f'hostname "$0" && {mounts}shift {len(self.hide)} && exec "$@"', node.name, *self.hide,
                     "nsenter", f"--net=/run/netns/{node.netns}", "--", *cmd]
            if node.cgroup is not None:
                # Enter the cgroup first, then exec into the namespace: the pid stays the worker's.
                inner = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(node.cgroup / "cgroup.procs"), *inner]
            log = open(node.log, "wb")  # noqa: SIM115 (kept by the child)
            node.proc = subprocess.Popen(inner, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
        from distributed import Client

        with Client(self.scheduler_address, timeout=START_TIMEOUT_S) as c:
            try:
                c.wait_for_workers(self.n, timeout=START_TIMEOUT_S)
            except TimeoutError as e:
                tails = "; ".join(f"{nd.name}: {self._tail(nd.log)}" for nd in self.nodes)
                raise TimeoutError(f"{self.n} emulated workers did not join within {START_TIMEOUT_S} s: {tails}") from e
            by_name = {w["name"]: addr for addr, w in c.scheduler_info(n_workers=-1)["workers"].items()}
        for node in self.nodes:
            node.worker_address = by_name[node.name]

    @staticmethod
    def _tail(path: Path, n: int = 400) -> str:
        try:
            return path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
        except OSError:
            return "(no log)"

    # -- teardown ---------------------------------------------------------------

    def _empty_cgroup(self, cg: Path) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)  # the kernel reaps asynchronously; bounded by the deadline

    @staticmethod
    def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 5) -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=30)

    def close(self) -> None:
        """Tear everything down (idempotent; errors are swallowed so every step runs)."""
        for c in self._clients:
            try:
                c.close(timeout=10)
            except Exception:
                pass
        self._clients.clear()
        # Workers first (they would otherwise keep reconnecting to a leaving scheduler).
        self._stop([nd.proc for nd in self.nodes if nd.proc is not None])
        self._stop([self._scheduler] if self._scheduler is not None else [])
        for nd in self.nodes:
            nd.proc = None
        self._scheduler = None
        for cg in self._made_cgroups:
            self._empty_cgroup(cg)
            for _ in range(100):
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)  # rmdir waits for the kernel to release the last task
        self._made_cgroups.clear()
        for ns in reversed(self._made_ns):
            _run("ip", "netns", "del", ns, check=False)
        self._made_ns.clear()
        _run("ip", "link", "del", self.host_if, check=False)
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)


# -- transfers over one link (for tests and bench/netnodes_links.py) ----------------


@dataclass(frozen=True)
class Transfer:
    """One timed transfer between the host and a node.

    ``seconds`` runs from the first to the last byte at the receiver; ``link_bytes`` is
    the change of the node's link counter in that direction (payload plus headers).
    """

    direction: str
    payload_bytes: int
    seconds: float
    link_bytes: int

    @property
    def mbit_s(self) -> float:
        """Payload rate in Mbit/s."""
        return self.payload_bytes * 8 / self.seconds / 1e6

    @property
    def link_mbit_s(self) -> float:
        """Rate on the link counter in Mbit/s."""
        return self.link_bytes * 8 / self.seconds / 1e6


_CHUNK = 1 << 16


def node_send(host: str, port: int, nbytes: int) -> int:
    """Run on a node (a Dask task): connect to the host and send ``nbytes`` zero bytes."""
    import socket

    buf = bytes(_CHUNK)
    with socket.create_connection((host, port), timeout=300) as s:
        left = nbytes
        while left > 0:
            left -= s.send(buf[: min(left, _CHUNK)])
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    return nbytes


def node_recv(host: str, port: int) -> tuple[int, float]:
    """Run on a node (a Dask task): connect to the host, read to EOF; (bytes, first-to-last s)."""
    import socket

    got, first, last = 0, 0.0, 0.0
    with socket.create_connection((host, port), timeout=300) as s:
        while chunk := s.recv(_CHUNK):
            last = time.monotonic()
            if not got:
                first = last
            got += len(chunk)
    return got, last - first


def transfer(nodes: EmulatedNodes, client: Client, i: int, nbytes: int, direction: str = "up") -> Transfer:
    """Move ``nbytes`` over node i's link, up (node to host) or down (host to node), timed.

    The host end is a plain TCP socket on the host's address in this process; the node
    end is a Dask task pinned to node i's worker. Rates come from the receiver's clock.
    """
    return transfer_many(nodes, client, [i], nbytes, direction)[0]


def transfer_many(
    nodes: EmulatedNodes, client: Client, indices: Sequence[int], nbytes: int, direction: str = "up"
) -> list[Transfer]:
    """:func:`transfer` on several nodes' links at once (one TCP stream each).

    Raises:
        RuntimeError: a stream delivered a different number of bytes.
    """
    import socket
    import threading

    if direction not in ("up", "down"):
        raise ValueError(f"direction={direction!r}: 'up' or 'down'")
    servers = [socket.create_server((nodes.host_address, 0)) for _ in indices]
    results: list[dict[str, float]] = [{} for _ in indices]

    def host_side(srv: socket.socket, result: dict[str, float]) -> None:
        conn, _ = srv.accept()
        with conn:
            if direction == "up":
                got, first, last = 0, 0.0, 0.0
                while chunk := conn.recv(_CHUNK):
                    last = time.monotonic()
                    if not got:
                        first = last
                    got += len(chunk)
                conn.sendall(b"k")
                result.update(got=got, seconds=last - first)
            else:
                conn.sendall(bytes(nbytes))

    before = [nodes.link_counters(i) for i in indices]
    threads = [threading.Thread(target=host_side, args=(srv, res), daemon=True)
               for srv, res in zip(servers, results, strict=True)]
    for t in threads:
        t.start()
    futures = []
    for i, srv in zip(indices, servers, strict=True):
        port = srv.getsockname()[1]
        addr = nodes[i].worker_address
        fn, args = (node_send, (nbytes,)) if direction == "up" else (node_recv, ())
        futures.append(client.submit(fn, nodes.host_address, port, *args, workers=[addr], pure=False))
    values = client.gather(futures)
    for t in threads:
        t.join(timeout=600)
    for srv in servers:
        srv.close()
    out = []
    for k, i in enumerate(indices):
        after = nodes.link_counters(i)
        if direction == "up":
            got, seconds = int(results[k]["got"]), results[k]["seconds"]
            link = after.tx_bytes - before[k].tx_bytes
        else:
            got, seconds = values[k]
            link = after.rx_bytes - before[k].rx_bytes
        if got != nbytes:
            raise RuntimeError(f"transfer {direction} on node {i}: {got} of {nbytes} bytes arrived")
        out.append(Transfer(direction=direction, payload_bytes=nbytes, seconds=seconds, link_bytes=link))
    return out
