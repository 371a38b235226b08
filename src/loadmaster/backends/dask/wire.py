"""The link between a Dask worker and its node's host process: names, frames, hello.

Imported by the worker plugin (``plugin.py``, in the Dask worker) and the host
process (``host.py``, beside it); stdlib only, so the host never imports
distributed.

Each node has one host process per executor (its *token*), listening on an
abstract unix socket named :func:`socket_name` (abstract names live in the
network namespace and vanish with the process: no stale files, and each
emulated node in its own namespace has its own). Binding that name is the
election: the first host to bind it is the node's; every worker of the node
connects to it.

Frames, both ways: ``!IB`` (body length, kind) then the body. The worker
forwards order and event bodies as they are (it never unpickles them); the
host unpickles a worker's bodies only after that connection's ``HELLO``
carried the executor's secret and its peer runs as this user
(``SO_PEERCRED``), so a task on the node (which can reach the socket unless
sandboxed in a network namespace of its own) cannot hand the host orders.

Worker -> host:
    HELLO   the 32-byte secret, then the worker's address (utf-8)
    ORDERS  a pickled list of :class:`~loadmaster.node.orders.Order` (from the client)
    CANCEL  a task id, ``!q``
    RESET   the client's stream to this worker ended: stop the tasks it carried

Host -> worker:
    WELCOME a pickled dict: ``info`` (:class:`~loadmaster.node.orders.NodeInfo`),
            ``runtime`` (an id unique to this host process), ``pid``
    EVENTS  a pickled list of node events (``Done``, ``HandedBack``, ``Lost``)
    FAILED  utf-8 text: the node runtime could not start (then the host exits)

Does not cover: what the host does with orders (``host.py``) or how the
client reaches the worker (``carrier.py``, over Dask's own comms).
"""

from __future__ import annotations

import os
import socket
import struct

HEADER = struct.Struct("!IB")
TASK_ID = struct.Struct("!q")

HELLO = 1
ORDERS = 2
CANCEL = 3
RESET = 4
WELCOME = 11
EVENTS = 12
FAILED = 13

SECRET_BYTES = 32
FRAME_MAX = 1 << 31  # a frame longer than this is a broken or hostile peer


def socket_name(token: str, environ: dict[str, str] | None = None) -> bytes:
    """The abstract socket name of this node's host for executor ``token``.

    Keyed by the user and, inside a Slurm job, by the job: two jobs on one
    machine are two nodes (each has its own allocation).
    """
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID", "")
    return f"\0loadmaster-host-{os.getuid()}-{token}-{job}".encode()


def frame(kind: int, body: bytes) -> bytes:
    """One frame: header and body."""
    return HEADER.pack(len(body), kind) + body


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of unix socket ``sock``."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class FrameBuffer:
    """Splits a byte stream into ``(kind, body)`` frames. One per connection, one thread."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add bytes; return the frames now complete.

        Raises:
            ValueError: a frame header announces more than ``FRAME_MAX`` bytes.
        """
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos, n, hdr = 0, len(buf), HEADER.size
        while n - pos >= hdr:
            size, kind = HEADER.unpack_from(buf, pos)
            if size > FRAME_MAX:
                raise ValueError(f"a frame of {size} bytes announced; the peer is broken")
            if n - pos - hdr < size:
                break
            out.append((kind, bytes(buf[pos + hdr : pos + hdr + size])))
            pos += hdr + size
        if pos:
            del buf[:pos]
        return out
