"""The host process: one node runtime beside the Dask workers of one node.

Runs on a Dask worker's node, as its own process (``python -m
loadmaster.backends.dask.host``), started by the first worker plugin of the
node that finds no host there (``plugin.py``); every worker of the node (a
``LocalCluster``, ``processes>1`` in a job) attaches to the same one, so the
node's cores and memory are counted once and its ledger is shared. It lives
outside the worker processes: Dask's memory manager measures and kills a
worker process, never this one, nor the tasks it forks.

Stdin, once: a pickled dict from the spawning worker (``token``, ``secret``,
``config``: a :class:`~loadmaster.node.orders.NodeConfig`, ``transfer_host``: the
worker's IP, where the runtime's transfer server listens, ``data/transfer/``). Stdout, once:
``taken`` (another host holds the name: attach to it), ``ready``, or
``failed <why>``. Then it serves the workers on :func:`wire.socket_name`.

Two threads:

* the I/O thread accepts connections, runs each one's handshake (the same
  uid, then the challenge both ways: ``wire.py``), splits frames and queues
  them for the main thread, waking the runtime's ``poll``; nothing of a
  connection is unpickled before its peer proved the secret;
* the main thread drives the :class:`~loadmaster.node.runtime.NodeRuntime`:
  orders in (after the node's ledger admits their memory: orders wait here,
  never in the client), events out, each to the connection that carried its
  task.

Connections: each worker of the node (the abstract unix socket) and, where
the spawning worker gave an IP (``direct_host``), the client itself over
TCP on that IP (``wire.py``'s handshake both ways, no uid to check). Only
worker connections keep the host alive.

Ownership: a task belongs to the connection that carried it. When that
connection ends (its worker died, ``kill -9`` included: the kernel closes
the socket; the client went away) or its client's stream ends (``RESET``),
the host stops that connection's tasks and drops their events: the client
has already counted them lost and placed them again. Task ids are renumbered here (a
task placed again on this node while its lost attempt is still being
stopped is another task to the runtime).

The host exits when its last worker connection ends (or when none came
within ``START_GRACE_S``): it stops listening first, so a worker that comes
later starts a new host instead of attaching to one that is leaving; it
stops its tasks, closes the runtime (zygotes, ledger share) and exits. No
orphans: zygotes and their tasks end when this process does (their pipes
close).

Does not cover: how orders reach the worker (``carrier.py``) or what the
runtime does with them (``node/runtime.py``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import pickle
import selectors
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from loadmaster.backends.dask import wire
from loadmaster.node.orders import (
    Done,
    HandedBack,
    Lost,
    Measurement,
    NodeConfig,
    NodeEvent,
    Order,
    Output,
    Status,
)

log = logging.getLogger("loadmaster.dask.host")

START_GRACE_S = 60.0   # exit if no worker attaches within this after start
SEND_TIMEOUT_S = 30.0  # a worker that takes no events for this long is dropped
HELLO_MAX = 4096       # bytes an unauthenticated peer may send
ADMIT_RETRY_S = 0.05   # seconds between asks of the ledger while orders wait for memory


class _Conn:
    """One worker's connection (the I/O thread fills ``buf``; the main thread owns the rest)."""

    __slots__ = ("authed", "buf", "dead", "direct", "nonces", "sock", "tasks", "worker")

    def __init__(self, sock: socket.socket, direct: bool = False) -> None:
        self.sock = sock
        self.direct = direct  # the client's own TCP connection (not a worker: keeps nothing alive)
        self.buf = wire.FrameBuffer()
        self.authed = False
        self.nonces: tuple[bytes, bytes] | None = None  # (the worker's, ours) once challenged
        self.worker = ""
        self.tasks: set[int] = set()  # internal ids of the tasks it carried, not yet ended
        self.dead = False


