"""A node's environments kept under a disk budget, least recently used first out (runs on the node).

Every process of the node that uses an environment (a node runtime whose
zygote runs in it, a build) holds a shared ``flock`` on ``ROOT/KEY.use`` for
as long as it does (:func:`hold`); the kernel drops it when the process
dies, so a crashed worker holds nothing. Eviction takes ``ROOT/.evict.lock``
(one evictor per node at a time), then, oldest use first (the ``mtime`` of
the environment's ready marker, touched at each use), tries an exclusive,
non-blocking lock on ``KEY.use``: an environment someone holds is skipped,
one nobody holds is renamed out of place (atomic: a process arriving now
waits on the lock, then finds it gone and builds it again) and removed,
until the environments' total size is within the budget.

The budget: ``ensure(..., budget=)``, else ``LOADMASTER_ENVS_BUDGET`` (a
size: ``"20GiB"``), else none (nothing is evicted).

Does not cover: building (``deps/build.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator

READY = ".loadmaster-ready"
BUDGET_ENV = "LOADMASTER_ENVS_BUDGET"


def budget_from_env() -> int | None:
    """``LOADMASTER_ENVS_BUDGET`` in bytes, or ``None`` when unset.

    Raises:
        InvalidSpec: a value that is not a size.
    """
    value = os.environ.get(BUDGET_ENV, "").strip()
    if not value:
        return None
    from loadmaster.sizes import parse_size

    return parse_size(value, what=BUDGET_ENV)


def hold(root: str, key: str) -> int:
    """Mark environment ``key`` in use by this process: a shared lock, returned as its fd (close to let go).

    Blocks while an evictor is removing that environment.
    """
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, f"{key}.use"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def touch(final: str) -> None:
    """Say environment directory ``final`` was used now (its ready marker's mtime)."""
    with contextlib.suppress(OSError):
        os.utime(os.path.join(final, READY))


def tree_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (their allocated blocks where the file system says)."""
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(d, f))
                total += st.st_blocks * 512 if st.st_blocks else st.st_size
    return total


def environments(root: str) -> list[tuple[float, int, str]]:
    """The built environments under ``root``: ``(last use, bytes, key)``, oldest use first."""
    out: list[tuple[float, int, str]] = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return out
    for key in names:
        marker = os.path.join(root, key, READY)
        try:
            used = os.stat(marker).st_mtime
            with open(marker) as fh:
                size = json.load(fh).get("bytes")
        except (OSError, ValueError):
            continue
        if not isinstance(size, int) or size < 0:
            size = tree_bytes(os.path.join(root, key))
        out.append((used, size, key))
    out.sort()
    return out


@contextlib.contextmanager
def _exclusive(path: str, *, wait: bool) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def evict(root: str, budget: int) -> list[str]:
    """Remove the least recently used environments nobody holds until ``root``'s total is within ``budget``.

    Returns the keys removed (oldest use first). Environments in use (held
    by any process of the node, :func:`hold`) stay, even if the total then
    stays over the budget.
    """
    removed: list[str] = []
    with _exclusive(os.path.join(root, ".evict.lock"), wait=True):
        envs = environments(root)
        total = sum(size for _, size, _ in envs)
        for _, size, key in envs:
            if total <= budget:
                break
            with _exclusive(os.path.join(root, f"{key}.use"), wait=False) as free:
                if not free:
                    continue  # a zygote or a build of some process of this node runs in it
                final = os.path.join(root, key)
                trash = os.path.join(root, f".evicted-{key}-{os.getpid()}")
                try:
                    os.rename(final, trash)
                except OSError:
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(trash, READY))  # no longer listed as an environment
            shutil.rmtree(trash, ignore_errors=True)
            total -= size
            removed.append(key)
    return removed
