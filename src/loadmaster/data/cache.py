"""A node's content-addressed cache: entries named by digest, LRU under a disk budget.

Runs on the node: owned by the node runtime (``data/stage.py``), shared by every
process of the node that opens the same root (each Dask worker's runtime, the
``loadmaster cache`` command). Nothing here trusts a task: entries are checked
against their digest before they become visible.

Layout under ``root``::

    objects/ab/<digest>     ready entries (a file 0444, or a tree: files 0444, dirs 0555)
    partial/<digest>        an entry arriving (readable while it grows), and
    partial/<digest>.json   its final size and kind
    tmp/                    entries being built under a temporary name (outputs, trees)
    locks/<digest>.w        held (flock, exclusive) by the one writer of a digest
    locks/<digest>.use      held shared by every user of a ready entry (a "pin");
                            eviction takes it exclusive, without waiting
    locks/index             held while the budget is checked and space reserved
    index.sqlite            size, state, last use, names seen; the hash memo (``memo`` table)

Truth is the file system: an entry is ready exactly when ``objects/../<digest>``
exists, and it only ever appears there by ``rename`` of a complete, checked
copy, so a reader never sees a torn entry, whoever was killed when. The index
follows (a ready object with no row gets one on its next lookup).

The write API (the local copy uses it now; a peer transfer service is meant to
write through it the same way)::

    w = cache.begin(digest, size)    # a Writer, or None when the entry is ready already;
                                     # blocks while another process writes that digest
    w.path                           # partial/<digest>: others may read it while it grows
    w.received                       # bytes written so far
    w.write(chunk)                   # appends, hashing as it goes
    path = w.commit()                # checks size and digest, renames into objects/, indexes;
                                     # DataError (and nothing visible) on a mismatch
    w.abort()                        # drops the partial entry

    view = cache.partial(digest)     # a PartialView of an entry arriving, or None
    view.size, view.path             # its final size; the file to read from
    view.received()                  # bytes there now (read only up to this)
    view.ready()                     # the ready path once committed, else None

A writer killed mid-write leaves a partial entry whose writer lock is free: the
next ``begin`` (or a sweep when the cache is opened) discards it and starts
afresh. Only regular files arrive through ``begin``; a directory is built
under ``tmp/`` and renamed whole (:meth:`Cache.put_path`).

Does not cover: naming content (``data/digest.py``), what a task gets from the
cache (``data/stage.py``), moving bytes between nodes (``data/fetch.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loadmaster.data.digest import CHUNK, HashMemo, dir_digest, new_hasher
from loadmaster.errors import DataError

DEFAULT_BUDGET = 16 << 30  # bytes, when neither the caller nor the disk's size says otherwise


def default_root() -> str:
    """``$LOADMASTER_CACHE``, else ``/var/tmp/loadmaster-<uid>/cache`` (disk-backed, node-local)."""
    return os.environ.get("LOADMASTER_CACHE") or os.path.join("/var/tmp", f"loadmaster-{os.getuid()}", "cache")


@dataclass(frozen=True, slots=True)
class Entry:
    """One cache entry as ``loadmaster cache`` lists it."""

    digest: str
    size: int
    kind: str
    state: str  # "ready" or "creating"
    last_use: float
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Put:
    """What :meth:`Cache.put_path` did: the entry's path, name and size, and bytes it copied."""

    path: str
    digest: str
    size: int
    kind: str
    copied: int
    hit: bool


def _private_dir(path: str, *, check_only: bool = False) -> None:
    """Make ``path`` (mode 0700) unless it exists; refuse it if someone else could change what is in it.

    The default root ``/var/tmp/loadmaster-<uid>`` is a name anyone can guess
    and create first in a directory everyone may write: another user's
    directory there would let them swap the entries tasks read. Its parent
    (``check_only``) may be root's or ours, and written by others only if
    sticky (``/var/tmp`` itself).

    Raises:
        DataError: the directory (or its parent) is another user's, or others may write it.
    """
    if not check_only:
        with contextlib.suppress(FileExistsError):
            if not os.path.isdir(os.path.dirname(path)):
                _private_dir(os.path.dirname(path))
            os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if check_only:
            return
        raise
    ours = st.st_uid in (os.geteuid(), 0) if check_only else st.st_uid == os.geteuid()
    open_to_others = st.st_mode & 0o002 and not (check_only and st.st_mode & stat.S_ISVTX)
    if not stat.S_ISDIR(st.st_mode) or not ours or open_to_others:
        raise DataError(f"the cache directory {path} is not this user's alone (owner uid {st.st_uid}, mode "
                        f"{stat.filemode(st.st_mode)}): another user could change the files tasks read; remove it "
                        "or set LOADMASTER_CACHE to a directory only you can write")