class Host:
    """Serves one node runtime to the workers of its node (see the module docstring)."""

    def __init__(self, listener: socket.socket, runtime: Any, secret: bytes,
                 direct: socket.socket | None = None) -> None:
        self.listener = listener
        self.direct = direct
        self.runtime = runtime
        self.secret = secret
        self.runtime_id = uuid.uuid4().hex
        where = ""
        if direct is not None:
            ip, port = direct.getsockname()[:2]
            where = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        self.welcome = wire.welcome_body(runtime.info, self.runtime_id, os.getpid(), where)
        self.inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self.conns: set[_Conn] = set()
        self.ids = itertools.count(1)
        self.owner: dict[int, tuple[_Conn, int]] = {}  # internal id -> (connection, the client's task id)
        self.latest: dict[int, int] = {}                # the client's task id -> internal id of its attempt
        self.fn_bytes: dict[int, bytes] = {}            # function key -> bytes (a carrier sends them once)
        self.pending: collections.deque[Order] = collections.deque()  # waiting for the ledger
        self.pending_mem = 0
        self.stop_r, self.stop_w = os.pipe()
        self.stopping = False
        self.stopped = False
        self.ever_attached = False
        self.started = time.monotonic()
        self.io = threading.Thread(target=self._io, name="loadmaster-host-io", daemon=True)

    # ── the I/O thread ────────────────────────────────────────────────────────
    def _io(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "listen")
        if self.direct is not None:
            sel.register(self.direct, selectors.EVENT_READ, "listen-direct")
        sel.register(self.stop_r, selectors.EVENT_READ, "stop")
        wake, inbox = self.runtime.wake, self.inbox
        while True:
            for key, _ in sel.select():
                data = key.data
                if data == "listen":
                    try:
                        sock, _ = self.listener.accept()
                    except OSError:
                        continue
                    sock.settimeout(SEND_TIMEOUT_S)  # bounds sendall; recv runs only once readable
                    sel.register(sock, selectors.EVENT_READ, _Conn(sock))
                elif data == "listen-direct":
                    assert self.direct is not None
                    try:
                        sock, _ = self.direct.accept()
                    except OSError:
                        continue
                    sock.settimeout(SEND_TIMEOUT_S)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(sock, selectors.EVENT_READ, _Conn(sock, direct=True))
                elif data == "stop":
                    # Stop listening first: a worker that comes now starts a new host.
                    sel.unregister(self.listener)
                    self.listener.close()
                    if self.direct is not None:
                        sel.unregister(self.direct)
                        self.direct.close()
                    for k in list(sel.get_map().values()):
                        if isinstance(k.data, _Conn):
                            sel.unregister(k.fileobj)
                            with contextlib.suppress(OSError):
                                k.data.sock.close()
                    inbox.append(("stopped",))
                    wake()
                    return
                else:
                    c: _Conn = data
                    try:
                        chunk = c.sock.recv(1 << 16)
                    except OSError:
                        chunk = b""
                    frames: list[tuple[int, bytes]] = []
                    if chunk:
                        try:
                            frames = c.buf.feed(chunk)
                        except ValueError as exc:
                            log.warning("dropping worker %s: %s", c.worker or "?", exc)
                            chunk = b""
                    if chunk and not c.authed:
                        chunk, frames = self._hello(c, frames)
                    if not chunk:
                        sel.unregister(c.sock)
                        with contextlib.suppress(OSError):
                            c.sock.close()
                        if c.authed:
                            inbox.append(("eof", c))
                            wake()
                        continue
                    if frames:
                        inbox.extend(("frame", c, kind, body) for kind, body in frames)
                        wake()

    def _hello(self, c: _Conn, frames: list[tuple[int, bytes]]) -> tuple[bytes, list[tuple[int, bytes]]]:
        """Run a new connection's handshake (``wire.py``); return ``(b"", [])`` to drop it."""
        while frames and not c.authed:
            kind, body = frames.pop(0)
            if c.nonces is None:
                try:  # a TCP peer has no uid to check: the challenge alone decides
                    same_user = c.direct or wire.peer_uid(c.sock) == os.getuid()
                except OSError:
                    same_user = False
                if not same_user or kind != wire.HELLO or len(body) < wire.NONCE_BYTES:
                    return self._refuse(c, "not this user" if not same_user else "no valid hello")
                worker_nonce = body[: wire.NONCE_BYTES]
                host_nonce, reply = wire.challenge(self.secret, worker_nonce)
                try:
                    c.sock.sendall(wire.frame(wire.CHALLENGE, reply))
                except OSError:
                    return b"", []
                c.nonces = (worker_nonce, host_nonce)
                c.worker = body[wire.NONCE_BYTES :].decode("utf-8", "replace")
                continue
            if kind != wire.PROOF or not wire.proven(self.secret, *c.nonces, body):
                return self._refuse(c, "it did not prove the executor's secret")
            c.authed = True
            self.inbox.append(("hello", c))
            self.runtime.wake()
        if not c.authed and len(c.buf._buf) > HELLO_MAX:
            return self._refuse(c, "too long a hello")
        return b"x", frames

    @staticmethod
    def _refuse(c: _Conn, why: str) -> tuple[bytes, list[tuple[int, bytes]]]:
        try:
            pid = wire.peer_pid(c.sock)
        except OSError:
            pid = 0
        log.warning("refused a connection to the node's host from pid %d: %s", pid, why)
        return b"", []

    # ── the main thread ───────────────────────────────────────────────────────
    def serve(self) -> None:
        """Run until the last worker has gone; then stop the tasks and the runtime."""
        self.io.start()
        rt = self.runtime
        try:
            while not self.stopped:
                timeout: float | None = None
                if self.pending:
                    timeout = ADMIT_RETRY_S
                if not self.ever_attached and not self.stopping:
                    left = START_GRACE_S - (time.monotonic() - self.started)
                    if left <= 0:
                        log.warning("no worker attached within %.0f s; exiting", START_GRACE_S)
                        self._stop()
                    timeout = max(0.0, left) if timeout is None else min(timeout, max(0.0, left))
                events = rt.poll(timeout)
                if self.inbox:
                    self._take()
                if self.pending:
                    self._admit()
                if events:
                    self._route(events)
        finally:
            for iid in list(self.owner):
                rt.cancel(iid)
            rt.close()

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            os.write(self.stop_w, b"x")

    def _take(self) -> None:
        inbox = self.inbox
        while inbox:
            item = inbox.popleft()
            what = item[0]
            if what == "frame":
                _, c, kind, body = item
                if c.dead:
                    continue
                if kind == wire.ORDERS:
                    self._orders(c, body)
                elif kind == wire.CANCEL:
                    (task_id,) = wire.TASK_ID.unpack(body)
                    self._cancel(c, task_id)
                elif kind == wire.RESET:
                    self._drop_tasks(c)
            elif what == "hello":
                c = item[1]
                if self.stopping:
                    self._shut(c)
                    continue
                if not c.direct:  # only workers keep the host alive
                    self.conns.add(c)
                    self.ever_attached = True
                if not self._send(c, wire.frame(wire.WELCOME, self.welcome)):
                    continue
                log.info("%s %s attached (%d worker(s) attached)", "client" if c.direct else "worker",
                         c.worker, len(self.conns))
            elif what == "eof":
                self._gone(item[1])
            elif what == "stopped":
                self.stopped = True

    def _orders(self, c: _Conn, body: bytes) -> None:
        orders: list[Order] = pickle.loads(body)
        ids, owner, latest, cache = self.ids, self.owner, self.latest, self.fn_bytes
        for o in orders:
            iid = next(ids)
            tid = o.task_id
            owner[iid] = (c, tid)
            latest[tid] = iid
            c.tasks.add(iid)
            if o.after >= 0:
                o.after = latest.get(o.after, -1)
            if o.fn_key:
                if o.fn_bytes:
                    cache[o.fn_key] = o.fn_bytes
                else:
                    o.fn_bytes = cache.get(o.fn_key, b"")
            o.task_id = iid
            self.pending.append(o)
            self.pending_mem += o.allocation.memory or 0

    def _admit(self) -> None:
        """Hand the runtime the waiting orders the node's ledger admits, in order."""
        rt, pending = self.runtime, self.pending
        in_use = rt.memory_in_use
        batch: list[Order] = []
        while pending:
            mem = pending[0].allocation.memory or 0
            if not rt.admit(in_use + mem):
                break
            in_use += mem
            self.pending_mem -= mem
            batch.append(pending.popleft())
        if batch:
            rt.submit(batch)

    def _cancel(self, c: _Conn, task_id: int) -> None:
        iid = self.latest.get(task_id)
        if iid is None or self.owner.get(iid, (None,))[0] is not c:
            return
        for o in self.pending:
            if o.task_id == iid:  # never started: it ends here, cancelled
                self.pending.remove(o)
                self.pending_mem -= o.allocation.memory or 0
                now = time.time()
                self._route([Done(self.runtime.name, iid, int(Status.SILENT), 0, b"",
                                  Measurement(0, 0, self.runtime.info.measure_method, 0.0, 0.0, 0, 0, now, now,
                                              extra={"cancelled": True}), cancelled=True, attempt=o.attempt)])
                return
        self.runtime.cancel(iid)

    def _drop_tasks(self, c: _Conn) -> None:
        """Stop what ``c`` carried and forget it: no one will read its events."""
        if not c.tasks:
            return
        gone = c.tasks
        c.tasks = set()
        kept = collections.deque(o for o in self.pending if o.task_id not in gone)
        self.pending_mem = sum(o.allocation.memory or 0 for o in kept)
        self.pending = kept
        for iid in gone:
            own = self.owner.pop(iid, None)
            if own is not None and self.latest.get(own[1]) == iid:
                del self.latest[own[1]]
            self.runtime.cancel(iid)
        log.warning("stopping %d task(s) carried by %s %s: %s", len(gone), "client" if c.direct else "worker",
                    c.worker, "it is gone" if c.dead else "its client is gone")

    def _shut(self, c: _Conn) -> None:
        """End ``c`` from here (the I/O thread sees the end and closes it)."""
        with contextlib.suppress(OSError):
            c.sock.shutdown(socket.SHUT_RDWR)

    def _gone(self, c: _Conn) -> None:
        c.dead = True
        self._drop_tasks(c)
        if c.direct:
            log.info("client %s detached", c.worker)
            return
        self.conns.discard(c)
        log.info("worker %s detached (%d left)", c.worker, len(self.conns))
        if not self.conns:
            self._stop()

    def _send(self, c: _Conn, data: bytes) -> bool:
        try:
            c.sock.sendall(data)
            return True
        except OSError as exc:  # includes the send timeout
            log.warning("dropping worker %s: cannot send to it (%s)", c.worker, exc)
            self._shut(c)
            return False

    def _route(self, events: Sequence[NodeEvent]) -> None:
        """Send each event to the connection that carried its task, under the client's id."""
        out: dict[_Conn, list[Any]] = {}
        owner, latest = self.owner, self.latest
        for ev in events:
            if isinstance(ev, Lost):
                split: dict[_Conn, list[int]] = {}
                for iid in ev.task_ids:
                    own = owner.pop(iid, None)
                    if own is None:
                        continue
                    own[0].tasks.discard(iid)
                    if latest.get(own[1]) == iid:
                        del latest[own[1]]
                    split.setdefault(own[0], []).append(own[1])
                for c, tids in split.items():
                    out.setdefault(c, []).append(Lost(ev.node, tuple(tids), ev.reason))
                continue
            if isinstance(ev, Output):  # the task runs on: it stays its connection's
                run = owner.get(ev.task_id)
                if run is not None:
                    out.setdefault(run[0], []).append(dataclasses.replace(ev, task_id=run[1]))
                continue
            own = owner.pop(ev.task_id, None)
            if own is None:
                continue  # its carrier is gone: it was stopped, and counted lost by the client
            c, tid = own
            c.tasks.discard(ev.task_id)
            if latest.get(tid) == ev.task_id:
                del latest[tid]
            if isinstance(ev, Done):
                ev.task_id = tid
            elif isinstance(ev, HandedBack):
                ev = dataclasses.replace(ev, task_id=tid)
            out.setdefault(c, []).append(ev)
        for c, evs in out.items():
            if not c.dead:
                self._send(c, wire.frame(wire.EVENTS, pickle.dumps(evs, pickle.HIGHEST_PROTOCOL)))


