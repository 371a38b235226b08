"""A pool of memory cgroups, one per running task, owned by one zygote (cgroup v1 or v2).

Runs in the zygote (single-threaded); the forked task process joins its slot by
writing ``0`` to the inherited ``cgroup.procs`` fd (~10 µs), before any user code.

cgroup v1 (:class:`MemorySlot`): per task, the zygote resets the slot's peak
(``memory.max_usage_in_bytes``), notes the usage left from earlier tasks (page
cache) as the baseline, and sets the limit to the task's allocation above that
baseline. After the task's tree has ended, charged = max usage − baseline, and
the ``oom_kill`` counter of ``memory.oom_control`` says whether the kernel
killed something for the limit. A slot left holding more than
``RETIRE_BASE`` of earlier tasks' cache is replaced by a fresh one.

cgroup v2 (:class:`V2Slot`): ``memory.peak``, ``memory.max``, ``memory.events``
(``oom_kill``), ``memory.stat``, ``cgroup.kill``. ``memory.peak`` can be reset
(per open file) only from Linux 6.12; before, it is the cgroup's all-time peak,
so each task gets a fresh cgroup (mkdir before the fork, rmdir after the
report: ~0.5–0.8 ms more per task). From 6.12 a slot is reused and its peak
reset by a write, as on v1.

What the cgroup was charged includes the page cache of every file the tree read
or wrote: it is reported as ``peak_charged`` and bounds the task's own memory
from above (see the zygote); :meth:`MemorySlot.own_now` samples the part that is
not cache.

Creating and removing a cgroup per task costs ~0.5–0.8 ms here; reusing one
costs ~10 µs, hence the pool. Slots are named ``loadmaster-<zygote pid>-<n>``
under the parent the client found (:func:`slot_parent`); slots left by a zygote
that died are removed at start-up.

Does not cover: CPU or I/O control, asking systemd for a delegated unit over
D-Bus (a delegated subtree is used when the process already sits in one: see
:func:`v2_parent`).
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
    """Return this process's v1 memory cgroup directory if it has the v1 files, else ``None``."""
    from loadmaster.node.measure import cgroupfs

    d = cgroupfs.own_dir("memory")
    if d is None or not os.path.isfile(os.path.join(d, "memory.max_usage_in_bytes")):
        return None
    return d


def _words(path: str) -> set[str]:
    try:
        with open(path) as fh:
            return set(fh.read().split())
    except OSError:
        return set()


def _may_write(d: str) -> bool:
    return os.access(d, os.W_OK | os.X_OK) and os.access(os.path.join(d, "cgroup.procs"), os.W_OK)


def _holds_processes(d: str) -> bool:
    try:
        with open(os.path.join(d, "cgroup.procs"), "rb") as fh:
            return bool(fh.read(64).strip())
    except OSError:
        return True


def _enable_memory(d: str) -> bool:
    """Hand ``memory`` (and ``pids`` if there) down from ``d``; False if the kernel refuses."""
    want = "+memory +pids" if "pids" in _words(os.path.join(d, "cgroup.controllers")) else "+memory"
    try:
        with open(os.path.join(d, "cgroup.subtree_control"), "w") as fh:
            fh.write(want)
    except OSError:
        return False
    return True


def v2_parent(*, proc_root: str = "/proc", cgroup_root: str | None = None) -> str | None:
    """Return a cgroup v2 directory where this process may create memory cgroups for its tasks.

    This process's own cgroup, when it is the root of the hierarchy (root in a
    VM or a container): ``+memory +pids`` are enabled for its children. Else
    the ancestors of this process's cgroup, nearest first, as far up as this
    user may write (``cgroup.procs`` too: moving a task between two cgroups
    needs write access to their common ancestor), that is, within the subtree
    delegated to it (systemd's ``user@UID.service``, a batch system's job
    cgroup when writable, ``vm-run.sh --user``'s ``lm-user``):

    * the nearest that hands the memory controller down (``memory`` in its
      ``cgroup.subtree_control``): the slots are siblings of this process's
      cgroup or of one of its ancestors;
    * failing that, the nearest that has ``memory`` in ``cgroup.controllers``
      and holds no processes itself, after enabling ``+memory +pids`` for its
      children (a cgroup holding processes cannot hand controllers down: "no
      internal processes").

    This process's own non-root cgroup is never used, and no process is moved
    behind the caller's back. ``None`` when nothing serves (no v2 memory
    controller, no delegation). ``proc_root`` and ``cgroup_root`` point at a
    prepared tree in tests (see :mod:`cgroupfs`).
    """
    from loadmaster.node.measure import cgroupfs

    root = cgroupfs.DEFAULT_CGROUP_ROOT if cgroup_root is None else cgroup_root
    found = cgroupfs.unified_dir(proc_root=proc_root, cgroup_root=root)
    if found is None:
        return None
    own, mount = os.path.normpath(found[0]), os.path.normpath(found[1])
    if own == mount:
        if "memory" not in _words(os.path.join(own, "cgroup.controllers")) or not os.access(own, os.W_OK):
            return None
        if "memory" in _words(os.path.join(own, "cgroup.subtree_control")) or _enable_memory(own):
            return own
        return None
    ancestors = []
    for d in cgroupfs.up_to_mount(own, mount)[1:]:
        if not _may_write(d):
            break
        if "memory" in _words(os.path.join(d, "cgroup.subtree_control")):
            return d
        ancestors.append(d)
    for d in ancestors:
        if ("memory" in _words(os.path.join(d, "cgroup.controllers")) and not _holds_processes(d)
                and _enable_memory(d)):
            return d
    return None


