"""The link between a Dask worker and its node's host process: names, frames, hello.

Imported by the worker plugin (``plugin.py``, in the Dask worker), the host
process (``host.py``, beside it) and the client (``carrier.py``, to read a
node's welcome); stdlib and loadmaster only, so the host never imports
distributed.

Each node has one host process per executor (its *token*), listening on an
abstract unix socket named :func:`socket_name` (abstract names live in the
network namespace and vanish with the process: no stale files, and each
emulated node in its own namespace has its own). Binding that name is the
election: the first host to bind it is the node's; every worker of the node
connects to it.

A name is only a rendezvous, not a proof: any process of this user can bind
it first. So both ends prove they hold the executor's secret before either
believes the other (an HMAC challenge each way; the secret itself never
crosses the socket), and nothing is unpickled before that: the handshake is
fixed-size binary and JSON. A worker that finds an impostor on a name moves
to the next *slot* (:func:`socket_name`, ``NAME_SLOTS`` of them) and
starts or finds the real host there; the host serves a connection only once
its peer runs as this user (``SO_PEERCRED``) and answered the challenge.

Frames, both ways: ``!IB`` (body length, kind) then the body. The worker
forwards order and event bodies as they are (it never unpickles them).

Handshake (``n_w``, ``n_h``: 32 random bytes each; ``mac(x)``: HMAC-SHA256
of ``x`` under the secret):

    worker -> host   HELLO      n_w, then the worker's address (utf-8)
    host -> worker   CHALLENGE  n_h + mac(b"host" + n_w + n_h)      (64 bytes)
    worker -> host   PROOF      mac(b"worker" + n_h + n_w)           (32 bytes)
    host -> worker   WELCOME    JSON: ``info`` (a :class:`~loadmaster.node.orders.NodeInfo`),
                                ``runtime`` (an id unique to this host process), ``pid``

Then, worker -> host:
    ORDERS  a pickled list of :class:`~loadmaster.node.orders.Order` (from the client)
    CANCEL  a task id, ``!q``
    RESET   the client's stream to this worker ended: stop the tasks it carried

Host -> worker:
    EVENTS  a pickled list of node events (``Done``, ``Output``, ``HandedBack``, ``Lost``)
    FAILED  utf-8 text: the node runtime could not start (then the host exits)

Does not cover: what the host does with orders (``host.py``) or how the
client reaches the worker (``carrier.py``, over Dask's own comms).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import socket
import struct
from typing import Any

from loadmaster.node.orders import NodeInfo
from loadmaster.spec import Resources

HEADER = struct.Struct("!IB")
TASK_ID = struct.Struct("!q")

HELLO = 1
ORDERS = 2
CANCEL = 3
RESET = 4
PROOF = 5
WELCOME = 11
EVENTS = 12
FAILED = 13
CHALLENGE = 14

SECRET_BYTES = 32
NONCE_BYTES = 32
MAC_BYTES = 32
NAME_SLOTS = 8       # names a worker tries past impostors before it gives up
FRAME_MAX = 1 << 31  # a frame longer than this is a broken or hostile peer


def socket_name(token: str, slot: int = 0, environ: dict[str, str] | None = None) -> bytes:
    """The abstract socket name of this node's host for executor ``token``, at ``slot``.

    Keyed by the user and, inside a Slurm job, by the job: two jobs on one
    machine are two nodes (each has its own allocation). Slots past 0 are
    where a host goes when an impostor holds the earlier names.
    """
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID", "")
    tail = f"-{slot}" if slot else ""
    return f"\0loadmaster-host-{os.getuid()}-{token}-{job}{tail}".encode()


def mac(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    """HMAC-SHA256 of ``role + first + second`` under ``secret`` (one side's proof)."""
    return hmac.new(secret, role + first + second, hashlib.sha256).digest()


def challenge(secret: bytes, worker_nonce: bytes) -> tuple[bytes, bytes]:
    """The host's answer to a ``HELLO``: ``(its nonce, the CHALLENGE body)``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, nonce + mac(secret, b"host", worker_nonce, nonce)


def answer(secret: bytes, worker_nonce: bytes, body: bytes) -> bytes | None:
    """The worker's ``PROOF`` body for a host's ``CHALLENGE`` body, or ``None``: not our host."""
    if len(body) != NONCE_BYTES + MAC_BYTES:
        return None
    host_nonce, proof = body[:NONCE_BYTES], body[NONCE_BYTES:]
    if not hmac.compare_digest(proof, mac(secret, b"host", worker_nonce, host_nonce)):
        return None
    return mac(secret, b"worker", host_nonce, worker_nonce)


def proven(secret: bytes, worker_nonce: bytes, host_nonce: bytes, body: bytes) -> bool:
    """Whether a worker's ``PROOF`` body answers the host's challenge."""
    return hmac.compare_digest(body, mac(secret, b"worker", host_nonce, worker_nonce))


def welcome_body(info: NodeInfo, runtime: str, pid: int, direct: str = "") -> bytes:
    """The ``WELCOME`` body: JSON, so that no end ever unpickles a handshake.

    ``direct`` is the host's TCP address (``"ip:port"``) where the client may
    connect to it directly, or ``""``.
    """
    doc = dataclasses.asdict(info)
    return json.dumps({"info": doc, "runtime": runtime, "pid": pid, "direct": direct}).encode()


def parse_welcome(body: bytes) -> dict[str, Any]:
    """Read a ``WELCOME`` body: ``info`` as a :class:`NodeInfo`, ``runtime``, ``pid``, ``direct``.

    Raises:
        ValueError: it is not a welcome.
    """
    try:
        doc = json.loads(body)
        raw = doc["info"]
        cap = Resources(**raw.pop("capacity"))
        info = NodeInfo(capacity=cap, **{**raw, "gpu_ids": tuple(raw.get("gpu_ids", ())),
                                         "notes": tuple(raw.get("notes", ()))})
        return {"info": info, "runtime": str(doc["runtime"]), "pid": int(doc["pid"]),
                "direct": str(doc.get("direct", ""))}
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a node host's welcome ({type(exc).__name__}: {exc})") from None


def frame(kind: int, body: bytes) -> bytes:
    """One frame: header and body."""
    return HEADER.pack(len(body), kind) + body


def _peer(sock: socket.socket) -> tuple[int, int]:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of unix socket ``sock``."""
    return _peer(sock)[1]


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end of unix socket ``sock`` (for messages)."""
    return _peer(sock)[0]


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
