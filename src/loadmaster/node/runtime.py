"""The node runtime: one per node, the same code under every backend.

Runs on the node: in the client's engine thread for the local backend
(``backends/local.py``), beside each Dask worker for the Dask backend. One
thread drives it (``submit``, ``cancel``, ``poll``, ``close``); only
:meth:`NodeRuntime.wake` may be called from any thread.

This module covers:

* what the node grants (``node/capacity.py``) less a memory headroom for the
  system, the client and the zygotes (:func:`node_capacity`);
* the zygotes (``node/process/zygote_client.py``): which one forks an order
  (the one holding the fewest, or for an order with ``after`` the one running
  that task), the function bytes each has seen, a zygote that dies (its tasks
  come back as one :class:`~loadmaster.node.orders.Lost`; the runtime starts
  another in its place);
* the node's share of the memory ledger (``node/ledger/admission.py``):
  :meth:`NodeRuntime.admit`, and giving back chunks not needed for a while;
* tasks' stdout/stderr (capped at ``OUTPUT_MAX`` each): a command's files,
  a function's capture (in the zygote's frame when small); large ones, and
  those of streamed orders, are read on the output thread
  (``node/outputs.py``), so the loop that polls waits on no disk, and their
  ``Done`` comes from a later poll; streamed orders' output also goes up
  while they run (``Output`` events). A command's sandbox diagnosis of what
  it was denied is judged here while the files exist;
* the node's work directory;
* environments (``deps/``): an order with an ``env`` key runs in a zygote of
  that environment, one per key, started (and the environment built from the
  wheel set, once per node) when its first order comes: on a thread of its own
  (``node/envbuilds.py``), so the node's other tasks go on running and
  reporting meanwhile; the orders of that environment wait for it.
* declared files (``data/stage.py``): inputs staged into the node's
  content-addressed cache before an order goes to a zygote (on staging
  threads, ``data/stagers.py``: a slow or stalled copy holds only its own
  order; an order handed ahead behind one being staged waits for it), outputs cached
  and copied back (or left for the client to pull) after its ``Done``; the
  cache's budget is taken off the disk the node offers. With
  :meth:`NodeRuntime.serve_transfers` the cache is served to peers.

Orders come in as :class:`~loadmaster.node.orders.Order` and events go out as
plain dataclasses; nothing of the zygote's wire format leaves this package.

Does not cover: what runs where across nodes, sizing, or retries (the
engine's); what a zygote does (``node/process/zygote.py``).
"""

from __future__ import annotations

import _pickle
import contextlib
import dataclasses
import logging
import os
import select
import shutil
import socket
import tempfile
from collections.abc import Sequence
from typing import Any

from loadmaster.data.refs import DataOrder, DataReport
from loadmaster.deps.source import without_wheels
from loadmaster.node.capacity import Capacity, detect_capacity
from loadmaster.node.envbuilds import Built, EnvBuilds
from loadmaster.node.ledger.admission import NodeAdmission
from loadmaster.node.ledger.book import MemoryLedger
from loadmaster.node.ledger.policy import mem_available
from loadmaster.node.orders import (
    OUTPUT_MAX,
    Done,
    HandedBack,
    Lost,
    Measurement,
    NodeConfig,
    NodeEvent,
    NodeInfo,
    Order,
    Status,
)
from loadmaster.node.outputs import OutputReader, open_zygote_fd, pread_all
from loadmaster.node.process import protocol
from loadmaster.node.process.taskenv import threads_for
from loadmaster.node.process.zygote_client import ZygoteClient
from loadmaster.spec import Resources

log = logging.getLogger("loadmaster.node.runtime")

SYSTEM_HEADROOM_FRACTION = 0.05  # of the detected memory, kept for the system, client and zygotes
SYSTEM_HEADROOM_MIN = 256 << 20  # bytes; at least this much is kept
OUTPUT_INLINE = 1 << 20  # bytes of a command's output read on the loop; more is read by a thread
_NO_MEASUREMENT = Measurement(0, 0, "", 0.0, 0.0, 0, 0, 0.0, 0.0)


