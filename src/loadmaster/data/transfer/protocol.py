"""The transfer wire: who may ask, what a request and an answer look like.

Both ends are loadmaster processes of one run (a node's transfer server and a
node's :class:`~loadmaster.data.transfer.peer.PeerFetcher`, or the
submitter's server). A task on a node can reach these sockets too, so the
server trusts nothing it reads: a request is JSON (never pickle), at most
:data:`MAX_HEADER` bytes, names only a digest (64 hex digits; the server maps
it to a path itself, so nothing outside its cache or its declared files can
be asked for) and must carry an HMAC-SHA256 under the run's secret over the
server's fresh nonce, so a replay or a forged request is refused.

One connection carries one transfer::

    server -> client   MAGIC (4 bytes) + nonce (32 bytes)
    client -> server   u32 length + JSON {"digest", "offset", "wait"} + mac (32 bytes)
                       mac = HMAC-SHA256(secret, nonce + JSON)
    server -> client   u32 length + JSON {"ok": true, "size", "offset", "state"}
                       then the bytes [offset, size) (fewer if the server's copy stops arriving)
                    or u32 length + JSON {"ok": false, "error"} and close

The bytes are not signed: the receiver checks the whole entry against its
digest before it becomes visible (``Cache.Writer.commit``).

Does not cover: choosing a source (``planner.py``), serving (``server.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import struct
import time
from typing import Any

MAGIC = b"LMT1"
NONCE = 32
MAC = 32
MAX_HEADER = 4096
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class ProtocolError(Exception):
    """The other end broke the protocol, refused the request, or went away mid-header."""


def new_secret() -> bytes:
    """A fresh run secret (32 random bytes)."""
    return os.urandom(32)


def mac(secret: bytes, nonce: bytes, body: bytes) -> bytes:
    """The request's HMAC-SHA256 under ``secret`` over ``nonce + body``."""
    return hmac.new(secret, nonce + body, hashlib.sha256).digest()


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """Exactly ``n`` bytes from ``sock`` (all of them by ``deadline``, a ``time.monotonic()``, if given).

    A deadline bounds the whole read, not each ``recv``: a peer trickling one
    byte at a time cannot hold the connection past it.

    Raises:
        ProtocolError: the peer closed first.
        TimeoutError: the deadline passed.
    """
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{got} of {n} bytes arrived before the deadline")
            sock.settimeout(left)
        k = sock.recv_into(view[got:])
        if not k:
            raise ProtocolError(f"connection closed after {got} of {n} header bytes")
        got += k
    return bytes(buf)


def send_json(sock: socket.socket, obj: dict[str, Any], tail: bytes = b"") -> None:
    """Send one length-prefixed JSON object (and ``tail`` right after it)."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(struct.pack("!I", len(body)) + body + tail)


def recv_json(sock: socket.socket, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    """One length-prefixed JSON object and its raw bytes (by ``deadline``, as :func:`recv_exact`).

    Raises:
        ProtocolError: too long, not JSON, or not an object.
        TimeoutError: the deadline passed.
    """
    (n,) = struct.unpack("!I", recv_exact(sock, 4, deadline))
    if n > MAX_HEADER:
        raise ProtocolError(f"a {n}-byte header (at most {MAX_HEADER})")
    body = recv_exact(sock, n, deadline)
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("header is not a JSON object")
    return obj, body


def check_request(req: dict[str, Any]) -> tuple[str, int, float]:
    """The request's ``(digest, offset, wait)``, validated.

    Raises:
        ProtocolError: a field is missing or malformed.
    """
    digest, offset, wait = req.get("digest"), req.get("offset", 0), req.get("wait", 0.0)
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ProtocolError("digest must be 64 lowercase hex digits")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ProtocolError("offset must be a non-negative integer")
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not 0 <= wait <= 3600:
        raise ProtocolError("wait must be seconds between 0 and 3600")
    return digest, offset, float(wait)


def request(sock: socket.socket, secret: bytes, digest: str, offset: int, wait: float) -> dict[str, Any]:
    """Client side: read the challenge, send the signed request, return the server's answer header.

    Raises:
        ProtocolError: not a transfer server, or it refused (its reason in the message).
    """
    hello = recv_exact(sock, len(MAGIC) + NONCE)
    if hello[: len(MAGIC)] != MAGIC:
        raise ProtocolError("not a loadmaster transfer server")
    nonce = hello[len(MAGIC):]
    body = json.dumps({"digest": digest, "offset": offset, "wait": wait}, separators=(",", ":")).encode()
    sock.sendall(struct.pack("!I", len(body)) + body + mac(secret, nonce, body))
    ans, _ = recv_json(sock)
    if ans.get("ok") is not True:
        raise ProtocolError(f"refused: {ans.get('error', 'no reason given')}")
    size, off = ans.get("size"), ans.get("offset")
    if not isinstance(size, int) or not isinstance(off, int) or off != offset or size < off:
        raise ProtocolError(f"a malformed answer {ans!r}")
    return ans
