"""The node side of a peer transfer: pull a digest from a chosen holder into the cache, resuming elsewhere.

Runs on the node (``data/stage.py`` calls it as its :class:`Fetcher` while
staging a task's inputs). The sources come best first: the first is the one
the client's planner reserved (``planner.py``), the rest are other holders
to fall back on. Bytes go straight into ``Cache.begin``'s writer, so the
partial entry is readable by this node's own transfer server while it grows
(a chain or tree of nodes relays the file as it arrives). When a source dies
or stops short mid-transfer, the next holder is asked for the rest from the
received offset; the hash runs over the whole entry, and ``commit`` checks it
against the digest, so a wrong byte from any source never becomes visible
(the partial entry is dropped and :class:`~loadmaster.errors.DataError` says
what happened).

Sources without an ``address`` (the submitter's path on this host, another
cache here) go to the local fetcher first; when it cannot read them (another
host, a path this node does not see), the peers are asked. A directory comes
whole from one holder (``tree.py``: no resuming mid-tree; the next holder
sends it again from the start), into a temporary tree that the cache hashes
before it becomes the entry.

Does not cover: serving (``server.py``), choosing sources (``planner.py``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence

from loadmaster.data.cache import Cache, Writer
from loadmaster.data.fetch import Fetched, Fetcher, LocalFetcher
from loadmaster.data.refs import Source
from loadmaster.data.transfer.protocol import ProtocolError, request
from loadmaster.data.transfer.tree import recv_tree
from loadmaster.errors import DataError

BUF = 1 << 20


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` as ``(host, port)``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class PeerFetcher(Fetcher):
    """Pulls from transfer servers (see the module docstring).

    Args:
        secret: the run's secret.
        local: the fetcher for sources without an address (default: :class:`LocalFetcher`).
        connect_timeout_s: giving up on connecting to one source.
        idle_timeout_s: a source that sends nothing this long is given up (resume elsewhere).
        wait_s: how long a source may wait for its own copy to start arriving.
        rounds: passes over the sources before giving up.
    """

    def __init__(self, secret: bytes, *, local: Fetcher | None = None, connect_timeout_s: float = 10.0,
                 idle_timeout_s: float = 30.0, wait_s: float = 10.0, rounds: int = 3) -> None:
        self.secret = secret
        self.local = local or LocalFetcher()
        self.connect_timeout_s, self.idle_timeout_s, self.wait_s, self.rounds = (
            connect_timeout_s, idle_timeout_s, wait_s, rounds)

    def fetch(self, digest: str, size: int, kind: str, sources: Sequence[Source], cache: Cache,
              name: str = "") -> Fetched:
        """Get ``digest`` into ``cache`` from the first source that delivers; resume from the next on failure.

        Raises:
            DataError: no source delivered all of it, or the bytes are not ``digest``.
        """
        peers = [s for s in sources if s.address]
        local = [s for s in sources if not s.address]
        if not peers:
            return self.local.fetch(digest, size, kind, local, cache, name)
        if local:  # a path this host may read (the submitter's file here): copy it, no TCP
            with contextlib.suppress(DataError):
                return self.local.fetch(digest, size, kind, local, cache, name)
        if kind == "dir":
            return self._fetch_tree(digest, size, peers, cache, name)
        t0 = time.monotonic()
        w = cache.begin(digest, size)
        if w is None:
            cache.touch(digest, name)
            return Fetched(cache.object_path(digest), 0, "cache", time.monotonic() - t0)
        via: dict[str, int] = {}
        tried: list[str] = []
        try:
            for rnd in range(self.rounds):
                for s in peers:
                    if w.received >= size:
                        break
                    before = w.received
                    try:
                        self._pull(s, digest, w)
                    except (OSError, ProtocolError) as exc:
                        tried.append(f"{s.node} at {before}: {exc}")
                    if w.received > before:
                        via[s.node] = via.get(s.node, 0) + w.received - before
                if w.received >= size:
                    break
                time.sleep(0.2 * (rnd + 1))  # every holder failed this pass; give restarts a moment
            if w.received < size:
                raise DataError(
                    f"no source delivered {name or digest[:16]} ({w.received} of {size} bytes arrived): "
                    f"{'; '.join(tried[-6:])}; the task is re-staged when the client retries it")
            path = w.commit()
        except BaseException:
            w.abort()
            raise
        cache.touch(digest, name)
        return Fetched(path, sum(via.values()), ",".join(via), time.monotonic() - t0, tuple(via.items()))

    def _fetch_tree(self, digest: str, size: int, peers: Sequence[Source], cache: Cache, name: str) -> Fetched:
        """A directory, whole, from the first holder that sends all of it (``tree.py``); hashed before it is visible."""
        t0 = time.monotonic()
        path = cache.lookup(digest)
        if path is not None:
            cache.touch(digest, name)
            return Fetched(path, 0, "cache", time.monotonic() - t0)
        tried: list[str] = []
        for rnd in range(self.rounds):
            for s in peers:
                tmp, lock_fd = cache._tmp(".d")  # swept if this process dies mid-tree
                try:
                    host, port = split_address(s.address)
                    with socket.create_connection((host, port), timeout=self.connect_timeout_s) as sock:
                        sock.settimeout(self.idle_timeout_s)
                        ans = request(sock, self.secret, digest, 0, self.wait_s)
                        if ans["size"] != size:
                            raise ProtocolError(f"it holds {ans['size']} bytes under this digest, {size} were declared")
                        got = recv_tree(sock, ans, size, tmp)
                    put = cache.put_path(tmp, digest=digest, name=name, move=True)
                    return Fetched(put.path, got, s.node, time.monotonic() - t0, ((s.node, got),))
                except (OSError, ProtocolError, DataError) as exc:
                    tried.append(f"{s.node}: {exc}")
                finally:
                    cache._drop_tmp(tmp, lock_fd)
            time.sleep(0.2 * (rnd + 1))  # every holder failed this pass; give restarts a moment
        raise DataError(f"no source delivered the directory {name or digest[:16]}: {'; '.join(tried[-6:])}; "
                        "the task is re-staged when the client retries it")

    def _pull(self, s: Source, digest: str, w: Writer) -> None:
        host, port = split_address(s.address)
        sock = socket.create_connection((host, port), timeout=self.connect_timeout_s)
        try:
            sock.settimeout(self.idle_timeout_s)
            ans = request(sock, self.secret, digest, w.received, self.wait_s)
            if ans.get("state") == "tree":
                raise ProtocolError("it holds a directory, asked for a file")
            if ans["size"] != w.size:
                raise ProtocolError(f"it holds {ans['size']} bytes under this digest, {w.size} were declared")
            buf = bytearray(BUF)
            view = memoryview(buf)
            while w.received < w.size:
                n = sock.recv_into(view, min(BUF, w.size - w.received))
                if not n:
                    raise ProtocolError(f"the source stopped at {w.received} of {w.size} bytes")
                w.write(view[:n])
        finally:
            with contextlib.suppress(OSError):
                sock.close()
