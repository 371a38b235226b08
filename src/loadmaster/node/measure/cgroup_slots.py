"""A pool of reusable memory cgroups, one per running task, owned by one zygote.

Runs in the zygote (single-threaded); the forked task process joins its slot by
writing ``0`` to the inherited ``cgroup.procs`` fd (~10 µs), before any user code.

Per task, the zygote resets the slot's peak (``memory.max_usage_in_bytes``, v1),
notes the usage left from earlier tasks (page cache) as the baseline, and sets
the limit to the task's allocation above that baseline. After the task's tree
has ended, peak added = max usage − baseline, and the ``oom_kill`` counter of
``memory.oom_control`` says whether the kernel killed something for the limit.

Creating and removing a cgroup per task costs ~0.5–0.8 ms here; reusing one
costs ~10 µs, hence the pool. Slots are named ``loadmaster-<zygote pid>-<n>``
under this process's own memory cgroup; slots left by a zygote that died are
removed at start-up.

Does not cover: cgroup v2 (no memory controller on these machines; the v2
files differ: ``memory.peak``, ``memory.max``), CPU or I/O control.
"""

from __future__ import annotations

import os
import sys

from loadmaster.node.measure import procfs

UNLIMITED = b"-1"
SMALL_BASE = 1 << 20     # usage left by earlier tasks below which nothing is worth subtracting
RETIRE_BASE = 64 << 20   # a slot holding more (page cache of earlier tasks) is replaced by a fresh one
_PREFIX = "loadmaster-"  # loadmaster-<zygote pid>-<n>


def own_memory_dir() -> str | None:
    """Return this process's v1 memory cgroup directory if it has the v1 files, else ``None``.

    Called by the client, which passes the answer to its zygotes (they share its
    cgroup), so that the zygote need not import ``cgroupfs``.
    """
    from loadmaster.node.measure import cgroupfs

    d = cgroupfs.own_dir("memory")
    if d is None or not os.path.isfile(os.path.join(d, "memory.max_usage_in_bytes")):
        return None
    return d


def _warn(text: str) -> None:
    # The zygote does not import logging (its at-fork hooks and size cost every fork).
    sys.stderr.write(f"loadmaster zygote: {text}\n")


def _read_int(fd: int) -> int:
    return int(os.pread(fd, 64, 0))


def _field(data: bytes, name: bytes) -> int:
    """The value of line ``name N`` of a ``memory.stat`` text (0 if absent)."""
    key = name + b" "
    if data.startswith(key):
        i = 0
    else:
        i = data.find(b"\n" + key) + 1
        if i == 0:
            return 0
    j = i + len(key)
    end = data.find(b"\n", j)
    return int(data[j : end if end >= 0 else None])


def _stat(fd: int, name: bytes) -> int:
    return _field(os.pread(fd, 2048, 0), name)