def _lock(path: str, mode: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_lock(path: str, mode: int) -> int | None:
    try:
        return _lock(path, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return None


def _readonly_tree(path: str) -> None:
    for dirpath, _dirs, files in os.walk(path, topdown=False):
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o444)
        os.chmod(dirpath, 0o555)


def _writable_tree(path: str) -> None:
    for dirpath, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o755)


def remove_tree(path: str) -> None:
    """Remove a file or a (read-only) tree; missing is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        _writable_tree(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class Pin:
    """A shared lock on a ready entry: it is not evicted while held (any process). Release with :meth:`close`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        """Release (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Writer:
    """The one writer of an arriving entry (see the module docstring for the API)."""

    def __init__(self, cache: Cache, digest: str, size: int, lock_fd: int) -> None:
        self.cache, self.digest, self.size = cache, digest, size
        self.path = os.path.join(cache.root, "partial", digest)
        self._lock_fd = lock_fd
        self._hasher = new_hasher()
        self.received = 0
        with open(self.path + ".json.tmp", "w") as fh:
            json.dump({"digest": digest, "size": size, "kind": "file", "pid": os.getpid()}, fh)
        os.replace(self.path + ".json.tmp", self.path + ".json")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (hashing it)."""
        if self.received + len(data) > self.size:
            raise DataError(f"cache entry {self.digest[:16]}: more than the announced {self.size} bytes arrived; "
                            "the source is not what was named")
        self._hasher.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        self.received += len(data)

    def commit(self) -> str:
        """Check and publish; return the ready entry's path.

        Raises:
            DataError: the bytes are not the digest's (the partial entry is dropped).
        """
        got = self._hasher.hexdigest()
        if self.received != self.size or got != self.digest:
            self.abort()
            raise DataError(
                f"cache entry {self.digest[:16]}: {self.received} of {self.size} bytes arrived with digest "
                f"{got[:16]}; the source changed or is corrupt (nothing was cached; give the file "
                "unchanged, or submit again)")
        os.fchmod(self._fd, 0o444)
        os.close(self._fd)
        self._fd = -1
        final = self.cache.object_path(self.digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(self.path, final)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path + ".json")
        self.cache._ready(self.digest, self.size, "file")
        self._release()
        return final

    def abort(self) -> None:
        """Drop the partial entry and its reservation (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            for p in (self.path, self.path + ".json"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            self.cache._forget_creating(self.digest)
            self._release()

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


@dataclass(frozen=True, slots=True)
class PartialView:
    """A reader's view of an entry arriving (see the module docstring)."""

    cache: Cache
    digest: str
    size: int
    path: str

    def received(self) -> int:
        """Bytes there now (0 once it was renamed away: then see :meth:`ready`)."""
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return self.size if self.ready() else 0

    def ready(self) -> str | None:
        """The ready entry's path once committed."""
        p = self.cache.object_path(self.digest)
        return p if os.path.lexists(p) else None


