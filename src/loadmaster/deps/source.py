"""Where a node gets a wheel set by its key, and the digest its bytes must have.

A node asks a :class:`WheelSource` for the wheel set of a key and gets a
:class:`WheelSet`: a local path to the tar and the content digest the
submitter took when it packed it. The build (``deps/build.py``) hashes the
bytes before it unpacks anything and refuses a set that is not that digest;
it then tells the source (:meth:`WheelSource.refused`), which drops it so the
next :meth:`~WheelSource.fetch` gets it again.

* :class:`CacheSource` (what the executor's orders use): the set is one of the
  order's declared inputs (a ``data.refs.InputRef`` named ``…/KEY.tar``,
  :func:`wheel_input`), staged into the node's content-addressed cache like a
  ``File`` (peer to peer on the Dask backend); the build takes it from there.
* :class:`LocalSource`: a directory on this machine (``DIR/KEY.tar`` and the
  ``KEY.digest`` packed beside it), for a node runtime driven directly
  (``deps/nodecheck.py``, the build tests).

Does not cover: building (``deps/build.py``), packing (``deps/pack.py``),
moving bytes between nodes (``data/``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadmaster.errors import DataError, DependencyError

log = logging.getLogger(__name__)

_KEY = re.compile(r"[0-9a-f]{8,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def check_key(key: str) -> str:
    """Return ``key`` if it looks like an environment key (hex), else raise ``DependencyError``."""
    if not _KEY.fullmatch(key):
        raise DependencyError(f"{key!r} is not an environment key (hex digits); a loadmaster bug, please report it")
    return key


@dataclass
class WheelSet:
    """A wheel set on this node: its tar, and the digest its bytes must hash to."""

    path: str
    digest: str
    release: Callable[[], None] = field(default=lambda: None, repr=False)  # unpin it (built, or refused)


class WheelSource(Protocol):
    """Gives a node the wheel set of an environment key."""

    def fetch(self, key: str) -> WheelSet:
        """Return the wheel set of ``key`` here (fetching it if needed).

        Raises:
            DependencyError: no such set there.
        """
        ...

    def refused(self, key: str, ws: WheelSet) -> None:
        """``ws``'s bytes are not its digest: drop it, so that the next :meth:`fetch` gets it again."""
        ...


class LocalSource:
    """Wheel sets in a directory on this machine (``DIR/KEY.tar``, ``DIR/KEY.digest``); counts what it served."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.served: dict[str, int] = {}

    def fetch(self, key: str) -> WheelSet:
        """The set ``DIR/KEY.tar`` and the digest recorded when it was packed (see :class:`WheelSource`)."""
        path = os.path.join(self.directory, f"{check_key(key)}.tar")
        if not os.path.isfile(path):
            raise DependencyError(
                f"the wheel set {key} is not in {self.directory}; pack it on the submitting side first "
                "(loadmaster.deps.pack) or point the node at the directory that holds it")
        from loadmaster.deps.pack import read_digest

        digest = read_digest(path)
        if not digest:
            raise DependencyError(
                f"the wheel set {path} has no digest recorded for its size beside it ({key}.digest): it was "
                "changed or copied without it; pack it again (loadmaster deps --pack)")
        self.served[key] = self.served.get(key, 0) + 1
        return WheelSet(path, digest)

    def refused(self, key: str, ws: WheelSet) -> None:
        """Nothing to drop: the directory is the submitter's (the next fetch reads it again)."""

    def __repr__(self) -> str:
        return f"LocalSource({self.directory!r})"


def wheel_input(data: Any, key: str) -> Any:
    """The ``InputRef`` of environment ``key``'s wheel set among ``data``'s inputs (a ``DataOrder``), or None."""
    name = f"{key}.tar"
    for ref in data.inputs if data is not None else ():
        if ref.kind == "file" and os.path.basename(ref.key) == name:
            return ref
    return None


def without_wheels(data: Any, key: str) -> Any:
    """``data`` without environment ``key``'s wheel set (an environment built already needs it no more).

    None when nothing else was declared: the order is then staged (and its
    payload wrapped) no more than one that declared nothing.
    """
    ref = wheel_input(data, key)
    if ref is None:
        return data
    if len(data.inputs) == 1 and not data.outputs:
        return None
    return dataclasses.replace(data, inputs=tuple(r for r in data.inputs if r is not ref))


class CacheSource:
    """The wheel set as a declared input in the node's data cache (``data/cache.py``), fetched on a miss.

    Args:
        cache: the node's ``data.cache.Cache``.
        fetcher: the node's ``data.fetch.Fetcher`` (peer to peer on the Dask backend).
        ref: the set's ``InputRef`` in the order (its digest and its sources).

    :attr:`fetched` counts the sets it had to fetch (0: the order's staging put it in the cache).
    """

    def __init__(self, cache: Any, fetcher: Any, ref: Any) -> None:
        if not _DIGEST.fullmatch(ref.digest):
            raise DependencyError(f"the wheel set's digest {ref.digest!r} is not 64 hex digits; a loadmaster bug")
        self.cache, self.fetcher, self.ref = cache, fetcher, ref
        self.fetched = 0

    def fetch(self, key: str) -> WheelSet:
        """The cache entry of the set's digest, pinned until :attr:`WheelSet.release` (see :class:`WheelSource`)."""
        ref = self.ref
        pin = self.cache.pin(ref.digest)
        try:
            path = self.cache.lookup(ref.digest)
            if path is None:  # evicted since staging, or dropped as corrupt: from its sources again
                try:
                    path = self.fetcher.fetch(ref.digest, ref.size, "file", ref.sources, self.cache, ref.key).path
                except DataError as exc:
                    raise DependencyError(f"the wheel set of {key} could not be fetched: {exc}") from exc
                self.fetched += 1
        except BaseException:
            pin.close()
            raise
        return WheelSet(path, ref.digest, pin.close)

    def refused(self, key: str, ws: WheelSet) -> None:
        """Drop the entry from the node's cache: its bytes are not its name."""
        ws.release()
        log.warning("the wheel set of environment %s in the cache at %s is not its digest %s: dropped, "
                    "fetched again", key, self.cache.root, ws.digest[:16])
        self.cache.discard(ws.digest)