def slot_parent() -> str | None:
    """The directory the zygotes make their slots in: v1 memory if this host has it, else v2.

    Called by the client, which passes the answer to its zygotes (they share its
    cgroup), so that the zygote need not import ``cgroupfs``.
    """
    return own_memory_dir() or v2_parent()


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

    def own_now(self, not_own: int = 0) -> int:
        """Return the task's own memory charged to the slot now: anonymous, plus shared memory
        (tmpfs, ``shm``) or mapped files, whichever is more (they overlap), without page cache.

        ``not_own``: shared memory that is not the task's (its captured output, when
        that lies on a tmpfs). A lower bound of the tree's resident memory at this
        instant (``memory.stat``: ``rss``, ``shmem``, ``mapped_file``); a sample, not a
        high-water mark.
        """
        data = os.pread(self.fd_stat, 2048, 0)
        shmem = max(0, _field(data, b"shmem") - self.shmem_base - not_own)
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

    def kill(self) -> bool:
        """v1 has no ``cgroup.kill``: the caller kills the pids of :meth:`procs`."""
        return False

    def close(self) -> bool:
        """Close the control files and remove the cgroup (it must be empty); False if it stays."""
        for fd in (self.fd_procs, self.fd_max, self.fd_usage, self.fd_limit, self.fd_oom, self.fd_stat):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.rmdir(self.path)
            return True
        except OSError as exc:
            _warn(f"could not remove cgroup {self.path}: {exc}")
            return False


