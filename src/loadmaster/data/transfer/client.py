"""The submitter's side of wired transfers: its server, the planner at dispatch, outputs pulled back.

Runs in the client. The executor makes one :class:`ClientTransfers` when its
backend is remote (Dask): it starts the submitter's
:class:`~loadmaster.data.transfer.server.TransferServer` over the files tasks
declare (:meth:`declared`, submitting threads), on the address the nodes reach
the client by, signed with the run's secret. The engine thread then:

* tells it which nodes serve transfers (:meth:`join`, :meth:`leave`, from
  ``NodeInfo.transfer_address``);
* asks, for each order with declared inputs, for a source per input the node
  lacks (:meth:`plan`: the planner reserves both limits), and puts the chosen
  sources in the order; a source on the node's own host goes first as a path
  (the node's local fetcher copies it; no TCP);
* releases those reservations when the node's ``Done`` (``"done"`` or
  ``"failed"``), ``Lost`` or leaving comes back (:meth:`release`);
* pulls each output the node left in its cache (neither kept nor copied back)
  from the node's server into the submitter's path (:meth:`pull_outputs`,
  through a temporary name beside it, checked against the digest, renamed),
  on a few threads of its own (:meth:`pull_later`): a slow pull never holds
  up the engine's thread.

When every holder is at its limit the order still goes, with the holders as
unreserved sources (so a task never waits on the planner); such an input is
counted in :attr:`unplanned`.

Does not cover: serving or fetching bytes (``server.py``, ``peer.py``), the
choice itself (``planner.py``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence

from loadmaster.data.cache import remove_tree
from loadmaster.data.digest import HashMemo, new_hasher
from loadmaster.data.refs import DataOrder, DataReport, InputRef, Source
from loadmaster.data.replicas import READY, ReplicaTable
from loadmaster.data.stage import replace_tree
from loadmaster.data.transfer.peer import BUF, split_address
from loadmaster.data.transfer.planner import SUBMITTER, Reservation, TransferPlanner
from loadmaster.data.transfer.protocol import ProtocolError, request
from loadmaster.data.transfer.server import FileCatalog, TransferServer
from loadmaster.data.transfer.tree import recv_tree

log = logging.getLogger(__name__)


def address_towards(target: str) -> str:
    """This host's IP address on the route to ``target`` (``"tcp://host:port"`` or ``"host:port"``)."""
    hostport = target.split("://", 1)[-1]
    host, _, _ = hostport.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))  # no packet is sent: this only picks the route
            return str(s.getsockname()[0])
    except OSError:  # not an IPv4 route (inproc://, a name that does not resolve): this host only
        return "127.0.0.1"


