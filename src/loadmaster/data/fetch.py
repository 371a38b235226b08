"""How a node gets a digest its cache lacks: the :class:`Fetcher` interface and the local one.

Runs on the node (``data/stage.py`` calls it while staging a task's inputs, in
the node runtime's thread). A fetcher writes the entry into the node's
:class:`~loadmaster.data.cache.Cache` (through ``Cache.begin``/``Writer`` or
``Cache.put_path``, so nothing unchecked becomes visible) and returns where it is.

The interface a peer-to-peer fetcher implements
(``data/transfer/peer.py``; see ``docs/data.md``)::

    class Fetcher:
        def fetch(self, digest, size, kind, sources, cache, name) -> Fetched

``sources`` are :class:`~loadmaster.data.refs.Source` s, best first (the
client's file, nodes holding the digest). :class:`LocalFetcher` reads a source
whose path this host can reach: the submitter's file on the same host (local
backend, Dask workers on the client's machine) or another cache on this host.
A hard link is never used: the user may edit the file in place later, which
would change the cached entry under its name. ``ext4`` here has no reflink,
so the bytes are copied (hashing on the way, checked before publishing).

Does not cover: choosing sources across nodes, limits per source, pipelining
(``data/transfer/``: its ``PeerFetcher`` implements this interface).
"""

from __future__ import annotations

import abc
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from loadmaster.data.cache import Cache
from loadmaster.data.refs import Source
from loadmaster.errors import DataError


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetched entry: its path in the cache, bytes moved, the source's node, and seconds taken.

    ``via`` lists ``(node, bytes)`` per source when more than one delivered
    (a peer transfer resumed from another holder).
    """

    path: str
    bytes_moved: int
    source: str
    seconds: float
    via: tuple[tuple[str, int], ...] = ()


class Fetcher(abc.ABC):
    """Gets an entry into a node's cache from one of its sources."""

    @abc.abstractmethod
    def fetch(self, digest: str, size: int, kind: str, sources: Sequence[Source], cache: Cache,
              name: str = "") -> Fetched:
        """Put ``digest`` (``size`` bytes, a ``"file"`` or ``"dir"``) into ``cache``; return where it is.

        Raises:
            DataError: no source could deliver bytes with that digest.
        """


class LocalFetcher(Fetcher):
    """Copies from a source on this host (the submitter's path, or another cache here)."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or socket.gethostname()

    def fetch(self, digest: str, size: int, kind: str, sources: Sequence[Source], cache: Cache,
              name: str = "") -> Fetched:
        """Copy from the first source on this host whose path exists (see the class docstring)."""
        tried: list[str] = []
        for s in sources:
            if s.host != self.host or not os.path.lexists(s.path):
                tried.append(f"{s.node}:{s.path} ({'another host' if s.host != self.host else 'missing'})")
                continue
            t0 = time.monotonic()
            try:
                put = cache.put_path(s.path, digest=digest, name=name)
            except DataError as exc:
                tried.append(f"{s.node}:{s.path} ({exc})")
                continue
            return Fetched(put.path, put.copied, "cache" if put.hit else s.node, time.monotonic() - t0)
        raise DataError(
            f"no source of {name or digest[:16]} could be read on {self.host}: {'; '.join(tried) or 'none given'}; "
            "a node on another host without a shared file system gets files through peer transfers "
            "(the Dask backend's nodes serve them), or keep it on a path every node sees")