class V2Slot:
    """One cgroup v2 memory cgroup and its open control files (same interface as :class:`MemorySlot`)."""

    __slots__ = ("base", "fd_events", "fd_limit", "fd_peak", "fd_procs", "fd_stat", "limit", "oom_before",
                 "path", "procs_path", "resettable", "shmem_base")

    def __init__(self, path: str) -> None:
        self.path = path
        self.procs_path = os.path.join(path, "cgroup.procs")
        self.fd_procs = os.open(self.procs_path, os.O_WRONLY | os.O_CLOEXEC)
        peak = os.path.join(path, "memory.peak")
        try:  # writable (a per-fd reset) from Linux 6.12; read-only before
            self.fd_peak = os.open(peak, os.O_RDWR | os.O_CLOEXEC)
            os.write(self.fd_peak, b"reset")
            self.resettable = True
        except OSError:
            self.fd_peak = os.open(peak, os.O_RDONLY | os.O_CLOEXEC)
            self.resettable = False
        self.fd_limit = os.open(os.path.join(path, "memory.max"), os.O_WRONLY | os.O_CLOEXEC)
        self.fd_events = os.open(os.path.join(path, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
        self.fd_stat = os.open(os.path.join(path, "memory.stat"), os.O_RDONLY | os.O_CLOEXEC)
        self.base = 0
        self.shmem_base = 0
        self.limit: int | None = None
        self.oom_before = self.oom_kills()

    def prepare(self, limit: int | None) -> None:
        """Reset the peak (6.12+) and set the limit for the next task (the slot must be empty)."""
        if self.resettable:
            os.write(self.fd_peak, b"reset")
        # memory.current, not read: a fresh cgroup starts at 0, and a reset peak starts
        # at the current usage, which is then the baseline.
        self.base = _read_int(self.fd_peak) if self.resettable else 0
        self.shmem_base = _stat(self.fd_stat, b"shmem") if self.base > SMALL_BASE else 0
        want = None if limit is None else limit + self.base
        if want != self.limit:
            try:
                os.write(self.fd_limit, b"max" if want is None else str(want).encode())
                self.limit = want
            except OSError as exc:
                os.write(self.fd_limit, b"max")
                self.limit = None
                _warn(f"could not set memory.max {want} on {self.path}: {exc}")

    def peak(self) -> int:
        """Return the bytes charged to the cgroup at their highest since :meth:`prepare`, above the baseline."""
        return max(0, _read_int(self.fd_peak) - self.base)

    def own_now(self, not_own: int = 0) -> int:
        """Return anonymous memory plus shared memory or mapped files, whichever is more, now
        (``memory.stat``: ``anon``, ``shmem``, ``file_mapped``): see :meth:`MemorySlot.own_now`."""
        data = os.pread(self.fd_stat, 4096, 0)
        shmem = max(0, _field(data, b"shmem") - self.shmem_base - not_own)
        return _field(data, b"anon") + max(shmem, _field(data, b"file_mapped"))

    def oom_kills(self) -> int:
        """Return the kernel's count of OOM kills in this cgroup (``memory.events``)."""
        return _field(os.pread(self.fd_events, 512, 0), b"oom_kill")

    def new_oom_kills(self) -> bool:
        """Whether the kernel OOM-killed a process here since the last call (or creation)."""
        now = self.oom_kills()
        killed, self.oom_before = now > self.oom_before, now
        return killed

    def procs(self) -> list[int]:
        """Return the pids in this cgroup."""
        try:
            with open(self.procs_path, "rb") as fh:
                return [int(x) for x in fh.read().split()]
        except OSError:
            return []

    def kill(self) -> bool:
        """Kill every process in the cgroup at once (``cgroup.kill``, Linux 5.14+); False if refused."""
        try:
            fd = os.open(os.path.join(self.path, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            os.write(fd, b"1")
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def close(self) -> bool:
        """Close the control files and remove the cgroup; False if it could not be removed yet."""
        for fd in (self.fd_procs, self.fd_peak, self.fd_limit, self.fd_events, self.fd_stat):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.rmdir(self.path)
            return True
        except OSError:
            return False


Slot = MemorySlot | V2Slot


class SlotPool:
    """Memory cgroups for one zygote, created on demand and reused (or, on cgroup v2 before
    Linux 6.12, used once: see :class:`V2Slot`)."""

    def __init__(self, parent: str, owner_pid: int) -> None:
        self.parent = parent
        self.owner_pid = owner_pid
        self.v2 = os.path.exists(os.path.join(parent, "cgroup.controllers"))
        self.reuse = True  # v2: found out from the first slot
        self.free: list[Slot] = []
        self.all: list[Slot] = []
        self.to_remove: list[Slot] = []  # used once, removed by sweep() off the task's path
        self.serial = 0
        self._remove_stale()

    @property
    def method(self) -> str:
        """The ``MeasureMethod`` value of what this pool measures with."""
        return "cgroup-v2" if self.v2 else "cgroup-v1"

    @classmethod
    def create(cls, parent: str | None) -> SlotPool | None:
        """Return a pool under ``parent`` (:func:`slot_parent`) if cgroups can be made there."""
        if parent is None or not os.access(parent, os.W_OK):
            return None
        pool = cls(parent, os.getpid())
        try:
            slot = pool.acquire(None)
            pool.reuse = not isinstance(slot, V2Slot) or slot.resettable
            pool.release(slot)
            pool.sweep()
        except OSError:
            pool.close()
            return None
        return pool

    def _remove_stale(self) -> None:
        procfs.remove_if_owner_dead(self.parent, _PREFIX, os.rmdir, numbered=True)

    def acquire(self, limit: int | None) -> Slot:
        """Return an empty slot prepared for a task with ``limit`` bytes (``None``: no limit)."""
        slot = self.free.pop() if self.free else self._new()
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

    def _new(self) -> Slot:
        self.serial += 1
        path = os.path.join(self.parent, f"{_PREFIX}{self.owner_pid}-{self.serial}")
        os.mkdir(path)
        try:
            slot: Slot = V2Slot(path) if self.v2 else MemorySlot(path)
        except OSError:
            os.rmdir(path)
            raise
        self.all.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """Give back a slot whose processes have all ended."""
        if self.reuse:
            self.free.append(slot)
        else:
            self.to_remove.append(slot)

    @property
    def pending(self) -> bool:
        """Whether :meth:`sweep` has work: used slots to remove, or no fresh one ready."""
        return bool(self.to_remove) or (not self.reuse and not self.free)

    def sweep(self) -> None:
        """Remove used-once slots and make the next fresh one ready (called off the task's path)."""
        keep = []
        for slot in self.to_remove:
            self.all.remove(slot)
            if not slot.close():
                keep.append(slot)  # a process still exiting: tried again at the next sweep
                self.all.append(slot)
        self.to_remove = keep
        if not self.reuse and not self.free:
            try:
                self.free.append(self._new())
            except OSError as exc:
                _warn(f"could not create a cgroup under {self.parent}: {exc}")

    def close(self) -> None:
        """Remove every slot."""
        for slot in self.all:
            slot.close()
        self.all.clear()
        self.free.clear()
        self.to_remove.clear()