class ClientTransfers:
    """See the module docstring.

    Args:
        secret: the run's secret (the nodes' servers check it too).
        replicas: the executor's replica table (shared with placement).
        listen: the address the submitter's server listens on (one the nodes reach).
        submitter_limit, source_limit, dest_limit: the planner's limits.
    """

    def __init__(self, secret: bytes, replicas: ReplicaTable, listen: str, *, submitter_limit: int = 1,
                 source_limit: int = 2, dest_limit: int = 2) -> None:
        self.secret = secret
        self.host = socket.gethostname()
        self.catalog = FileCatalog()
        self.server = TransferServer(secret, files=self.catalog, host=listen)
        self.planner = TransferPlanner(replicas, source_limit=source_limit, dest_limit=dest_limit,
                                       submitter_limit=submitter_limit)
        self.planner.add_submitter(self.host, self.server.address)
        self.hosts: dict[str, str] = {}  # node -> its host
        self.addresses: dict[str, str] = {}  # node -> its transfer server
        self.unplanned = 0
        self.pulled = 0  # bytes of outputs pulled into the submitter's paths
        self._pullers: concurrent.futures.ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the submitter's server (and the output pullers, after the pulls under way)."""
        self.server.close()
        if self._pullers is not None:
            self._pullers.shutdown(wait=True)

    # ── submitting threads ────────────────────────────────────────────────────
    def declared(self, data: DataOrder) -> None:
        """The submitter serves these inputs' files (those read from its own paths)."""
        for ref in data.inputs:
            if any(s.node == SUBMITTER for s in ref.sources):
                self.catalog.add(ref.digest, ref.key)
                self.planner.declare(ref.digest)

    # ── engine thread ─────────────────────────────────────────────────────────
    def join(self, name: str, host: str, address: str) -> None:
        """Node ``name`` on ``host`` serves transfers at ``address`` (``""``: it does not)."""
        self.hosts[name] = host
        if address:
            self.addresses[name] = address
            self.planner.add_node(name, host, address)

    def leave(self, name: str) -> None:
        """``name`` left: release what it was in (as ``"dead"``); it holds nothing."""
        self.hosts.pop(name, None)
        self.addresses.pop(name, None)
        self.planner.remove_node(name)

    def plan(self, node: str, data: DataOrder) -> tuple[DataOrder, tuple[Reservation, ...]]:
        """``data`` with a planned source per input ``node`` lacks, and the reservations made."""
        if not data.inputs or node not in self.addresses:
            return data, ()
        taken: list[Reservation] = []
        refs: list[InputRef] = []
        for ref in data.inputs:
            sources = self._sources(node, ref, taken)
            refs.append(ref if sources is None else dataclasses.replace(ref, sources=sources))
        return dataclasses.replace(data, inputs=tuple(refs)), tuple(taken)

    def _sources(self, node: str, ref: InputRef, taken: list[Reservation]) -> tuple[Source, ...] | None:
        """The sources to put in ``node``'s order for ``ref`` (None: keep the declared ones)."""
        states = self.planner.replicas.states(ref.digest)
        if states.get(node) == READY:
            return None  # a cache hit there
        # The submitter's own path, when the node is on this host (its local fetcher tries it first).
        local = tuple(s for s in ref.sources if s.node == SUBMITTER and not s.address
                      and s.host == self.hosts.get(node))
        if states.get(node) is None:
            try:
                r = self.planner.plan(ref.digest, ref.size, node)
            except LookupError:
                return None
            if r is not None:
                taken.append(r)
                return (*local, *r.sources)
            self.unplanned += 1  # every holder at its limit: go anyway, unreserved (a task never waits)
        # Arriving there for another order already (its cache waits for that copy), or unplanned:
        # the ready holders as unreserved sources, in case that copy fails.
        peers = tuple(Source(n, self.hosts.get(n, ""), "", self.addresses[n])
                      for n, st in states.items() if st == READY and n in self.addresses and n != node)
        if states.get(SUBMITTER) == READY:
            peers += (Source(SUBMITTER, self.host, "", self.server.address),)
        return (*local, *peers) if peers or local else None

    def release(self, reservations: Sequence[Reservation], outcome: str) -> None:
        """Release these reservations once each (``"done"``, ``"failed"``, ``"dead"``)."""
        for r in reservations:
            self.planner.release(r, outcome)

    @staticmethod
    def to_pull(report: DataReport) -> bool:
        """Whether the node left any of ``report``'s outputs for the client to pull."""
        return any(not (p.kept or p.copied_back) for p in report.outputs)

    def pull_later(self, node: str, report: DataReport, done: Callable[[str], None]) -> None:
        """:meth:`pull_outputs` on a puller thread; then ``done(why)`` there (``""``: all arrived)."""
        if self._pullers is None:
            self._pullers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="loadmaster-pull")

        def run() -> None:
            try:
                why = self.pull_outputs(node, report)
            except BaseException as exc:  # the task's future must still settle, saying why
                log.exception("pulling the outputs of %s failed", node)
                why = f"outputs could not be pulled from {node}: {type(exc).__name__}: {exc}"
            done(why)
        self._pullers.submit(run)

    def pull_outputs(self, node: str, report: DataReport) -> str:
        """Pull ``node``'s outputs that are neither kept nor copied back; ``""``, or why one failed."""
        for p in report.outputs:
            if p.kept or p.copied_back:
                continue
            address = self.addresses.get(node)
            if address is None:
                return f"output {p.key!r} stayed on {node}, which serves no transfers; it cannot be fetched"
            try:
                pull(self.secret, address, p.digest, p.size, p.key, kind=p.kind)
            except (OSError, ProtocolError) as exc:
                return (f"output {p.key!r} could not be fetched from {node} ({address}): {exc}; "
                        "check that the submitter reaches the node's address and the directory is writable")
            self.pulled += p.size
        return ""


def pull(secret: bytes, address: str, digest: str, size: int, dest: str, *, kind: str = "file",
         timeout_s: float = 60.0) -> None:
    """Fetch ``digest`` from the server at ``address`` into ``dest``: a temporary name beside it, checked, renamed.

    A directory (``kind="dir"``) comes whole (``tree.py``), is hashed, and replaces ``dest`` whole.

    Raises:
        ProtocolError: refused, short, or the bytes are not ``digest`` (``dest`` is untouched).
        OSError: the connection or ``dest``'s directory failed.
    """
    parent = os.path.dirname(dest)
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.loadmaster-{uuid.uuid4().hex[:12]}")
    host, port = split_address(address)
    if kind == "dir":
        try:
            with socket.create_connection((host, port), timeout=timeout_s) as sock:
                ans = request(sock, secret, digest, 0, 10.0)
                if ans["size"] != size:
                    raise ProtocolError(f"it holds {ans['size']} bytes under this digest, {size} were reported")
                recv_tree(sock, ans, size, tmp)
            if HashMemo(None).path(tmp)[0] != digest:
                raise ProtocolError("the tree received is not the output's digest")
            replace_tree(tmp, dest)
        except BaseException:
            remove_tree(tmp)
            raise
        return
    h = new_hasher()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock, open(tmp, "wb") as fh:
            ans = request(sock, secret, digest, 0, 10.0)
            if ans.get("state") == "tree":
                raise ProtocolError("it holds a directory, asked for a file")
            if ans["size"] != size:
                raise ProtocolError(f"it holds {ans['size']} bytes under this digest, {size} were reported")
            got = 0
            buf = bytearray(BUF)
            view = memoryview(buf)
            while got < size:
                n = sock.recv_into(view, min(BUF, size - got))
                if not n:
                    raise ProtocolError(f"the node stopped at {got} of {size} bytes")
                h.update(view[:n])
                fh.write(view[:n])
                got += n
        if h.hexdigest() != digest:
            raise ProtocolError("the bytes received are not the output's digest")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