class Cache:
    """The content-addressed cache under ``root`` (see the module docstring).

    Args:
        root: its directory (created).
        budget: bytes its entries may hold in all (ready and arriving);
            recorded in the index for ``loadmaster cache`` (``None``: the
            recorded one, else :data:`DEFAULT_BUDGET`).

    Raises:
        OSError: ``root`` cannot be made.
    """

    def __init__(self, root: str, budget: int | None = None) -> None:
        self.root = os.path.abspath(root)
        _private_dir(os.path.dirname(self.root), check_only=True)
        _private_dir(self.root)
        for sub in ("objects", "partial", "tmp", "locks"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self.memo = HashMemo(os.path.join(self.root, "index.sqlite"))
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(os.path.join(self.root, "index.sqlite"), timeout=60,
                                   isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS entries (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,"
            " kind TEXT NOT NULL, state TEXT NOT NULL, last_use REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS names (digest TEXT NOT NULL, name TEXT NOT NULL,"
            " seen REAL NOT NULL, PRIMARY KEY (digest, name));"
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);")
        if budget is None:
            rows = self._sql("SELECT value FROM meta WHERE key = 'budget'")
            budget = int(rows[0][0]) if rows else DEFAULT_BUDGET
        else:
            self._sql("INSERT OR REPLACE INTO meta (key, value) VALUES ('budget', ?)", (budget,))
        self.budget: int = budget
        self.sweep()

    # ── paths and locks ───────────────────────────────────────────────────────
    def object_path(self, digest: str) -> str:
        """Where the ready entry ``digest`` is (whether or not it is there)."""
        return os.path.join(self.root, "objects", digest[:2], digest)

    def _lock_path(self, digest: str, what: str) -> str:
        return os.path.join(self.root, "locks", f"{digest}.{what}")

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        fd = _lock(os.path.join(self.root, "locks", "index"), fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(fd)

    def _sql(self, q: str, args: tuple[object, ...] = ()) -> list[Any]:
        with self._db_lock:
            return self._db.execute(q, args).fetchall()

    # ── reading ───────────────────────────────────────────────────────────────
    def pin(self, digest: str) -> Pin:
        """Keep ``digest`` from eviction (pin first, then :meth:`lookup`: no window between)."""
        return Pin(_lock(self._lock_path(digest, "use"), fcntl.LOCK_SH))

    def lookup(self, digest: str) -> str | None:
        """The ready entry's path, or ``None``."""
        p = self.object_path(digest)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        rows = self._sql("SELECT state FROM entries WHERE digest = ?", (digest,))
        if not rows or rows[0][0] != "ready":  # published by a writer killed before it indexed
            size = st.st_size if stat.S_ISREG(st.st_mode) else sum(
                os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)
            self._ready(digest, size, "file" if stat.S_ISREG(st.st_mode) else "dir")
        return p

    def touch(self, digest: str, name: str | None = None) -> None:
        """Note a use now (LRU), and a name it was seen under."""
        now = time.time()
        with self._db_lock:
            self._db.execute("UPDATE entries SET last_use = ? WHERE digest = ?", (now, digest))
            if name:
                self._db.execute("INSERT OR REPLACE INTO names (digest, name, seen) VALUES (?, ?, ?)",
                                 (digest, name, now))

    def partial(self, digest: str) -> PartialView | None:
        """A view of ``digest`` while it arrives (``None`` when nothing is arriving)."""
        path = os.path.join(self.root, "partial", digest)
        try:
            with open(path + ".json") as fh:
                meta = json.load(fh)
        except (FileNotFoundError, ValueError):
            return None
        return PartialView(self, digest, int(meta["size"]), path)

    def entries(self) -> list[Entry]:
        """Every entry, least recently used first."""
        rows = self._sql("SELECT digest, size, kind, state, last_use FROM entries ORDER BY last_use")
        names: dict[str, list[str]] = {}
        for d, n in self._sql("SELECT digest, name FROM names ORDER BY seen DESC"):
            names.setdefault(str(d), []).append(str(n))
        return [Entry(str(d), int(s), str(k), str(st), float(u), tuple(names.get(str(d), ())))
                for d, s, k, st, u in rows]

    def used(self) -> int:
        """Bytes held or reserved by entries."""
        rows = self._sql("SELECT COALESCE(SUM(size), 0) FROM entries")
        return int(rows[0][0])

    # ── writing ───────────────────────────────────────────────────────────────
    def begin(self, digest: str, size: int) -> Writer | None:
        """Start writing file entry ``digest`` of ``size`` bytes (``None``: it is ready already).

        Blocks while another process writes the same digest, then returns
        ``None`` if that one committed. Space is reserved now (evicting the
        least recently used unpinned entries).

        Raises:
            DataError: the budget cannot hold it.
        """
        lock_fd = _lock(self._lock_path(digest, "w"), fcntl.LOCK_EX)
        try:
            if self.lookup(digest) is not None:
                os.close(lock_fd)
                return None
            self._reserve(digest, size, "file")
            return Writer(self, digest, size, lock_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(lock_fd)
            raise

    def put_path(self, src: str, *, digest: str | None = None, name: str | None = None,
                 move: bool = False) -> Put:
        """Put the file or tree at ``src`` in the cache; return the entry.

        With ``digest`` known (an input), a ready entry is a hit (nothing read)
        and the copy is checked against it. With ``move``, ``src`` (on the
        cache's file system) is renamed in rather than copied (an output).

        Raises:
            DataError: the content is not ``digest``, or the budget cannot hold it.
            OSError: ``src`` cannot be read.
        """
        if digest is not None:
            pin = self.pin(digest)
            try:
                p = self.lookup(digest)
                if p is not None:
                    self.touch(digest, name)
                    return Put(p, digest, self._size(digest), "dir" if os.path.isdir(p) else "file", 0, True)
            finally:
                pin.close()
        if os.path.isdir(src):
            return self._put_tree(src, digest, name, move)
        if digest is not None:
            return self._put_known_file(src, digest, name)
        return self._put_unknown_file(src, name, move)

    def _size(self, digest: str) -> int:
        rows = self._sql("SELECT size FROM entries WHERE digest = ?", (digest,))
        return int(rows[0][0]) if rows else 0

    def _put_known_file(self, src: str, digest: str, name: str | None) -> Put:
        size = os.stat(src).st_size
        w = self.begin(digest, size)
        if w is None:
            self.touch(digest, name)
            return Put(self.object_path(digest), digest, size, "file", 0, True)
        try:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            with open(src, "rb", buffering=0) as fh:
                while True:
                    n = fh.readinto(buf)
                    if not n:
                        break
                    w.write(view[:n])
            path = w.commit()
        except BaseException:
            w.abort()
            raise
        self.touch(digest, name)
        return Put(path, digest, size, "file", size, False)

    def _tmp(self, suffix: str) -> tuple[str, int]:
        base = os.path.join(self.root, "tmp", f"{uuid.uuid4().hex}")
        return base + suffix, _lock(base + ".lock", fcntl.LOCK_EX)

    def _put_unknown_file(self, src: str, name: str | None, move: bool) -> Put:
        tmp, lock_fd = self._tmp(".f")
        try:
            copied = 0
            if move and _renamed(src, tmp):
                digest = self.memo.file(tmp)
            else:
                digest, copied = copy_hashing(src, tmp)
            size = os.stat(tmp).st_size
            os.chmod(tmp, 0o444)
            return self._adopt(tmp, digest, size, "file", name, copied)
        finally:
            self._drop_tmp(tmp, lock_fd)

    def _put_tree(self, src: str, digest: str | None, name: str | None, move: bool) -> Put:
        tmp, lock_fd = self._tmp(".d")
        try:
            copied = 0
            if move and _renamed(src, tmp):
                got, size, _ = self.memo.path(tmp)
            else:
                got, size, copied = _copy_tree_hashing(src, tmp)
            if digest is not None and got != digest:
                raise DataError(f"directory {src!r} changed since it was submitted (digest {got[:16]}, "
                                f"submitted as {digest[:16]}); nothing was cached; submit it again unchanged")
            _readonly_tree(tmp)
            return self._adopt(tmp, got, size, "dir", name, copied)
        finally:
            self._drop_tmp(tmp, lock_fd)

    def _adopt(self, tmp: str, digest: str, size: int, kind: str, name: str | None, copied: int) -> Put:
        """Publish the checked temporary ``tmp`` as ``digest`` (or drop it: already there)."""
        final = self.object_path(digest)
        lock_fd = _lock(self._lock_path(digest, "w"), fcntl.LOCK_EX)
        try:
            if self.lookup(digest) is not None:
                self.touch(digest, name)
                return Put(final, digest, size, kind, copied, True)
            self._reserve(digest, size, kind)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.rename(tmp, final)
            self._ready(digest, size, kind)
        finally:
            os.close(lock_fd)
        self.touch(digest, name)
        return Put(final, digest, size, kind, copied, False)

    def _drop_tmp(self, tmp: str, lock_fd: int) -> None:
        if os.path.lexists(tmp):
            remove_tree(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp[:-2] + ".lock")
        os.close(lock_fd)

    # ── the index and the budget ──────────────────────────────────────────────
    def _reserve(self, digest: str, size: int, kind: str) -> None:
        with self._index_lock():
            self.evict(size)
            with self._db_lock:
                self._db.execute("INSERT OR REPLACE INTO entries (digest, size, kind, state, last_use)"
                                 " VALUES (?, ?, ?, 'creating', ?)", (digest, size, kind, time.time()))

    def _ready(self, digest: str, size: int, kind: str) -> None:
        with self._db_lock:
            self._db.execute("INSERT OR REPLACE INTO entries (digest, size, kind, state, last_use)"
                             " VALUES (?, ?, ?, 'ready', ?)", (digest, size, kind, time.time()))

    def _forget_creating(self, digest: str) -> None:
        with self._db_lock:
            self._db.execute("DELETE FROM entries WHERE digest = ? AND state = 'creating'", (digest,))

    def evict(self, need: int) -> int:
        """Evict least recently used, unpinned, ready entries until ``need`` more bytes fit; return bytes freed.

        Raises:
            DataError: pinned or arriving entries leave no room for ``need``.
        """
        used = self.used()
        freed = 0
        if used + need <= self.budget:
            return 0
        for digest, size in self._sql("SELECT digest, size FROM entries WHERE state = 'ready' ORDER BY last_use"):
            if used - freed + need <= self.budget:
                break
            d = str(digest)
            fd = _try_lock(self._lock_path(d, "use"), fcntl.LOCK_EX)
            if fd is None:
                continue  # in use by a task
            try:
                self._remove(d, "evicted")
            finally:
                os.close(fd)
            freed += int(size)
        if used - freed + need > self.budget:
            raise DataError(
                f"the cache at {self.root} cannot hold {need} more bytes: its budget is {self.budget} bytes and "
                f"{used - freed} are held by entries in use or arriving; raise the cache budget "
                "(Executor(cache_budget=...)) or run fewer tasks with large inputs at once")
        return freed

    def _remove(self, digest: str, why: str) -> None:
        """Take ``digest`` out of the index and off the disk (renamed aside first: no reader sees it go half)."""
        gone = os.path.join(self.root, "tmp", f"{why}-{digest}-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.object_path(digest), gone)
        with self._db_lock:
            self._db.execute("DELETE FROM entries WHERE digest = ?", (digest,))
            self._db.execute("DELETE FROM names WHERE digest = ?", (digest,))
        remove_tree(gone)

    def discard(self, digest: str) -> None:
        """Drop the ready entry ``digest``, pinned or not: its bytes were found not to be its digest.

        Whoever pinned it keeps what it opened; the next :meth:`lookup` misses,
        so the entry is fetched again.
        """
        self._remove(digest, "discarded")

    def sweep(self) -> None:
        """Remove what dead writers left: temporaries and partial entries whose lock is free."""
        tmpdir = os.path.join(self.root, "tmp")
        for n in os.listdir(tmpdir):
            p = os.path.join(tmpdir, n)
            if n.startswith(("evicted-", "discarded-")):
                remove_tree(p)
            elif n.endswith(".lock"):
                fd = _try_lock(p, fcntl.LOCK_EX)
                if fd is not None:
                    base = p[:-5]
                    for ext in (".f", ".d"):
                        if os.path.lexists(base + ext):
                            remove_tree(base + ext)
                    os.unlink(p)
                    os.close(fd)
        pdir = os.path.join(self.root, "partial")
        for n in os.listdir(pdir):
            if n.endswith(".json") or n.endswith(".tmp"):
                continue
            fd = _try_lock(self._lock_path(n, "w"), fcntl.LOCK_EX)
            if fd is None:
                continue  # a live writer
            try:
                for p in (os.path.join(pdir, n), os.path.join(pdir, n + ".json")):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
                self._forget_creating(n)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Close the index (entries stay)."""
        with self._db_lock:
            self._db.close()
        self.memo.close()


def copy_hashing(src: str, dst: str) -> tuple[str, int]:
    """Copy file ``src`` to new file ``dst``, hashing on the way; return ``(digest, bytes)``."""
    h = new_hasher()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    n_all = 0
    with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            chunk = view[:n]
            while chunk:
                chunk = chunk[fout.write(chunk) or 0:]
            n_all += n
    return h.hexdigest(), n_all


def _copy_tree_hashing(src: str, dst: str) -> tuple[str, int, int]:
    """Copy tree ``src`` to new ``dst``; return ``(digest, size, bytes copied)``."""
    os.mkdir(dst, 0o755)
    children: list[tuple[str, str, int, str]] = []
    total = 0
    with os.scandir(src) as it:
        entries = list(it)
    for e in entries:
        target = os.path.join(dst, e.name)
        if e.is_dir():
            d, size, _ = _copy_tree_hashing(e.path, target)
            children.append((e.name, "dir", size, d))
        elif e.is_file():
            d, size = copy_hashing(e.path, target)
            children.append((e.name, "file", size, d))
        else:
            raise DataError(f"{e.path!r} is neither a regular file nor a directory; declared trees hold only those")
        total += size
    return dir_digest(children), total, total


def _renamed(src: str, dst: str) -> bool:
    """Move ``src`` to ``dst`` by a rename; ``False`` (nothing moved) where that is refused (another file system)."""
    try:
        os.rename(src, dst)
    except OSError:
        return False
    return True
