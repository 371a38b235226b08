"""The Dask backend, client side: nodes of a Dask cluster, orders carried to them.

Runs in the client. The engine thread calls :meth:`DaskBackend.submit`,
:meth:`~DaskBackend.cancel`, :meth:`~DaskBackend.wait` (and any thread
:meth:`~DaskBackend.wake`); everything that talks to Dask runs in this
backend's own thread, an asyncio loop with a private asynchronous
``distributed.Client`` (the user's client, if one was given, is never used
or changed: only its address and security).

At start it registers a :class:`~loadmaster.backends.dask.plugin.NodePlugin`
under a fresh token; each worker's plugin attaches the worker to its node's
host process (one per node, shared by the node's workers) and announces
itself. For each worker this backend opens one stream (a Dask comm to the
worker's handler, not through the scheduler), which brings the node's
welcome and tells when the worker is gone. Where the host listens on TCP
(``tcp://`` workers), the backend also opens its own connection to it (the
HMAC handshake of ``wire.py`` both ways): order batches go down it, one
frame per engine dispatch, and event batches come up it, with no worker in
between. Elsewhere (TLS, inproc) orders go down the worker streams (the
node's carrier holding the fewest tasks) and the worker relays them.

Losses: a node whose host connection ends, or whose last worker's stream
ends, has left: :class:`~loadmaster.node.orders.NodeLeft`, and the engine
places its tasks again. A worker of a node that keeps another is one way
less to it; only tasks it relayed itself (TLS, inproc) come back as one
:class:`~loadmaster.node.orders.Lost` (the host stops them). A worker that
joins (or a node's host that was started again) is used as soon as it
announces itself: :class:`~loadmaster.node.orders.NodeJoined`.

Trust: event batches are unpickled with a loader that builds only the
event classes and plain values; a task's bytes inside (``Done.payload``)
stay bytes until the engine hands them to the user.

Does not cover: what the worker and the host do (``plugin.py``,
``host.py``), placement (the scheduler), retries (the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import pickle
import secrets
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from loadmaster.backends.base import Backend
from loadmaster.backends.dask import wire
from loadmaster.backends.dask.plugin import NodePlugin, stream_op, topic
from loadmaster.backends.dask.wire import parse_welcome
from loadmaster.errors import WorkerLost
from loadmaster.node.orders import Done, Event, Lost, NodeConfig, NodeInfo, NodeJoined, NodeLeft, Order, Output

log = logging.getLogger("loadmaster.dask")

START_TIMEOUT_S = 120.0  # for the first worker to appear and every worker's host to start
DIRECT_TIMEOUT_S = 30.0  # to connect to a node's host directly and prove the secret
CLOSE_TIMEOUT_S = 60.0

_SAFE = {
    ("loadmaster.node.orders", "Done"), ("loadmaster.node.orders", "HandedBack"),
    ("loadmaster.node.orders", "Lost"), ("loadmaster.node.orders", "Measurement"),
    ("loadmaster.node.orders", "Output"),
    ("loadmaster.spec", "Resources"),
    ("loadmaster.data.refs", "DataReport"), ("loadmaster.data.refs", "Staged"),
    ("loadmaster.data.refs", "Produced"),
}


def new_token() -> str:
    """A fresh run token (names the nodes' hosts, the worker handler, the topic)."""
    return secrets.token_hex(8)


class _Loader(pickle.Unpickler):
    """Builds only the node's event classes and plain values."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a node sent {module}.{name}, which is not an event class")


def loads_from_node(data: bytes) -> Any:
    """Unpickle the events a node's host sent (its welcome is JSON: ``wire.parse_welcome``)."""
    return _Loader(io.BytesIO(data)).load()


@dataclasses.dataclass(frozen=True)
class WorkerView:
    """One Dask worker as this backend sees it (:meth:`DaskBackend.workers`).

    Attributes:
        address: the worker's address.
        node: the node it carries orders to.
        host_pid: the pid of that node's host process (on the node).
        tasks: the tasks it carried that have not ended (none where the client
            reaches the node's host directly: see :meth:`DaskBackend.node_tasks`).
    """

    address: str
    node: str
    host_pid: int
    tasks: tuple[int, ...]


class _Node:
    """One node (a host process) and the workers that reach it (loop thread, except reads)."""

    __slots__ = ("carriers", "direct", "gone", "host_pid", "info", "runtime")

    def __init__(self, info: NodeInfo, runtime: str, host_pid: int) -> None:
        self.info = info
        self.runtime = runtime
        self.host_pid = host_pid
        self.carriers: tuple[_Carrier, ...] = ()  # replaced whole, so the engine thread reads a snapshot
        self.direct: _Direct | None = None  # the client's own connection to the host, where it has one
        self.gone = False


class _Direct:
    """The client's own TCP connection to a node's host: orders down, events up (no worker relays)."""

    __slots__ = ("fn_keys", "inflight", "node", "reader", "writer")

    def __init__(self, node: _Node, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.node = node
        self.reader = reader
        self.writer = writer
        self.inflight: set[int] = set()   # loop thread
        self.fn_keys: set[int] = set()    # engine thread


class _Carrier:
    """One worker's stream to its node's host."""

    __slots__ = ("address", "cancels", "comm", "fn_keys", "inflight", "node", "outbox", "sending")

    def __init__(self, address: str, comm: Any, node: _Node) -> None:
        self.address = address
        self.comm = comm
        self.node = node
        self.inflight: set[int] = set()   # task ids it carried, not ended (loop thread)
        self.fn_keys: set[int] = set()    # functions whose bytes went down this stream (engine thread)
        self.outbox: list[bytes] = []
        self.cancels: list[int] = []
        self.sending = False


class DaskBackend(Backend):
    """Nodes of a Dask cluster (see the module docstring).

    Args:
        address: the scheduler's address (``"tcp://host:port"``).
        config: the node runtime each node builds (``name`` and ``workdir``
            are the node's own).
        security: the cluster's ``distributed.Security`` (or ``None``).
        start_timeout_s: how long to wait for the first worker and for the
            nodes' runtimes to start.
        on_close: called last by :meth:`close` (a cluster started for this
            backend alone is stopped there).
        grows: whether the cluster may add workers by itself now (it is
            adaptive): a task no node holds then waits instead of failing.

    Raises:
        WorkerLost: no worker appeared, or a node runtime failed to start.
        OSError: the scheduler cannot be reached.
    """

    def __init__(self, address: str, *, config: NodeConfig, security: Any = None,
                 start_timeout_s: float = START_TIMEOUT_S, on_close: Callable[[], None] | None = None,
                 grows: Callable[[], bool] | None = None) -> None:
        self.address = address
        self._on_close = on_close
        self._grows = grows
        self.token = new_token()
        self.secret = secrets.token_bytes(32)
        self.config = dataclasses.replace(config, name="", workdir=None)
        self.plugin_name = f"loadmaster-{self.token}"
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._woken = False
        self._nodes: dict[str, _Node] = {}             # by name (the engine thread reads it)
        self._by_runtime: dict[str, _Node] = {}        # loop thread
        self._carriers: dict[str, _Carrier] = {}       # by worker address (loop thread)
        self._task_carrier: dict[int, _Carrier | _Direct] = {}   # loop thread
        self._connecting: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._started = False
        self._closed = False
        self.client: Any = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loadmaster-dask", daemon=True)
        self._thread.start()
        try:
            self._call(self._start(security, start_timeout_s), start_timeout_s + 30)
        except BaseException:
            self.close()
            raise
        self._started = True

    def _call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ── the backend interface (engine thread) ────────────────────────────────
    def nodes(self) -> list[NodeInfo]:
        """The nodes attached now."""
        return [n.info for n in list(self._nodes.values()) if n.carriers]

    def grows(self) -> bool:
        """Whether the cluster adds workers by itself (``cluster.adapt()``)."""
        return self._grows is not None and self._grows()

    def workers(self) -> list[WorkerView]:
        """The workers carrying orders now, with their node and the tasks they carry (any thread)."""
        return [WorkerView(c.address, n.info.name, n.host_pid, tuple(sorted(c.inflight)))
                for n in list(self._nodes.values()) for c in n.carriers]

    def node_tasks(self) -> dict[str, tuple[int, ...]]:
        """The tasks in flight on each node now, by node name (any thread)."""
        out: dict[str, tuple[int, ...]] = {}
        for n in list(self._nodes.values()):
            ids = set(n.direct.inflight) if n.direct is not None else set()
            for c in n.carriers:
                ids |= c.inflight
            out[n.info.name] = tuple(sorted(ids))
        return out

    def submit(self, node: str, orders: Sequence[Order]) -> None:
        """Carry ``orders`` to ``node``: on the client's own connection to its host, else through its
        least loaded worker (one message)."""
        n = self._nodes.get(node)
        carriers = n.carriers if n is not None else ()
        if not carriers or n is None:
            # It has left (its NodeLeft may already have been read): say so for these
            # orders too, so that no task waits on a node that is gone.
            self._push([Lost(node, tuple(o.task_id for o in orders),
                             f"node {node} has left; the order was not carried")])
            return
        d = n.direct
        c: _Carrier | _Direct
        if d is not None:
            c = d
        else:
            c = min(carriers, key=lambda c: len(c.inflight)) if len(carriers) > 1 else carriers[0]
        known = c.fn_keys
        stripped: list[tuple[Order, bytes]] = []
        for o in orders:
            if o.fn_key and o.fn_bytes:
                if o.fn_key in known:
                    stripped.append((o, o.fn_bytes))
                    o.fn_bytes = b""  # the host has them from this stream already
                else:
                    known.add(o.fn_key)
        try:
            blob = pickle.dumps(list(orders), pickle.HIGHEST_PROTOCOL)
        finally:
            for o, b in stripped:
                o.fn_bytes = b
        ids = [o.task_id for o in orders]
        if isinstance(c, _Direct):
            self._loop.call_soon_threadsafe(self._send_direct, c, blob, ids)
        else:
            self._loop.call_soon_threadsafe(self._send_orders, c, blob, ids)

    def cancel(self, node: str, task_id: int) -> None:
        """Ask the node running ``task_id`` to stop it."""
        self._loop.call_soon_threadsafe(self._send_cancel, task_id)

    def wait(self, timeout: float | None) -> list[Event]:
        """Events that arrived; block until one does, a wake, or ``timeout`` s."""
        with self._cond:
            if not self._events and not self._woken:
                self._cond.wait(timeout)
            events, self._events = self._events, []
            self._woken = False
        return events

    def wake(self) -> None:
        """Make a :meth:`wait` return now (any thread)."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def close(self) -> None:
        """End the streams, unregister the plugin (each node's host then exits), close the client."""
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            try:
                self._call(self._close(), CLOSE_TIMEOUT_S)
            except Exception as exc:
                log.warning("closing the Dask backend: %s: %s", type(exc).__name__, exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_TIMEOUT_S)
        if not self._loop.is_running():
            self._loop.close()
        if self._on_close is not None:
            self._on_close()

    # ── the loop thread ───────────────────────────────────────────────────────
    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` as a task of this loop, kept until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _push(self, events: list[Event]) -> None:
        with self._cond:
            self._events.extend(events)
            self._cond.notify()

    async def _start(self, security: Any, timeout: float) -> None:
        from distributed import Client

        self.client = await Client(self.address, asynchronous=True, security=security,
                                   name=f"loadmaster-{self.token}", set_as_default=False)
        self.client.subscribe_topic(topic(self.token), self._on_ready)
        self.client.subscribe_topic("all", self._on_all)
        try:
            await self.client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise WorkerLost(f"no Dask worker joined the scheduler at {self.address} within {timeout:.0f} s; "
                             "start workers (or scale the cluster) first") from None
        plugin = NodePlugin(self.token, self.secret, self.config)
        replies = await self.client.register_plugin(plugin, name=self.plugin_name)
        await asyncio.gather(*(self._attach(addr) for addr in replies))
        if not any(n.carriers for n in self._nodes.values()):
            raise WorkerLost(f"no Dask worker of {self.address} could take a loadmaster stream")

    def _on_ready(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        addr = msg.get("worker")
        if not isinstance(addr, str):
            return
        self._spawn(self._attach(addr, msg.get("runtime")))

    def _on_all(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        if msg.get("action") == "remove-worker":
            c = self._carriers.get(msg.get("worker", ""))
            if c is not None:
                self._spawn(c.comm.close())  # its reader ends and counts the loss

    async def _attach(self, addr: str, runtime: Any = None) -> None:
        """Open ``addr``'s stream (once at a time per worker); log, not raise, on failure.

        A worker already carrying (to ``runtime``, when one is named) is left as it is:
        the registration's replies and the worker's announcement both ask.
        """
        while True:
            running = self._connecting.get(addr)
            if running is None:
                break
            await running
        c = self._carriers.get(addr)
        if c is not None and (runtime is None or c.node.runtime == runtime):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._connecting[addr] = fut
        try:
            await self._open(addr)
        except Exception as exc:
            log.warning("could not open a loadmaster stream to Dask worker %s: %s: %s",
                        addr, type(exc).__name__, exc)
        finally:
            del self._connecting[addr]
            fut.set_result(None)

    async def _open(self, addr: str) -> None:
        from distributed.comm import connect

        old = self._carriers.get(addr)
        if old is not None:
            await old.comm.close()
        comm = await connect(addr, **self.client.connection_args)
        await comm.write({"op": stream_op(self.token), "reply": False})
        first = await comm.read()
        if not isinstance(first, dict) or "welcome" not in first:
            await comm.close()
            raise WorkerLost(f"worker {addr} answered the loadmaster stream with {first!r}")
        welcome = parse_welcome(first["welcome"])
        info: NodeInfo = welcome["info"]
        runtime: str = welcome["runtime"]
        node = self._by_runtime.get(runtime)
        joined = node is None
        if node is None:
            name, k = info.name, 1
            while name in self._nodes:  # another node of the same host name
                k += 1
                name = f"{info.name}#{k}"
            node = _Node(dataclasses.replace(info, name=name), runtime, int(welcome["pid"]))
            self._by_runtime[runtime] = node
            self._nodes[name] = node
            if welcome["direct"]:  # meanwhile another worker of the node may carry its orders
                await self._open_direct(node, welcome["direct"])
        c = _Carrier(addr, comm, node)
        self._carriers[addr] = c
        node.carriers = (*node.carriers, c)
        log.info("Dask worker %s carries orders to node %s (%d worker(s))", addr, node.info.name,
                 len(node.carriers))
        if joined and self._started:
            self._push([NodeJoined(node.info)])
        self._spawn(self._read(c))

    async def _open_direct(self, node: _Node, where: str) -> None:
        """Connect to ``node``'s host at ``where`` and run the handshake; on failure orders go via workers."""
        host, _, port = where.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), DIRECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            log.info("no direct connection to node %s's host at %s (%s); orders go through its workers",
                     node.info.name, where, exc)
            return
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nonce = os.urandom(wire.NONCE_BYTES)
            writer.write(wire.frame(wire.HELLO, nonce + f"client-{self.token}".encode()))

            async def frame(limit: int) -> tuple[int, bytes]:
                size, kind = wire.HEADER.unpack(await reader.readexactly(wire.HEADER.size))
                if size > limit:
                    raise ValueError(f"a {size}-byte handshake frame")
                return kind, await reader.readexactly(size)

            kind, body = await asyncio.wait_for(frame(wire.NONCE_BYTES + wire.MAC_BYTES), DIRECT_TIMEOUT_S)
            proof = wire.answer(self.secret, nonce, body) if kind == wire.CHALLENGE else None
            if proof is None:
                raise ValueError("the peer could not prove this executor's secret")
            writer.write(wire.frame(wire.PROOF, proof))
            kind, body = await asyncio.wait_for(frame(1 << 24), DIRECT_TIMEOUT_S)
            if kind != wire.WELCOME or parse_welcome(body)["runtime"] != node.runtime:
                raise ValueError("it is not the host the workers attached to")
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            log.warning("refused the direct connection to node %s's host at %s (%s); orders go through its "
                        "workers", node.info.name, where, exc)
            writer.close()
            return
        d = _Direct(node, reader, writer)
        node.direct = d
        self._spawn(self._read_direct(d))

    async def _read_direct(self, d: _Direct) -> None:
        """Events from the client's own connection to a host, until it ends (then the node has left)."""
        buf = wire.FrameBuffer()
        name = d.node.info.name
        why = "its host process ended"
        try:
            while True:
                data = await d.reader.read(1 << 16)
                if not data:
                    break
                events: list[Event] = []
                for kind, body in buf.feed(data):
                    if kind == wire.EVENTS:
                        events.extend(loads_from_node(body))
                if events:
                    self._settled(d, events, name)
                    self._push(events)
        except (ConnectionError, OSError) as exc:
            why = f"the connection to its host closed ({type(exc).__name__})"
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.exception("bad events from node %s's host", name)
            why = f"its host sent what cannot be read ({type(exc).__name__}: {exc})"
        with contextlib.suppress(Exception):
            d.writer.close()
        self._node_gone(d.node, f"node {name}'s host ({d.node.info.host}, pid {d.node.host_pid}): {why}")

    def _node_gone(self, node: _Node, reason: str) -> None:
        """``node``'s host is gone (its connection ended, or its last worker): it leaves, once."""
        if node.gone:
            return
        node.gone = True
        d = node.direct
        if d is not None:
            for t in d.inflight:
                self._task_carrier.pop(t, None)
            d.inflight = set()
            with contextlib.suppress(Exception):
                d.writer.close()
        if self._nodes.get(node.info.name) is node:
            del self._nodes[node.info.name]
        if self._by_runtime.get(node.runtime) is node:
            del self._by_runtime[node.runtime]
        if not self._closed:
            log.warning("%s; its tasks are placed again", reason)
            self._push([NodeLeft(node.info.name, reason)])

    async def _read(self, c: _Carrier) -> None:
        """Events from ``c``'s stream, until it ends."""
        from distributed.comm.core import CommClosedError

        name = c.node.info.name
        why = "its stream closed"
        try:
            while True:
                msg = await c.comm.read()
                events: list[Event] = []
                for blob in msg.get("events", ()):
                    events.extend(loads_from_node(blob))
                self._settled(c, events, name)
                self._push(events)
        except (CommClosedError, OSError) as exc:
            why = f"its stream closed ({type(exc).__name__})"
        except Exception as exc:
            log.exception("bad events from Dask worker %s", c.address)
            why = f"it sent what cannot be read ({type(exc).__name__}: {exc})"
        with contextlib.suppress(Exception):
            await c.comm.close()
        self._lost(c, why)

    def _settled(self, c: _Carrier | _Direct, events: list[Any], name: str) -> None:
        """Forget the tasks these events end; name the node as this client does."""
        inflight, by_task = c.inflight, self._task_carrier
        for i, ev in enumerate(events):
            if isinstance(ev, Lost):
                for t in ev.task_ids:
                    inflight.discard(t)
                    by_task.pop(t, None)
            elif isinstance(ev, Output):
                pass  # the task runs on
            else:
                inflight.discard(ev.task_id)
                by_task.pop(ev.task_id, None)
            if ev.node != name:
                if isinstance(ev, Done):
                    ev.node = name
                else:
                    events[i] = dataclasses.replace(ev, node=name)

    def _lost(self, c: _Carrier, why: str) -> None:
        """Worker ``c`` is gone: its tasks are lost, and with its node's last worker, the node."""
        if self._carriers.get(c.address) is c:
            del self._carriers[c.address]
        node = c.node
        if c not in node.carriers:
            return
        node.carriers = tuple(x for x in node.carriers if x is not c)
        for t in c.inflight:
            self._task_carrier.pop(t, None)
        reason = f"Dask worker {c.address} on {node.info.host} was lost: {why}"
        if self._closed or node.gone:
            c.inflight = set()
            return
        if node.carriers:
            if c.inflight:
                log.warning("%s; %d task(s) it carried are placed again", reason, len(c.inflight))
                self._push([Lost(node.info.name, tuple(sorted(c.inflight)), reason)])
        else:
            self._node_gone(node, reason)  # its last worker: the host stops too
        c.inflight = set()

    def _send_orders(self, c: _Carrier, blob: bytes, ids: list[int]) -> None:
        if c not in c.node.carriers:  # it died after the engine chose it
            node = c.node
            if node.carriers:
                self._push([Lost(node.info.name, tuple(ids), f"Dask worker {c.address} was lost")])
            return  # else the node's NodeLeft covers them
        c.inflight.update(ids)
        for t in ids:
            self._task_carrier[t] = c
        c.outbox.append(blob)
        if not c.sending:
            c.sending = True
            self._spawn(self._flush(c))

    def _send_direct(self, d: _Direct, blob: bytes, ids: list[int]) -> None:
        if d.node.gone:
            return  # its NodeLeft covers them
        d.inflight.update(ids)
        for t in ids:
            self._task_carrier[t] = d
        d.writer.write(wire.frame(wire.ORDERS, blob))

    def _send_cancel(self, task_id: int) -> None:
        c = self._task_carrier.get(task_id)
        if c is None:
            return
        if isinstance(c, _Direct):
            if not c.node.gone:
                c.writer.write(wire.frame(wire.CANCEL, wire.TASK_ID.pack(task_id)))
            return
        c.cancels.append(task_id)
        if not c.sending:
            c.sending = True
            self._spawn(self._flush(c))

    async def _flush(self, c: _Carrier) -> None:
        """Write ``c``'s waiting orders and cancels, as one message per round."""
        try:
            while c.outbox or c.cancels:
                msg: dict[str, Any] = {}
                if c.outbox:
                    msg["orders"], c.outbox = c.outbox, []
                if c.cancels:
                    msg["cancel"], c.cancels = c.cancels, []
                await c.comm.write(msg)
        except Exception as exc:
            log.debug("stream to %s: %s", c.address, exc)  # its reader sees the end
        finally:
            c.sending = False

    async def _close(self) -> None:
        for n in list(self._nodes.values()):
            if n.direct is not None:
                with contextlib.suppress(Exception):
                    n.direct.writer.close()
        for c in list(self._carriers.values()):
            with contextlib.suppress(Exception):
                await c.comm.write({"bye": True})
            with contextlib.suppress(Exception):
                await c.comm.close()
        client = self.client
        if client is None:
            return
        with contextlib.suppress(Exception):
            await client.unregister_worker_plugin(self.plugin_name)
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic(self.token))
            client.unsubscribe_topic("all")
        await client.close()
