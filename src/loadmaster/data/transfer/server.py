"""A transfer server: serves ready cache entries, entries still arriving, and the submitter's declared files.

Runs on each node (one per node runtime / per host cache, a thread pool in
that process) and in the submitter (for the files it declared). Listens on
the node's address; each connection is one transfer (``protocol.py``). A
request names a digest; the server answers from, in order:

1. its cache's ready entry (pinned while it is sent, ``socket.sendfile``);
2. its cache's partial entry, **while it arrives** (pipelining): it sends
   what is there, then waits for more up to the final size. It stops (and
   closes early, so the receiver resumes elsewhere) when the writer died
   (its lock is free and the file stopped short), dropped the entry, or
   nothing came for ``stall_s``;
3. a declared file of the submitter (:class:`FileCatalog`), opened and checked
   against the size, mtime and inode it had when declared: a file edited
   since is refused, not served torn;
4. nothing yet: it waits up to the request's ``wait`` (at most ``max_wait_s``)
   for a partial entry to appear (a node the planner chose as a source just
   before its own fetch began), then refuses.

Anyone who can reach the port can connect (a task on the node, another
user of the host), so connections are bounded before anything is read: at
most ``max_handshakes`` connections may be in their handshake at once (a new
one past that cuts the oldest still in it), each must send its whole signed
request within ``handshake_s`` (a deadline over the whole request, so a peer
trickling bytes is cut too), and at most ``max_transfers`` signed requests
are served at once (one more is refused as busy; the receiver resumes from
another holder). A flood of idle connections therefore holds at most
``max_handshakes`` sockets for at most ``handshake_s`` each, and a real
fetch still gets through. Running out of file descriptors does not stop the
server: it cuts the oldest handshake and goes on accepting.

A directory (a tree entry, or one the submitter declared) is sent whole as
a manifest and its files' bytes (``tree.py``); it is not pipelined (a tree
becomes an entry only once all of it arrived). Counters (``bytes_sent``, ``active``, ``served``,
``dropped``) are for reports and tests; the bench counts bytes on the links too.

Does not cover: who may fetch from whom (``planner.py``), receiving (``peer.py``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass

from loadmaster.data.cache import Cache
from loadmaster.data.transfer.protocol import (
    MAC,
    MAGIC,
    ProtocolError,
    check_request,
    mac,
    recv_exact,
    recv_json,
    send_json,
)
from loadmaster.data.transfer.tree import manifest_length, send_tree


@dataclass(frozen=True, slots=True)
class Declared:
    """A file the submitter declared: where it is and what it looked like when hashed."""

    path: str
    size: int
    mtime_ns: int
    inode: int


class FileCatalog:
    """The submitter's declared files by digest (thread safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, Declared] = {}

    def add(self, digest: str, path: str) -> Declared:
        """Declare ``path`` (already hashed to ``digest``) as servable; its stat now is what it must stay."""
        st = os.stat(path)
        d = Declared(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            self._files[digest] = d
        return d

    def get(self, digest: str) -> Declared | None:
        """The declared file of ``digest``, if any."""
        with self._lock:
            return self._files.get(digest)


class TransferServer:
    """Serves one cache and/or one catalog on ``(host, port)`` (see the module docstring).

    Args:
        secret: the run's secret (requests must be signed with it).
        cache: the node's cache (None for the submitter).
        files: the submitter's declared files (None on a node).
        host, port: where to listen (port 0: any free one; see :attr:`address`).
        stall_s: close a pipelined stream when its entry has not grown for this long.
        max_wait_s: the longest a request may wait for an entry to start arriving.
        io_timeout_s: a send that makes no progress this long ends the transfer.
        handshake_s: a connection that has not sent its whole signed request this long after
            connecting is cut.
        max_handshakes: connections in their handshake at once (past it, the oldest is cut).
        max_transfers: signed requests served at once (past it, one is refused as busy).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, secret: bytes, *, cache: Cache | None = None, files: FileCatalog | None = None,
                 host: str = "127.0.0.1", port: int = 0, stall_s: float = 30.0, max_wait_s: float = 30.0,
                 io_timeout_s: float = 60.0, poll_s: float = 0.005, handshake_s: float = 5.0,
                 max_handshakes: int = 32, max_transfers: int = 64) -> None:
        self.secret, self.cache, self.files = secret, cache, files
        self.stall_s, self.max_wait_s, self.io_timeout_s, self.poll_s = stall_s, max_wait_s, io_timeout_s, poll_s
        self.handshake_s, self.max_handshakes, self.max_transfers = handshake_s, max_handshakes, max_transfers
        self._sock = socket.create_server((host, port), backlog=64)
        self.host, self.port = self._sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._handshaking: dict[socket.socket, None] = {}  # in their handshake, oldest first
        self._started: set[int] = set()  # connections whose answer header went out
        self._closed = threading.Event()
        self.bytes_sent = 0
        self.active = 0  # connections being served (handshake or transfer)
        self.transferring = 0  # signed requests being answered
        self.served = 0
        self.refused = 0
        self.dropped = 0  # connections cut in their handshake (too slow, or to make room)
        self._thread = threading.Thread(target=self._accept_loop, name="lm-transfer-server", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``host:port`` to put in a :class:`~loadmaster.data.refs.Source`."""
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        """Stop listening and cut every transfer in flight (idempotent)."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> TransferServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ── connections ───────────────────────────────────────────────────────────
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if self._closed.is_set():
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._cut_oldest()  # out of descriptors: make room, then accept again
                    self._closed.wait(0.05)
                continue
            with self._lock:
                if len(self._handshaking) >= self.max_handshakes:
                    self._cut_oldest_locked()
                self._handshaking[conn] = None
                self._conns.add(conn)
                self.active += 1
            threading.Thread(target=self._serve, args=(conn,), name="lm-transfer", daemon=True).start()

    def _cut_oldest(self) -> None:
        with self._lock:
            self._cut_oldest_locked()

    def _cut_oldest_locked(self) -> None:
        """Cut the connection longest in its handshake (its thread sees the end and closes it)."""
        if not self._handshaking:
            return
        victim = next(iter(self._handshaking))
        del self._handshaking[victim]
        self.dropped += 1
        with contextlib.suppress(OSError):
            victim.shutdown(socket.SHUT_RDWR)

    def _serve(self, conn: socket.socket) -> None:
        transferring = False
        try:
            deadline = time.monotonic() + self.handshake_s
            conn.settimeout(self.handshake_s)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nonce = os.urandom(32)
            conn.sendall(MAGIC + nonce)
            req, body = recv_json(conn, deadline)
            got_mac = recv_exact(conn, MAC, deadline)
            if not hmac.compare_digest(got_mac, mac(self.secret, nonce, body)):
                raise ProtocolError("the request is not signed with this run's secret")
            digest, offset, wait = check_request(req)
            with self._lock:
                if self._handshaking.pop(conn, self) is self:
                    return  # cut to make room just as it finished: it is gone
                busy = self.transferring >= self.max_transfers
                if not busy:
                    self.transferring += 1
                    transferring = True
            if busy:
                raise ProtocolError(f"busy: {self.max_transfers} transfers in progress here; ask another holder")
            conn.settimeout(self.io_timeout_s)
            self._answer(conn, digest, offset, min(wait, self.max_wait_s))
        except (ProtocolError, OSError, ValueError) as exc:
            with self._lock:
                self.refused += 1
                started = id(conn) in self._started
                if self._handshaking.pop(conn, self) is not self and isinstance(exc, TimeoutError):
                    self.dropped += 1  # too slow to send its request
            if not started:  # after the header, an error only cuts the stream (the receiver resumes)
                with contextlib.suppress(OSError):
                    conn.settimeout(1.0)  # never wait long on a peer that does not read
                    send_json(conn, {"ok": False, "error": str(exc)})
        finally:
            with self._lock:
                self.active -= 1
                if transferring:
                    self.transferring -= 1
                self._handshaking.pop(conn, None)
                self._conns.discard(conn)
                self._started.discard(id(conn))
            with contextlib.suppress(OSError):
                conn.close()

    def _answer(self, conn: socket.socket, digest: str, offset: int, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            if self.cache is not None and self._try_cache(conn, digest, offset):
                return
            if self.files is not None and self._try_file(conn, digest, offset):
                return
            if time.monotonic() >= deadline or self._closed.is_set():
                raise ProtocolError(f"{digest[:16]} is not held here")
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))  # waiting for a writer to begin

    # ── sources of bytes ──────────────────────────────────────────────────────
    def _try_cache(self, conn: socket.socket, digest: str, offset: int) -> bool:
        assert self.cache is not None
        pin = self.cache.pin(digest)
        try:
            path = self.cache.lookup(digest)
            if path is not None:
                if os.path.isdir(path):
                    self._send_tree(conn, path, offset)
                    return True
                with open(path, "rb", buffering=0) as fh:
                    st = os.fstat(fh.fileno())
                    if not stat.S_ISREG(st.st_mode):
                        raise ProtocolError(f"{digest[:16]} is neither a file nor a directory")
                    self._start(conn, st.st_size, offset, "ready")
                    self._send(conn, fh, offset, st.st_size)
                return True
        finally:
            pin.close()
        view = self.cache.partial(digest)
        if view is None:
            return False
        try:
            fh = open(view.path, "rb", buffering=0)  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            return self.cache.lookup(digest) is not None and self._try_cache(conn, digest, offset)
        with fh:
            self._start(conn, view.size, offset, "partial")
            self._stream_growing(conn, fh, digest, offset, view.size)
        return True

    def _try_file(self, conn: socket.socket, digest: str, offset: int) -> bool:
        assert self.files is not None
        d = self.files.get(digest)
        if d is None:
            return False
        if os.path.isdir(d.path):
            st = os.stat(d.path)
            if (st.st_mtime_ns, st.st_ino) != (d.mtime_ns, d.inode):
                raise ProtocolError(f"the declared directory {d.path} changed since it was declared; it is not served")
            self._send_tree(conn, d.path, offset)  # the receiver hashes the tree: an edited file is refused
            return True
        try:
            fh = open(d.path, "rb", buffering=0)  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise ProtocolError(f"the declared file {d.path} cannot be read: {exc}") from None
        with fh:
            st = os.fstat(fh.fileno())
            if (st.st_size, st.st_mtime_ns, st.st_ino) != (d.size, d.mtime_ns, d.inode):
                raise ProtocolError(f"the declared file {d.path} changed since it was declared "
                                    "(size, mtime or inode); it is not served")
            self._start(conn, d.size, offset, "file")
            self._send(conn, fh, offset, d.size)
        return True

    def _send_tree(self, conn: socket.socket, root: str, offset: int) -> None:
        """A directory, whole (``tree.py``): its manifest, then its files' bytes."""
        if offset:
            raise ProtocolError("a directory is sent whole (offset 0)")
        manifest, total, length = manifest_length(root)
        self._start(conn, total, 0, "tree", manifest=length)
        send_tree(conn, root, manifest, self._count)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _start(self, conn: socket.socket, size: int, offset: int, state: str, **more: int) -> None:
        if offset > size:
            raise ProtocolError(f"offset {offset} is past the entry's {size} bytes")
        send_json(conn, {"ok": True, "size": size, "offset": offset, "state": state, **more})
        with self._lock:
            self.served += 1
            self._started.add(id(conn))

    def _send(self, conn: socket.socket, fh: object, start: int, end: int) -> None:
        if end > start:
            n = conn.sendfile(fh, start, end - start)  # type: ignore[arg-type]
            with self._lock:
                self.bytes_sent += n

    def _stream_growing(self, conn: socket.socket, fh: object, digest: str, offset: int, size: int) -> None:
        fd = fh.fileno()  # type: ignore[attr-defined]
        assert self.cache is not None
        lock_path = os.path.join(self.cache.root, "locks", f"{digest}.w")
        sent, last = offset, time.monotonic()
        while sent < size and not self._closed.is_set():
            st = os.fstat(fd)
            have = min(st.st_size, size)
            if have > sent:
                self._send(conn, fh, sent, have)
                sent, last = have, time.monotonic()
                continue
            if st.st_nlink == 0 or time.monotonic() - last > self.stall_s or _writer_gone(lock_path):
                if os.fstat(fd).st_size <= sent:
                    return  # the writer stopped short: close early, the receiver resumes elsewhere
                continue
            time.sleep(self.poll_s)  # the entry grows as its writer receives


def _writer_gone(lock_path: str) -> bool:
    """True when no process holds the writer lock (it committed, aborted or died)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