def _bind(name: bytes) -> socket.socket | None:
    """Bind the node's host name; ``None`` when another host holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    sock.listen(128)
    return sock


def main() -> int:
    """Entry point of the host process (see the module docstring)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="loadmaster host %(process)d %(levelname)s %(name)s: %(message)s")
    spec = pickle.load(sys.stdin.buffer)
    out = sys.stdout
    listener = _bind(wire.socket_name(spec["token"], int(spec.get("slot", 0))))
    if listener is None:
        print("taken", file=out, flush=True)
        return 0
    config: NodeConfig = spec["config"]
    if not config.sandbox_dir:
        from loadmaster.node.sandbox.policy import default_parent_dir

        config = dataclasses.replace(config, sandbox_dir=default_parent_dir())
    config = dataclasses.replace(config, name=config.name or socket.gethostname())
    try:
        from loadmaster.node.runtime import NodeRuntime

        runtime = NodeRuntime(config)
        if spec.get("transfer_host"):  # peers and the client fetch declared files from this node's cache
            runtime.serve_transfers(spec["secret"], spec["transfer_host"])
    except Exception as exc:
        log.exception("the node runtime could not start")
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        print(f"failed {text}", file=out, flush=True)
        return 1
    direct = _bind_direct(str(spec.get("direct_host", "")))
    print("ready", file=out, flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    Host(listener, runtime, spec["secret"], direct).serve()
    return 0


def _bind_direct(ip: str) -> socket.socket | None:
    """A TCP listener on ``ip`` (the worker's address) for the client's direct connection, or ``None``."""
    if not ip:
        return None
    try:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((ip, 0))
        sock.listen(16)
        return sock
    except OSError as exc:
        log.warning("no direct connection for the client (cannot listen on %s: %s); orders go through "
                    "the workers", ip, exc)
        return None


if __name__ == "__main__":
    sys.exit(main())