def node_capacity(detected: Capacity, caps: Resources) -> Resources:
    """What tasks may use on this node: the grant, less a headroom, capped by ``caps``.

    The system, the client and the zygotes need memory too, and other programs
    may hold some: tasks get the smaller of the detected memory and what the
    node has available now, less 5 % (at least 256 MiB). A cap is used as
    given when it is smaller; a cap larger than the grant is warned about.
    """
    node = detected.as_resources()
    usable = min(node.memory or 0, mem_available())
    headroom = max(SYSTEM_HEADROOM_MIN, int(usable * SYSTEM_HEADROOM_FRACTION))
    node = Resources(cores=node.cores, memory=max(1, usable - headroom), disk=node.disk, gpus=node.gpus)
    for name in ("cores", "memory", "disk", "gpus"):
        cap, have = getattr(caps, name), getattr(node, name)
        if cap is not None and have is not None and cap > have:
            log.warning("a cap of %s=%s is more than this node grants (%s, from %s); using %s",
                        name, cap, have, detected.sources.get(name, "?"), have)
    return Resources(
        cores=min(x for x in (node.cores, caps.cores) if x is not None),
        memory=min(x for x in (node.memory, caps.memory) if x is not None),
        disk=min(x for x in (node.disk, caps.disk) if x is not None),
        gpus=min(x for x in (node.gpus, caps.gpus) if x is not None),
    )


def _read_bytes(path: str) -> bytes:
    """A command's output file, at most ``OUTPUT_MAX`` + 1 bytes; the file is removed."""
    if not path:
        return b""
    try:
        with open(path, "rb") as fh:
            data = fh.read(OUTPUT_MAX + 1)
        os.unlink(path)
    except OSError:
        return b""
    return data


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def _text(data: bytes) -> str:
    """Captured output decoded, capped at ``OUTPUT_MAX`` bytes (more than that says it was cut)."""
    if not data:
        return ""
    text = data[:OUTPUT_MAX].decode("utf-8", "replace")
    if len(data) > OUTPUT_MAX:
        text += f"\n[loadmaster: output truncated at {OUTPUT_MAX} bytes]"
    return text


