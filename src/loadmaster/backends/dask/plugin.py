"""The worker plugin: attaches a Dask worker to its node's host process and relays for it.

Runs in a Dask worker process, in the worker's event loop: the executor
registers one :class:`NodePlugin` per run (``client.register_plugin``), so
Dask sets it up on every worker there is and every worker that joins later.

``setup`` attaches the worker to its node's host process (``host.py``):
it connects to the node's abstract socket, and where no host listens yet it
starts one (``python -m loadmaster.backends.dask.host``) in a session of its
own, so the host outlives a worker that is killed while other workers of the
node still use it, and Dask's memory manager, which watches the worker
process, never counts or kills it. Then it serves the worker handler
:func:`stream_op`, which the client opens once per worker
(``carrier.py``) and keeps: order batches come down it and are written to
the host as they are; event batches come up it as the host sent them (the
worker never unpickles either). Finally it announces itself on the topic
:func:`topic` (``worker.log_event``), which tells the client the worker can
take its stream; a worker whose host died re-attaches (a new host, a new
node to the client) and announces again.

Large payloads never pass through Dask's scheduler: the client's stream is a
direct connection to the worker, and where the worker speaks ``tcp://`` the
host also listens on the worker's IP for the client's own connection
(``host.py``), so orders and events do not pass through the worker at all.

``teardown`` (the executor unregisters the plugin, or the worker closes)
ends the stream and the connection to the host; a host with no worker left
stops its tasks and exits.

Does not cover: what the host does (``host.py``), placement, or the client's
bookkeeping of nodes and tasks (``carrier.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
from typing import Any

from distributed.comm.core import CommClosedError
from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin

from loadmaster.backends.dask import wire
from loadmaster.errors import WorkerLost
from loadmaster.node.orders import NodeConfig

log = logging.getLogger("loadmaster.dask.plugin")

ATTACH_TRIES = 5        # connect-or-start rounds before setup gives up
HOST_START_TIMEOUT_S = 120.0
HANDSHAKE_TIMEOUT_S = 30.0  # a peer that answers no hello within this is an impostor


def stream_op(token: str) -> str:
    """The worker handler the client opens its stream with."""
    return f"loadmaster-stream-{token}"


def topic(token: str) -> str:
    """The event topic on which workers announce that their node is attached."""
    return f"loadmaster-{token}"


class NodePlugin(WorkerPlugin):
    """Hosts a node runtime beside each worker (see the module docstring).

    Args:
        token: the executor's run token (names the host, the handler, the topic).
        secret: proves to the host that orders come from this executor.
        config: the node runtime to build (its ``name``: ``""``, the host's name).
    """

    idempotent = True

    def __init__(self, token: str, secret: bytes, config: NodeConfig) -> None:
        self.token = token
        self.secret = secret
        self.config = config
        self._worker: Any = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._welcome = b""
        self._comm: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._closing = False

    # ── set-up and tear-down (the worker's event loop) ────────────────────────
    async def setup(self, worker: Any) -> None:
        """Attach this worker to its node's host; serve the stream; announce it."""
        self._worker = worker
        worker.handlers[stream_op(self.token)] = self.stream
        await self._attach()
        self._announce()

    async def teardown(self, worker: Any) -> None:
        """End the client's stream and the connection to the host."""
        self._closing = True
        worker.handlers.pop(stream_op(self.token), None)
        if self._comm is not None:
            with contextlib.suppress(Exception):
                await self._comm.close()
        self._detach()

    def _announce(self) -> None:
        runtime = wire.parse_welcome(self._welcome)["runtime"]
        self._worker.log_event(topic(self.token), {"worker": self._worker.address, "runtime": runtime})

    def _detach(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None

    async def _attach(self) -> None:
        """Connect to the node's host, starting one where none listens.

        Raises:
            WorkerLost: the node runtime failed to start (its reason), or no
                host could be reached after ``ATTACH_TRIES`` rounds.
        """
        why = "no host answered"
        slot, impostors = 0, []
        tries, taken = 0, 0
        while tries < ATTACH_TRIES:
            got = await self._connect(slot)
            if got == "ok":
                self._pump = asyncio.ensure_future(self._forward_events())
                return
            if got == "absent" and taken >= 2:
                got = "impostor a process that holds the name but does not listen"
            if got.startswith("impostor"):
                taken = 0
                impostors.append(got[9:])
                log.warning("worker %s: %s holds the node host's name (slot %d) and cannot prove this "
                            "executor's secret; refused it, trying the next name",
                            self._worker.address, got[9:], slot)
                slot += 1
                if slot >= wire.NAME_SLOTS:
                    raise WorkerLost(
                        f"worker {self._worker.address}: every name of the loadmaster node host was held by a "
                        f"process that could not prove this executor's secret ({'; '.join(impostors)}); "
                        "some process of this user squats on them: stop it, or sandbox your tasks")
                continue
            tries += 1
            outcome = await asyncio.to_thread(self._start_host, slot)
            if outcome.startswith("failed"):
                raise WorkerLost(f"the loadmaster node runtime on {socket.gethostname()} did not start: "
                                 f"{outcome[7:]}; see the worker's log for the traceback")
            taken = taken + 1 if outcome == "taken" else 0
            why = outcome
        raise WorkerLost(f"could not attach worker {self._worker.address} to a loadmaster node host "
                         f"after {ATTACH_TRIES} tries (last: {why})")

    async def _connect(self, slot: int) -> str:
        """Connect to the host at ``slot`` and run the handshake (``wire.py``).

        Returns ``"ok"`` once a host proved the secret and welcomed this worker,
        ``"absent"`` where none listens (or it is leaving: start another), or
        ``"impostor <who>"`` where the peer is not this executor's host.
        Nothing the peer sends is unpickled, and nothing but the handshake's
        fixed-size frames is read before it has proved the secret.
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, wire.socket_name(self.token, slot))
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            return "absent"
        try:
            pid, uid = wire.peer_pid(sock), wire.peer_uid(sock)
        except OSError:
            pid, uid = 0, -1
        who = f"pid {pid} (uid {uid})"
        if uid != os.getuid():
            sock.close()
            return f"impostor {who}"
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        nonce = os.urandom(wire.NONCE_BYTES)
        writer.write(wire.frame(wire.HELLO, nonce + self._worker.address.encode()))

        async def frame(limit: int) -> tuple[int, bytes]:
            size, kind = wire.HEADER.unpack(await reader.readexactly(wire.HEADER.size))
            if size > limit:
                raise ValueError(f"a {size}-byte handshake frame")
            return kind, await reader.readexactly(size)

        try:
            kind, body = await asyncio.wait_for(frame(wire.NONCE_BYTES + wire.MAC_BYTES), HANDSHAKE_TIMEOUT_S)
            proof = wire.answer(self.secret, nonce, body) if kind == wire.CHALLENGE else None
            if proof is None:
                writer.close()
                return f"impostor {who}"
            writer.write(wire.frame(wire.PROOF, proof))
            kind, body = await asyncio.wait_for(frame(1 << 24), HANDSHAKE_TIMEOUT_S)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return "absent"  # a host that is leaving: start another
        except (TimeoutError, ValueError):
            writer.close()
            return f"impostor {who}"
        if kind == wire.FAILED:
            writer.close()
            raise WorkerLost(f"the loadmaster node runtime did not start: {body.decode('utf-8', 'replace')}")
        try:
            wire.parse_welcome(body)
        except ValueError as exc:
            writer.close()
            raise WorkerLost(f"the loadmaster node host (pid {pid}) sent a bad welcome: {exc}") from None
        self._reader, self._writer, self._welcome = reader, writer, body
        return "ok"

    def _start_host(self, slot: int) -> str:
        """Start a host process; return its first line (``ready``, ``taken``, ``failed ...``). Blocking."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadmaster.backends.dask.host"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(pickle.dumps({"token": self.token, "slot": slot, "secret": self.secret,
                                           "config": self.config, "direct_host": self._direct_host(),
                                           "transfer_host": self._worker.ip}))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        line = proc.stdout.readline().decode("utf-8", "replace").strip()
        proc.stdout.close()
        # Reap it when it exits (it may outlive this worker: then it is not ours to reap).
        threading.Thread(target=proc.wait, name="loadmaster-host-reaper", daemon=True).start()
        if not line:
            return f"failed the host process exited with status {proc.wait()} before it was ready"
        return line

    def _direct_host(self) -> str:
        """The IP the client reaches this worker at, where the host may listen for it; ``""``: none.

        Only for plain ``tcp://`` workers: over TLS (or inproc, UCX) orders
        keep going through the worker's own comm.
        """
        addr = str(self._worker.address)
        if not addr.startswith("tcp://"):
            return ""
        return addr[len("tcp://"):].rsplit(":", 1)[0].strip("[]")

    # ── relaying (the worker's event loop) ────────────────────────────────────
    async def stream(self, comm: Any) -> Any:
        """The client's stream (a worker handler): orders down, events up, until either ends."""
        old, self._comm = self._comm, comm
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        writer = self._writer
        try:
            await comm.write({"welcome": self._welcome, "worker": self._worker.address})
            while True:
                msg = await comm.read()
                if writer is None or writer.is_closing():
                    break  # the host is gone: closing the stream tells the client
                for blob in msg.get("orders", ()):
                    writer.write(wire.frame(wire.ORDERS, blob))
                for task_id in msg.get("cancel", ()):
                    writer.write(wire.frame(wire.CANCEL, wire.TASK_ID.pack(task_id)))
                if msg.get("bye"):
                    break
                await writer.drain()
        except (CommClosedError, OSError):
            pass
        finally:
            if self._comm is comm:
                self._comm = None
                if writer is not None and not writer.is_closing():
                    writer.write(wire.frame(wire.RESET, b""))
            with contextlib.suppress(Exception):
                await comm.close()
        return Status.dont_reply

    async def _forward_events(self) -> None:
        """Host -> client: each read's complete event frames go up as one message."""
        reader = self._reader
        assert reader is not None
        buf = wire.FrameBuffer()
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                bodies = [body for kind, body in buf.feed(data) if kind == wire.EVENTS]
                comm = self._comm
                if bodies and comm is not None:
                    try:
                        await comm.write({"events": bodies})
                    except (CommClosedError, OSError):
                        pass
        except (ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            return
        if self._closing:
            return
        log.error("the loadmaster node host of worker %s is gone; its tasks are lost; starting another",
                  self._worker.address)
        comm, self._comm = self._comm, None
        if comm is not None:
            with contextlib.suppress(Exception):
                await comm.close()
        self._pump = None
        self._detach()
        try:
            await self._attach()
            self._announce()
        except Exception:
            log.exception("could not re-attach worker %s to a node host", self._worker.address)
