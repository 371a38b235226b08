"""Fast reads of /proc for the zygote's sampler: a process tree and its memory marks.

Runs in the zygote (single-threaded). Every function tolerates a process that
vanishes between two reads (it simply contributes nothing).
"""

from __future__ import annotations

import os
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


def reset_hwm() -> bool:
    """Reset this process's peak-RSS high-water mark to its current RSS.

    Returns False when the kernel refuses (then VmHWM includes the past).
    """
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, b"5")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


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