class NodeRuntime:
    """Capacity, zygotes, ledger share and work directory of one node.

    Args:
        config: what to build (see :class:`~loadmaster.node.orders.NodeConfig`).

    Raises:
        WorkerLost: a zygote did not start.
        LedgerError: the ledger file is foreign or corrupt.
        OSError: the work directory cannot be made or measured.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.name
        # A work directory of its own making is removed at close: nothing outlives the run.
        self._made_workdir = not config.workdir
        self.workdir = config.workdir or tempfile.mkdtemp(prefix="loadmaster-")
        self.admission: NodeAdmission | None = None
        self.zygotes: list[ZygoteClient] = []
        self._env_of: list[str] = []  # per zygote: its environment's key ("": the node's own)
        self.env_zygote: dict[str, int] = {}  # environment key -> the index of its zygote
        self.environments: dict[str, object] = {}  # key -> deps.build.Environment, once built
        self._refused: list[NodeEvent] = []  # orders whose environment or declared files could not be made
        self._server: Any = None  # the transfer server over the cache (serve_transfers), or None
        self._builds = EnvBuilds(self._make_env, self.wake)
        self._waiting: dict[str, list[Order]] = {}  # env key -> its orders, while it is built
        self.wake_r = self.wake_w = -1
        # Large outputs and streamed tasks' output, read on a thread of its own (see _done).
        self.outputs = OutputReader(self.name, self.wake)
        try:
            self._build(config)
        except BaseException:
            self.close()  # the zygotes started, the ledger share, the work directory made
            raise

    def _build(self, config: NodeConfig) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        self.outdir = os.path.join(self.workdir, "out")
        os.makedirs(self.outdir, exist_ok=True)
        self.detected = detect_capacity(config.workdir or os.getcwd())
        self.capacity = node_capacity(self.detected, config.caps)
        from loadmaster.data.cache import DEFAULT_BUDGET, default_root

        self.cache_dir = os.path.abspath(config.cache_dir or default_root())
        disk = self.capacity.disk
        self.cache_budget = config.cache_budget if config.cache_budget is not None else (
            DEFAULT_BUDGET if disk is None else min(DEFAULT_BUDGET, disk // 4))
        if disk is not None:  # the cache's budget is not the tasks' to write
            self.capacity = dataclasses.replace(self.capacity, disk=max(0, disk - self.cache_budget))
        self._data: Any = None  # the NodeData, made on the first order with declared files
        self._staged: dict[int, Any] = {}  # task id -> its staged data.stage.Attempt
        self._stagers: Any = None  # data.stagers.Stagers, made on the first order with declared files
        self._behind: dict[int, list[Order]] = {}  # task being staged -> orders handed ahead behind it
        self._cancel_staging: set[int] = set()  # cancelled while being staged
        if config.probe_sandbox:
            # Probe the kernel here, so that a degraded sandbox is warned about once,
            # by this process; the zygotes are told to stay quiet about it.
            from loadmaster.node.sandbox.policy import capabilities

            capabilities()
        if config.ledger is not False:
            book = MemoryLedger(None if config.ledger is None or config.ledger is True else config.ledger)
            self.admission = NodeAdmission(
                book, chunk_bytes=max(256 << 20, (self.capacity.memory or 0) // 16), label=config.label)
        n = config.zygotes if config.zygotes is not None else (2 if (self.capacity.cores or 1) >= 2 else 1)
        self._opts = dict(preload=tuple(config.preload), cgroups=config.measure == "auto",
                          fork_method=config.fork, sample_ms=config.sample_ms,
                          sandbox_dir=config.sandbox_dir)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._wake_pending = False
        for i in range(max(1, n)):
            self._env_of.append("")
            self.zygotes.append(self._start(i))
        first = self.zygotes[0].info
        for note in first.notes:
            log.warning("%s", note)
        # Orders each zygote holds (running, or handed ahead to follow one), counted when
        # submitted: orders of one batch then go to different zygotes (counted at the
        # send, they all went to the same one, and the chains of tasks handed ahead
        # stayed there: one zygote forked for both cores, the other idled).
        self.load = [0] * len(self.zygotes)
        self._own = len(self.zygotes)  # zygotes 0.._own-1 are the node's own environment's
        # task id -> (zygote index, bytes of memory allocated, attempt), while the zygote holds it.
        self.tasks: dict[int, tuple[int, int, int]] = {}
        self.memory_in_use = 0  # allocated to orders held (followers too: an upper bound)
        self._index_fds()
        self.info = NodeInfo(
            name=self.name, host=socket.gethostname(), capacity=self.capacity,
            gpu_ids=self.detected.gpu_ids, measure_method=first.method, notes=tuple(first.notes),
            follows=True, workdir=self.workdir, sources=dict(self.detected.sources),
            cache_dir=self.cache_dir,
        )

    def _start(self, i: int) -> ZygoteClient:
        d = os.path.join(self.workdir, f"zygote-{i}")
        os.makedirs(d, exist_ok=True)
        key = self._env_of[i]
        path = (self.environments[key].site,) if key else ()  # type: ignore[attr-defined]
        return ZygoteClient(workdir=d, index=i, path=path, **self._opts)  # type: ignore[arg-type]

    def _wheel_source(self, o: Order) -> object:
        """Where ``o``'s environment's wheel set comes from: its declared input in this node's cache
        (staged with the order, like a ``File``), else the ``deps_source`` directory."""
        from loadmaster.deps import source

        ref = source.wheel_input(o.data, o.env)
        if ref is not None:
            data = self._node_data()
            return source.CacheSource(data.cache, data.fetcher, ref)
        from loadmaster.deps.pack import default_cache_dir

        return source.LocalSource(self.config.deps_source or default_cache_dir())

    def _make_env(self, key: str, wheels: object) -> tuple[object, ZygoteClient]:
        """Build environment ``key`` from ``wheels`` (a ``WheelSource``); start a zygote in it (the build's thread).

        Raises:
            DependencyError: the wheel set cannot be fetched or built.
            WorkerLost: the zygote did not start.
        """
        from loadmaster.deps import build

        env = build.ensure(key, wheels, self.config.env_root or None)  # type: ignore[arg-type]
        try:
            d = os.path.join(self.workdir, f"zygote-env-{key}")
            os.makedirs(d, exist_ok=True)
            return env, ZygoteClient(workdir=d, index=-1, path=(env.site,), **self._opts)  # type: ignore[arg-type]
        except BaseException:
            env.release()
            raise

    def _adopt(self, built: Built) -> None:
        """A build ended: its zygote joins this node's, and the orders that waited for it are handed on."""
        orders = self._waiting.pop(built.key, [])
        if built.error is not None or built.zygote is None:
            exc = built.error
            for o in orders:
                self._refused.append(Done(
                    self.name, o.task_id, Status.BROKEN, 0,
                    f"the task's environment {o.env} could not be made on this node: {exc}".encode(),
                    Measurement(0, 0, "", 0.0, 0.0, 0, 0, 0.0, 0.0), attempt=o.attempt))
                self._unstage(o.task_id)
            return
        zi = len(self.zygotes)
        built.zygote.index = zi
        self.environments[built.key] = built.environment
        self._env_of.append(built.key)
        self.zygotes.append(built.zygote)
        self.load.append(0)
        self.env_zygote[built.key] = zi
        self._index_fds()
        if orders:
            self.submit(orders)

    def _index_fds(self) -> None:
        self._by_fd = {z.fileno(): i for i, z in enumerate(self.zygotes)}
        self._fds = [self.wake_r, *self._by_fd]

    # ── orders ────────────────────────────────────────────────────────────────
    def submit(self, orders: Sequence[Order]) -> None:
        """Hand ``orders`` to the zygotes (never blocks: what a pipe does not take waits)."""
        batches: dict[int, list[bytes]] = {}
        tasks, load, zygotes = self.tasks, self.load, self.zygotes
        frame = protocol.frame
        for o in orders:
            if o.env and o.data is not None and o.task_id not in self._staged and o.env in self.env_zygote:
                o.data = without_wheels(o.data, o.env)  # built here already: its wheel set is not staged again
            if o.data is not None and o.task_id not in self._staged:
                self._stage_later(o)  # comes back through poll (_staged_orders) once staged
                continue
            if o.after >= 0 and self._stagers and o.after in self._stagers.busy:  # the task ahead is being staged
                self._behind.setdefault(o.after, []).append(o)
                continue
            # An order whose task ahead is no longer here (it ended meanwhile) runs at once.
            ahead = tasks.get(o.after) if o.after >= 0 else None
            if ahead is not None:
                zi = ahead[0]
            elif o.env:
                env_zi = self.env_zygote.get(o.env)
                if env_zi is None:  # built on a thread of its own; the order waits for it (_adopt)
                    self._waiting.setdefault(o.env, []).append(o)
                    if o.env not in self._builds:
                        self._builds.start(o.env, self._wheel_source(o))
                    continue
                zi = env_zi
            elif len(load) == self._own:
                zi = load.index(min(load))
            else:
                own = load[:self._own]
                zi = own.index(min(own))
            z = zygotes[zi]
            # The zygote's function cache drops what was least recently used; this mirror
            # of it says when a function's bytes must go (again) with an order.
            fn_bytes = o.fn_bytes if o.fn_key and z.fns.use(o.fn_key, o.fn_bytes) else b""
            a = o.allocation
            payload = o.payload if o.command is None else self._command_payload(o)
            fields = (o.task_id, o.kind.value, o.fn_key, fn_bytes, payload, a.memory, a.disk,
                      a.wall_time, o.gpu_ids, o.sandbox, threads_for(a.cores))
            msg = ("run", fields) if ahead is None else ("then", o.after, fields)
            batch = batches.get(zi)
            if batch is None:
                batches[zi] = [frame(msg)]
            else:
                batch.append(frame(msg))
            load[zi] += 1
            mem = a.memory or 0
            tasks[o.task_id] = (zi, mem, o.attempt)
            self.memory_in_use += mem
            if o.stream:
                base = os.path.join(self.outdir, f"{o.task_id}")
                self.outputs.watch(o.task_id, o.attempt, z.proc.pid,
                                   None if o.command is None else (base + ".out", base + ".err"))
        for zi, frames in batches.items():
            zygotes[zi].send(b"".join(frames))

    def _unstage(self, task_id: int) -> None:
        """Unpin a task's staged inputs and drop its output directory (it will not run here now)."""
        att = self._staged.pop(task_id, None) if self._staged else None
        if att is not None:
            self._data.release(att)

    def _node_data(self) -> Any:
        """The node's :class:`~loadmaster.data.stage.NodeData` (its cache), made once."""
        if self._data is None:
            from loadmaster.data.cache import Cache
            from loadmaster.data.stage import NodeData

            self._data = NodeData(self.name, self.workdir, Cache(self.cache_dir, self.cache_budget))
        return self._data

    def serve_transfers(self, secret: bytes, host: str) -> str:
        """Serve this node's cache to peers on ``host`` and fetch from theirs; return the server's address.

        Staging then pulls inputs held on other hosts through a
        :class:`~loadmaster.data.transfer.peer.PeerFetcher` (same-host sources are
        still copied locally), and outputs stay in the cache for the client to pull
        (``NodeData.pull_outputs``). ``info.transfer_address`` says where.

        Raises:
            OSError: ``host`` cannot be bound.
        """
        from loadmaster.data.fetch import LocalFetcher
        from loadmaster.data.transfer.peer import PeerFetcher
        from loadmaster.data.transfer.server import TransferServer

        data = self._node_data()
        self._server = TransferServer(secret, cache=data.cache, host=host)
        data.fetcher = PeerFetcher(secret, local=LocalFetcher(data.host))
        data.pull_outputs = True
        self.info = dataclasses.replace(self.info, transfer_address=self._server.address)
        return self._server.address

    def _stage_later(self, o: Order) -> None:
        """Hand ``o`` to a staging thread; its result comes back through :meth:`_staged_orders`."""
        assert o.data is not None
        data = self._node_data()
        self._unstage(o.task_id)  # an earlier attempt's, handed back before it started
        if self._stagers is None:
            from loadmaster.data.stagers import Stagers

            self._stagers = Stagers(lambda order: data.stage(order.task_id, order.attempt, order.data), self.wake)
        self._cancel_staging.discard(o.task_id)
        self._stagers.start(o)

    def _staged_orders(self) -> None:
        """Orders whose staging ended: on to a zygote, refused (why), or dropped (cancelled meanwhile)."""
        ready: list[Order] = []
        for r in self._stagers.finished():
            o = r.order
            behind = self._behind.pop(o.task_id, [])
            if o.task_id in self._cancel_staging:
                self._cancel_staging.discard(o.task_id)
                if r.attempt is not None:
                    self._data.release(r.attempt)
                self._refused.append(Done(self.name, o.task_id, Status.BROKEN, 0, b"cancelled",
                                          Measurement(0, 0, "", 0.0, 0.0, 0, 0, 0.0, 0.0),
                                          cancelled=True, attempt=o.attempt))
            elif r.attempt is None:
                m = Measurement(0, 0, self.info.measure_method, 0.0, 0.0, 0, 0, 0.0, 0.0)
                why = f"declared input could not be staged on {self.name}: {r.error}"
                self._refused.append(Done(self.name, o.task_id, int(Status.BROKEN), 0, why.encode(), m,
                                          attempt=o.attempt, data=self._data.report(None, error=why)))
            else:
                self._adopt_staged(o, r.attempt)
                ready.append(o)
            ready += behind  # after the task ahead (or at once, when it will not run)
        if ready:
            self.submit(ready)

    def _adopt_staged(self, o: Order, att: Any) -> None:
        """Point ``o`` at its staged files (the runtime's thread)."""
        att.command = o.command is not None
        self._staged[o.task_id] = att
        if o.command is None:
            from loadmaster.data.files import wrap_payload

            o.payload = wrap_payload(att.inputs, att.outputs, o.payload)
        if o.sandbox is not None:
            policy, read, write = o.sandbox
            o.sandbox = (policy, (*read, *att.read), (*write, *att.write))

    def _command_payload(self, o: Order) -> bytes:
        cmd = o.command
        assert cmd is not None
        base = os.path.join(self.outdir, f"{o.task_id}")
        argv = list(cmd.argv)
        att = self._staged.get(o.task_id) if o.data is not None else None
        if att is not None:
            data: DataOrder = o.data  # type: ignore[assignment]
            for i, key in data.argv:
                argv[i] = att.inputs.get(key) or att.outputs.get(key) or argv[i]
        spec = protocol.CommandSpec(argv=argv, cwd=cmd.cwd, env=cmd.env,
                                    stdout_path=base + ".out", stderr_path=base + ".err")
        return bytes(_pickle.dumps(spec, protocol=protocol.PICKLE_PROTOCOL))

    def cancel(self, task_id: int) -> None:
        """Stop a task's tree if this node holds it (its ``Done`` then says ``cancelled``)."""
        held = self.tasks.get(task_id)
        if held is not None:
            self.zygotes[held[0]].kill(task_id)
            return
        if self._stagers and task_id in self._stagers.busy:  # its Done comes when its staging ends
            self._cancel_staging.add(task_id)
            return
        for orders in self._waiting.values():  # waiting for its environment: it never starts
            for o in orders:
                if o.task_id == task_id:
                    orders.remove(o)
                    self._unstage(task_id)
                    self.outputs.forget(task_id)
                    self._refused.append(Done(self.name, task_id, Status.BROKEN, 0, b"cancelled",
                                              Measurement(0, 0, "", 0.0, 0.0, 0, 0, 0.0, 0.0),
                                              cancelled=True, attempt=o.attempt))
                    self.wake()
                    return

    def admit(self, in_use: int) -> bool:
        """Whether the node's ledger holds ``in_use`` bytes for this runtime (asks it for more if not)."""
        return True if self.admission is None else self.admission.ensure(in_use)

    # ── events ────────────────────────────────────────────────────────────────
    def wake(self) -> None:
        """Make a :meth:`poll` in progress (or the next) return now. Any thread."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self.wake_w, b"x")
            except (BlockingIOError, OSError):
                pass

    def poll(self, timeout: float | None) -> list[NodeEvent]:
        """Return the events that arrived; block until one does, a wake, or ``timeout`` s.

        One ``select`` over the zygotes' report pipes, the wake pipe, and the
        zygotes' order pipes still holding unsent orders.
        """
        admission = self.admission
        if admission is not None and admission.chunks:
            trim = admission.trim(self.memory_in_use)
            if trim is not None and (timeout is None or trim < timeout):
                timeout = trim
        if self._refused:
            timeout = 0.0
        writing = [z.cmd_fd for z in self.zygotes if z.outbox]
        ready, writable, _ = select.select(self._fds, writing, [], timeout)
        for fd in writable:
            for z in self.zygotes:
                if z.cmd_fd == fd:
                    z.flush()
        events: list[NodeEvent] = []
        for fd in ready:
            if fd == self.wake_r:
                # Drain, then clear: cleared first, a wake from another thread between
                # the two would find the flag set and its byte already drained, and
                # every later wake would be skipped (a lost wake-up: poll sleeps on).
                try:
                    while os.read(fd, 4096):
                        pass
                except BlockingIOError:
                    pass
                self._wake_pending = False
                if self._builds:
                    for built in self._builds.finished():
                        self._adopt(built)
                if self._stagers:
                    self._staged_orders()
                continue
            zi = self._by_fd.get(fd)
            if zi is None:
                continue
            msgs = self.zygotes[zi].read()
            if msgs is None:
                events.append(self._lost(zi))
                continue
            for msg in msgs:
                kind = msg[0]  # type: ignore[index]
                if kind == "done":
                    ev = self._done(zi, msg[1])  # type: ignore[index]
                    if ev is not None:
                        events.append(ev)
                elif kind == "back":
                    task_id = msg[1]  # type: ignore[index]
                    held = self._forget(task_id)
                    if held is not None:
                        events.append(HandedBack(self.name, task_id, held[2]))
                    self._unstage(task_id)
                    self.outputs.forget(task_id)
        # After the wake pipe was drained: what the output thread queues from now on wakes again.
        events.extend(self.outputs.events())
        if self._refused:  # after the wake: a build that failed just now refuses its orders here
            events.extend(self._refused)
            self._refused = []
        return events

    def _forget(self, task_id: int) -> tuple[int, int, int] | None:
        held = self.tasks.pop(task_id, None)
        if held is not None:
            self.load[held[0]] -= 1
            self.memory_in_use -= held[1]
        return held

    def _done(self, zi: int, d: protocol.Done) -> Done | None:
        held = self._forget(d.task_id)
        if held is None:
            return None  # not an order of ours (or already reported lost)
        extra = d.extra
        att = self._staged.pop(d.task_id, None) if self._staged else None
        data: DataReport | None = None
        if att is not None:
            # as the engine judges it: a command by its exit status, a function by its result
            ok = (d.exit_status == 0 and d.status != Status.BROKEN) if att.command else d.status == Status.OK
            data = self._data.finish(att, ok and not (extra and extra.get("cancelled")))
        held_fds = extra.pop("capture_fds", None) if extra else None
        m = Measurement(d.pid, d.peak_memory, d.method, d.cpu_time, d.wall_time, d.disk,
                        d.max_processes, d.started_at, d.finished_at, d.exhausted, d.limit, d.used, extra or None)
        cancelled = bool(extra and extra.get("cancelled"))
        attempt = held[2]
        streamed = self.outputs.watched(d.task_id)
        if not d.stdout_path and not d.stderr_path:  # a function (its output came in the frame, or is held)
            if held_fds is not None:
                job = self._held_capture_job(zi, d, m, attempt, data, held_fds)
            elif streamed:
                def job() -> tuple[Done, bytes, bytes]:
                    return self._function_done(d, m, attempt, data, d.stdout, d.stderr), d.stdout, d.stderr
            else:
                return self._function_done(d, m, attempt, data, d.stdout, d.stderr)
        elif streamed or _size(d.stdout_path) + _size(d.stderr_path) > OUTPUT_INLINE:
            # Megabytes of output are read on the output thread: this is the engine's loop
            # for the local backend. The Done comes from a later poll (see wake).
            def job() -> tuple[Done, bytes, bytes]:
                out, err = _read_bytes(d.stdout_path), _read_bytes(d.stderr_path)
                return self._command_done(d, m, attempt, data, out, err), out, err
        else:
            return self._command_done(d, m, attempt, data, _read_bytes(d.stdout_path), _read_bytes(d.stderr_path))
        self.outputs.later(d.task_id, job, Done(self.name, d.task_id, d.status, d.exit_status, d.payload, m,
                                                cancelled=cancelled, attempt=attempt, data=data))
        return None

    def _held_capture_job(self, zi: int, d: protocol.Done, m: Measurement, attempt: int,
                          data: DataReport | None, held: Any) -> Any:
        """The late read of a function's large capture, which zygote ``zi`` held for us.

        The two files are opened here, through ``/proc`` (no read: no wait on a
        disk), and the zygote is told to close its own at once; the output
        thread reads them.
        """
        z = self.zygotes[zi]
        fds = [-1, -1]
        try:
            for i, which in enumerate(("out", "err")):
                fds[i] = open_zygote_fd(z.proc.pid, int(held[i]), d.task_id, which)
            sizes = (min(int(held[2]), protocol.CAPTURE_MAX + 1), min(int(held[3]), protocol.CAPTURE_MAX + 1))
        except (TypeError, ValueError, IndexError):
            sizes = (0, 0)
        z.send(protocol.frame(("release", d.task_id)))

        def job() -> tuple[Done, bytes, bytes]:
            raw = [b"", b""]
            try:
                for i in (0, 1):
                    if fds[i] >= 0:
                        raw[i] = pread_all(fds[i], sizes[i])
            finally:
                for fd in fds:
                    if fd >= 0:
                        os.close(fd)
            return self._function_done(d, m, attempt, data, raw[0], raw[1]), raw[0], raw[1]
        return job

    def _function_done(self, d: protocol.Done, m: Measurement, attempt: int, data: DataReport | None,
                       out: bytes, err: bytes) -> Done:
        extra = d.extra
        return Done(self.name, d.task_id, d.status, d.exit_status, d.payload, m, _text(out), _text(err),
                    cancelled=bool(extra and extra.get("cancelled")), attempt=attempt, data=data)

    def _command_done(self, d: protocol.Done, m: Measurement, attempt: int, data: DataReport | None,
                      out: bytes, err: bytes) -> Done:
        """A command's Done, from its output files' bytes (read, and the files removed)."""
        extra = d.extra
        stdout = _text(out)
        stderr = _text(err)
        denied: tuple[str, ...] = ()
        if d.exit_status != 0 and extra and "sandbox" in extra and "Permission denied" in stderr:
            from loadmaster.node.sandbox.policy import denied_paths_in_text

            denied = denied_paths_in_text(stderr)
        return Done(self.name, d.task_id, d.status, d.exit_status, d.payload, m, stdout, stderr,
                    denied, bool(extra and extra.get("cancelled")), attempt, data)

    def _lost(self, zi: int) -> Lost:
        """Zygote ``zi`` died: start another in its place; return its tasks as lost."""
        old = self.zygotes[zi]
        code = old.proc.poll()
        reason = f"zygote {zi} (pid {old.proc.pid}) on {self.info.host} died (status {code})"
        log.error("%s; its tasks are retried", reason)
        with contextlib.suppress(OSError):
            os.close(old.res_fd)
        with contextlib.suppress(OSError):
            os.close(old.cmd_fd)
        ids = tuple(t for t, held in self.tasks.items() if held[0] == zi)
        for t in ids:
            self._forget(t)
            self._unstage(t)
            self.outputs.forget(t)
        for t in ids:  # their output files, if they were commands
            for ext in (".out", ".err"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.outdir, f"{t}{ext}"))
        self.zygotes[zi] = self._start(zi)
        self.load[zi] = 0
        self._index_fds()
        return Lost(self.name, ids, reason)

    def close(self) -> None:
        """Stop every zygote (after their running tasks); give the ledger back. Idempotent.

        A work directory this runtime made (no ``workdir`` configured) is removed.
        """
        for built in self._builds.close():
            if built.zygote is not None:
                built.zygote.close()
            if built.environment is not None:
                built.environment.release()
        zygotes, self.zygotes = self.zygotes, []
        for z in zygotes:
            z.close()
        self.outputs.close()
        for env in self.environments.values():  # may be evicted now (deps/evict.py)
            env.release()  # type: ignore[attr-defined]
        if self.admission is not None:
            self.admission.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._stagers is not None:
            for r in self._stagers.close():
                if r.attempt is not None:
                    self._data.release(r.attempt)
            self._stagers = None
        if self._data is not None:
            for att in self._staged.values():
                self._data.release(att)
            self._staged.clear()
            self._data.cache.close()
            self._data = None
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.wake_r = self.wake_w = -1
        if self._made_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
