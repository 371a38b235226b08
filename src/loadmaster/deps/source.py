"""Where a node gets a wheel set by its key: the seam the data layer plugs into.

A node asks a :class:`WheelSource` for the wheel set of a key and gets a
local path to the tar. :class:`LocalSource` serves a directory on the same
machine (or a shared file system): the submitter's cache. A peer-to-peer
source of the data layer (``loadmaster.data``) implements the same method.

Does not cover: building (``deps/build.py``), packing (``deps/pack.py``).
"""

from __future__ import annotations

import os
import re
from typing import Protocol

from loadmaster.errors import DependencyError

_KEY = re.compile(r"[0-9a-f]{8,64}")


def check_key(key: str) -> str:
    """Return ``key`` if it looks like an environment key (hex), else raise ``DependencyError``."""
    if not _KEY.fullmatch(key):
        raise DependencyError(f"{key!r} is not an environment key (hex digits); a loadmaster bug, please report it")
    return key


class WheelSource(Protocol):
    """Gives a node the wheel set of an environment key."""

    def fetch(self, key: str) -> str:
        """Return a local path to the wheel set ``KEY.tar`` (fetching it if needed).

        Raises:
            DependencyError: no such set there.
        """
        ...


class LocalSource:
    """Wheel sets in a directory on this machine (``DIR/KEY.tar``); counts what it served."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.served: dict[str, int] = {}

    def fetch(self, key: str) -> str:
        """The path of ``DIR/KEY.tar`` (see :class:`WheelSource`)."""
        path = os.path.join(self.directory, f"{check_key(key)}.tar")
        if not os.path.isfile(path):
            raise DependencyError(
                f"the wheel set {key} is not in {self.directory}; pack it on the submitting side first "
                "(loadmaster.deps.pack) or point the node at the directory that holds it")
        self.served[key] = self.served.get(key, 0) + 1
        return path

    def __repr__(self) -> str:
        return f"LocalSource({self.directory!r})"