class MemorySlot:
    """One reusable memory cgroup and its open control files."""

    __slots__ = ("base", "fd_limit", "fd_max", "fd_oom", "fd_procs", "fd_stat", "fd_usage", "limit", "oom_before",
                 "path", "procs_path", "shmem_base")

    def __init__(self, path: str) -> None:
        self.path = path
        self.procs_path = os.path.join(path, "cgroup.procs")
        self.fd_procs = os.open(self.procs_path, os.O_WRONLY | os.O_CLOEXEC)
        self.fd_max = os.open(os.path.join(path, "memory.max_usage_in_bytes"), os.O_RDWR | os.O_CLOEXEC)
        self.fd_usage = os.open(os.path.join(path, "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC)
        self.fd_limit = os.open(os.path.join(path, "memory.limit_in_bytes"), os.O_WRONLY | os.O_CLOEXEC)
        self.fd_oom = os.open(os.path.join(path, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        self.fd_stat = os.open(os.path.join(path, "memory.stat"), os.O_RDONLY | os.O_CLOEXEC)
        self.base = 0
        self.shmem_base = 0
        self.limit: int | None = None
        self.oom_before = self.oom_kills()  # the count left by earlier tasks (see new_oom_kills)

    def prepare(self, limit: int | None) -> None:
        """Reset the peak and set the limit for the next task (the slot must be empty)."""
        os.write(self.fd_max, b"0")
        self.base = _read_int(self.fd_usage)
        # Shared memory (tmpfs files) earlier tasks left here stays charged and is
        # not this task's: noted only when something is left (one more read).
        self.shmem_base = _stat(self.fd_stat, b"shmem") if self.base > SMALL_BASE else 0
        want = None if limit is None else limit + self.base
        if want != self.limit:
            try:
                os.write(self.fd_limit, UNLIMITED if want is None else str(want).encode())
                self.limit = want
            except OSError as exc:  # EBUSY: usage above the new limit could not be reclaimed
                os.write(self.fd_limit, UNLIMITED)
                self.limit = None
                _warn(f"could not set memory limit {want} on {self.path}: {exc}")

    def peak(self) -> int:
        """Return the bytes charged to the slot at their highest since :meth:`prepare`, above
        the baseline: everything, the page cache of the files the task read and wrote included."""
        return max(0, _read_int(self.fd_max) - self.base)

    def own_now(self) -> int:
        """Return the task's own memory charged to the slot now: anonymous, plus shared memory
        (tmpfs, ``shm``) or mapped files, whichever is more (they overlap), without page cache.

        A lower bound of the tree's resident memory at this instant (``memory.stat``:
        ``rss``, ``shmem``, ``mapped_file``); a sample, not a high-water mark.
        """
        data = os.pread(self.fd_stat, 2048, 0)
        shmem = max(0, _field(data, b"shmem") - self.shmem_base)
        return _field(data, b"rss") + max(shmem, _field(data, b"mapped_file"))

    def oom_kills(self) -> int:
        """Return the kernel's count of OOM kills in this slot."""
        data = os.pread(self.fd_oom, 256, 0)
        i = data.find(b"oom_kill ")
        return int(data[i + 9 :].split()[0]) if i >= 0 else 0

    def new_oom_kills(self) -> bool:
        """Whether the kernel OOM-killed a process in this slot since the last call (or creation).

        Read once per task, after its tree has ended: the count only moves while
        processes run in the slot, so the next task's "before" is this reading.
        """
        now = self.oom_kills()
        killed, self.oom_before = now > self.oom_before, now
        return killed

    def procs(self) -> list[int]:
        """Return the pids in this slot.

        Opened afresh each time: cgroup v1 keeps the pid list of an open
        ``cgroup.procs`` for about a second, so a kept fd reads stale lists.
        """
        try:
            fd = os.open(self.procs_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return []
        try:
            data = os.read(fd, 1 << 16)
            if len(data) == 1 << 16:  # more pids than one read holds: rare, read the rest
                while chunk := os.read(fd, 1 << 16):
                    data += chunk
        except OSError:
            return []
        finally:
            os.close(fd)
        return [int(x) for x in data.split()]

    def close(self) -> None:
        """Close the control files and remove the cgroup (it must be empty)."""
        for fd in (self.fd_procs, self.fd_max, self.fd_usage, self.fd_limit, self.fd_oom, self.fd_stat):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.rmdir(self.path)
        except OSError as exc:
            _warn(f"could not remove cgroup {self.path}: {exc}")


class SlotPool:
    """Memory cgroups for one zygote, created on demand and reused."""

    def __init__(self, parent: str, owner_pid: int) -> None:
        self.parent = parent
        self.owner_pid = owner_pid
        self.free: list[MemorySlot] = []
        self.all: list[MemorySlot] = []
        self.serial = 0
        self._remove_stale()

    @classmethod
    def create(cls, parent: str | None) -> SlotPool | None:
        """Return a pool under ``parent`` (this process's memory cgroup) if cgroups can be made there."""
        if parent is None or not os.access(parent, os.W_OK):
            return None
        pool = cls(parent, os.getpid())
        try:
            pool.release(pool.acquire(None))
        except OSError:
            pool.close()
            return None
        return pool

    def _remove_stale(self) -> None:
        procfs.remove_if_owner_dead(self.parent, _PREFIX, os.rmdir, numbered=True)

    def acquire(self, limit: int | None) -> MemorySlot:
        """Return an empty slot prepared for a task with ``limit`` bytes (``None``: no limit)."""
        if self.free:
            slot = self.free.pop()
        else:
            slot = self._new()
        slot.prepare(limit)
        if slot.base > RETIRE_BASE:
            # Page cache of earlier tasks: the kernel may reclaim it while this task runs,
            # which would hide as much of this task's charge (peak = max usage - base).
            # A fresh cgroup starts at 0; rmdir leaves the cache to the kernel.
            self.all.remove(slot)
            slot.close()
            slot = self._new()
            slot.prepare(limit)
        return slot

    def _new(self) -> MemorySlot:
        self.serial += 1
        path = os.path.join(self.parent, f"{_PREFIX}{self.owner_pid}-{self.serial}")
        os.mkdir(path)
        slot = MemorySlot(path)
        self.all.append(slot)
        return slot

    def release(self, slot: MemorySlot) -> None:
        """Give back a slot whose processes have all ended."""
        self.free.append(slot)

    def close(self) -> None:
        """Remove every slot."""
        for slot in self.all:
            slot.close()
        self.all.clear()
        self.free.clear()
