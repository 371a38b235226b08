"""Content names: a file's digest is a hash of its bytes, a directory's a hash of its children.

Runs in the client (naming declared inputs at submit) and on the node
(checking what arrives, naming outputs). BLAKE2b-256 (hashlib; ~830 MB/s here,
faster than SHA-256's ~600 MB/s), written as 64 hex digits.

A directory's digest hashes one line per child, sorted by name:
``"<kind> <size> <digest> <name>\\n"`` under a ``loadmaster-dir-1`` header, so
equal trees have equal names whatever their paths or times.

:class:`HashMemo` pays the hashing once per ``(device, inode, size, mtime, path)``:
a small SQLite table (several processes of a node share it). A file edited in
place changes its mtime, so its memo row no longer matches; a directory is
walked each time (stat of each child), its files' digests come from the memo.

Does not cover: where entries are stored (``data/cache.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import threading
from typing import Any

CHUNK = 1 << 20
DIR_HEADER = b"loadmaster-dir-1\n"


def new_hasher() -> Any:
    """A fresh hasher of the kind digests are made with."""
    return hashlib.blake2b(digest_size=32)


def hash_file(path: str) -> str:
    """The digest of the file at ``path`` (read whole)."""
    h = new_hasher()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def dir_digest(children: list[tuple[str, str, int, str]]) -> str:
    """The digest of a directory from its children ``(name, kind, size, digest)``."""
    h = new_hasher()
    h.update(DIR_HEADER)
    for name, kind, size, digest in sorted(children):
        h.update(f"{kind} {size} {digest} {name}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class HashMemo:
    """Digests already paid for, keyed by ``(device, inode, size, mtime_ns, path)``.

    Args:
        db: the SQLite file (``None``: in this process only).
    """

    def __init__(self, db: str | None = None) -> None:
        self.db = db
        self._mem: dict[tuple[int, int, int, int, str], str] = {}
        self._local = threading.local()
        self.hashed_bytes = 0  # bytes read to hash (what the memo did not spare), this process

    def _conn(self) -> sqlite3.Connection | None:
        if self.db is None:
            return None
        conn = getattr(self._local, "conn", None)
        if conn is None:
            os.makedirs(os.path.dirname(self.db), exist_ok=True)
            conn = sqlite3.connect(self.db, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS memo (key TEXT PRIMARY KEY, digest TEXT NOT NULL)")
            self._local.conn = conn
        return conn

    def file(self, path: str, st: os.stat_result | None = None) -> str:
        """The digest of the regular file ``path``, from the memo when its stat still matches."""
        st = st or os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, path)
        d = self._mem.get(key)
        if d is not None:
            return d
        conn = self._conn()
        skey = ":".join(map(str, key))
        if conn is not None:
            row = conn.execute("SELECT digest FROM memo WHERE key = ?", (skey,)).fetchone()
            if row is not None:
                self._mem[key] = row[0]
                return str(row[0])
        d = hash_file(path)
        self.hashed_bytes += st.st_size
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
            # changed while read: the digest names no stable content; hash what is there now
            return self.file(path, after)
        self._mem[key] = d
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("INSERT OR REPLACE INTO memo (key, digest) VALUES (?, ?)", (skey, d))
        return d

    def path(self, path: str) -> tuple[str, int, str]:
        """``(digest, size, kind)`` of a file or a directory tree (symlinks followed).

        Raises:
            OSError: missing, unreadable, or neither a file nor a directory.
        """
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return self.file(path, st), st.st_size, "file"
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"{path!r} is neither a regular file nor a directory")
        children: list[tuple[str, str, int, str]] = []
        total = 0
        with os.scandir(path) as it:
            entries = list(it)
        for e in entries:
            d, size, kind = self.path(e.path)
            children.append((e.name, kind, size, d))
            total += size
        return dir_digest(children), total, "dir"

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
