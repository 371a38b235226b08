"""Fast reads of /proc for the zygote's sampler: a process tree and its memory marks.

Runs in the zygote (single-threaded). Every function tolerates a process that
vanishes between two reads (it simply contributes nothing).
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable

PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        return os.read(fd, 8192)
    except OSError:
        return b""
    finally:
        os.close(fd)


def tree(root: int) -> list[int]:
    """Return ``root`` and its live descendants (through the main threads' children lists)."""
    out = [root]
    i = 0
    while i < len(out):
        pid = out[i]
        data = _read(f"/proc/{pid}/task/{pid}/children")
        if data:
            out.extend(int(x) for x in data.split())
        i += 1
    return out


def memory_marks(pid: int) -> tuple[int, int]:
    """Return ``(VmHWM, VmRSS)`` of ``pid`` in bytes, or ``(0, 0)`` if gone or a zombie."""
    data = _read(f"/proc/{pid}/status")
    hwm = rss = 0
    i = data.find(b"VmHWM:")
    if i >= 0:
        hwm = int(data[i + 6 : data.index(b"kB", i)]) * 1024
    i = data.find(b"VmRSS:")
    if i >= 0:
        rss = int(data[i + 6 : data.index(b"kB", i)]) * 1024
    return hwm, rss


def write_bytes(pid: int) -> int:
    """Return bytes ``pid`` caused to be written to storage (``/proc/PID/io``), or 0."""
    data = _read(f"/proc/{pid}/io")
    i = data.find(b"write_bytes:")
    if i < 0:
        return 0
    j = data.find(b"\n", i)
    return int(data[i + 12 : j if j >= 0 else None])


def self_rss() -> int:
    """Return this process's resident bytes (from ``statm``)."""
    data = _read("/proc/self/statm")
    return int(data.split()[1]) * PAGE if data else 0


def self_hwm() -> int:
    """Return this process's peak-RSS high-water mark in bytes (one system call).

    ``getrusage``'s ``ru_maxrss`` is the larger of the kernel's mark and the
    resident size now. For a forked process that has not exec'd (a task
    process), ``fork`` starts the mark at the child's resident size at the
    fork (``dup_mm``), not at the parent's past peak, so the mark a task
    process reads first is its resident size then (the figure of ``VmHWM``,
    without reading ``/proc/self/status``; checked in tests/test_zygote.py).
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_SHMEM_FS = {0x01021994, 0x858458F6}  # TMPFS_MAGIC, RAMFS_MAGIC
_OVERLAY_FS = 0x794C7630
_in_memory: dict[str, bool] = {}


def _fs_type(path: str) -> int:
    import ctypes  # the zygote has it loaded already (libc fork)

    buf = ctypes.create_string_buffer(128)  # struct statfs; f_type is its first long
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return 0
    return int.from_bytes(buf.raw[:8], sys.byteorder)


def _overlay_upper(path: str) -> str | None:
    """The upper directory of the overlay mount holding ``path`` (from mountinfo), if any."""
    best, upper = "", None
    for line in _read_all("/proc/self/mountinfo").decode(errors="replace").splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] != "overlay":
            continue
        mp = fields[4]
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            opts = dict(o.partition("=")[::2] for o in tail[2].split(","))
            best, upper = mp, opts.get("upperdir")
    return upper


def in_memory(directory: str) -> bool:
    """Whether files written in ``directory`` live in memory (tmpfs or ramfs, directly or as
    an overlay's upper layer): they are charged as shared memory. Cached per directory."""
    got = _in_memory.get(directory)
    if got is None:
        kind = _fs_type(directory)
        if kind == _OVERLAY_FS:
            upper = _overlay_upper(os.path.realpath(directory))
            kind = _fs_type(upper) if upper else 0
        got = _in_memory[directory] = kind in _SHMEM_FS
    return got


def allocated(path: str) -> int:
    """Bytes ``path`` occupies (its blocks), 0 if it is gone."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _read_all(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def owner_pid(name: str, prefix: str, numbered: bool) -> int | None:
    """The pid in ``<prefix><pid>`` (``<prefix><pid>-<n>`` when ``numbered``), else ``None``.

    Plain string tests, not ``re``: the zygote, which calls this, stays lean.
    """
    if not name.startswith(prefix):
        return None
    pid, dash, n = name[len(prefix):].partition("-")
    if numbered != bool(dash) or not _digits(pid) or (numbered and not _digits(n)):
        return None
    return int(pid)


def _digits(s: str) -> bool:
    return s.isascii() and s.isdigit()


def remove_if_owner_dead(parent: str, prefix: str, remove: Callable[[str], object], *, numbered: bool) -> None:
    """Remove entries of ``parent`` named ``<prefix><pid>`` (``-<n>`` after it when ``numbered``)
    whose owner ``pid`` is dead.

    For what a zygote that died left behind (cgroup slots, namespace slots).
    """
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = owner_pid(name, prefix, numbered)
        if pid is not None and not os.path.exists(f"/proc/{pid}"):
            try:
                remove(os.path.join(parent, name))
            except OSError:
                pass
