"""A pool of reusable private mount namespaces for sandboxed tasks, owned by one zygote.

Runs in the zygote (single-threaded). Each slot is a mount namespace (inside
a user namespace when not root) whose ``/tmp`` and ``/dev/shm`` are bind
mounts of the slot's own directories. A sandboxed task joins a free slot
(``setns``, in ``sandbox.enter``) instead of making a namespace of its own;
after the task's tree has ended its files there are counted and removed
(``sandbox.collect``) and the slot is free again. So no two running tasks
share a ``/tmp``, and each task finds it empty.

Why a pool: a mount namespace made per task costs ~6–8 ms of exit latency
here (its teardown waits for an RCU grace period); joining one kept open
costs nothing measurable.

What a slot holds, made once and paid once (not per task): a private ``/tmp``
and ``/dev/shm`` (tmpfs mounts of the policy's ``tmp_size``, so slots are kept
per size), a read-only view of everything else but the slot's work directory
(``namespaces.read_only_view``), a loopback-only network namespace, and, as
root, a pids cgroup (:class:`PidsCgroup`: root is exempt from
``RLIMIT_NPROC``, the cgroup's ``pids.max`` is not).

Slots live under ``<sandbox parent>/slots-<zygote pid>/<n>/{work,tmp,shm}``;
slots of a zygote that died are removed at start-up, and so are its pids
cgroups. Does not cover: tasks that declare paths under ``/tmp`` (they get a
namespace of their own, with those paths bound back in), or a sandbox parent
directory under ``/tmp``.
"""

from __future__ import annotations

import contextlib
import os

from loadmaster.node.measure import procfs
from loadmaster.node.sandbox.namespaces import NamespaceSlot, NamespaceUnavailable, make_slot

_PREFIX = "slots-"  # slots-<zygote pid>
_PIDS_PREFIX = "lm-slot-"  # lm-slot-<zygote pid>-<n>, in the zygote's own pids cgroup (v1)


class PidsCgroup:
    """One slot's pids cgroup (cgroup v1 ``pids`` controller; root only).

    Its files are held open: the task joins by writing ``0`` to ``procs_fd``
    (in :func:`loadmaster.node.sandbox.child.enter`); the zygote sets
    ``pids.max`` when a task's limit differs from the last and reads the
    ``max`` count of ``pids.events`` (forks refused) and ``pids.peak`` before
    and after: a peak that rose during the task is the task's own (one task at
    a time per slot), and a task that was refused a fork reached ``pids.max``.
    """

    __slots__ = ("events_fd", "limit", "max_fd", "path", "peak_before", "peak_fd", "procs_fd", "refused_before")

    def __init__(self, path: str) -> None:
        self.path = path
        self.procs_fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        self.max_fd = os.open(os.path.join(path, "pids.max"), os.O_WRONLY | os.O_CLOEXEC)
        self.events_fd = os.open(os.path.join(path, "pids.events"), os.O_RDONLY | os.O_CLOEXEC)
        self.peak_fd = os.open(os.path.join(path, "pids.peak"), os.O_RDONLY | os.O_CLOEXEC)
        self.limit: int | None = None
        self.refused_before = 0
        self.peak_before = 0

    @classmethod
    def make(cls, name: str) -> PidsCgroup | None:
        """Create ``name`` under this process's pids cgroup; None where that is impossible."""
        parent = _own_pids_cgroup()
        if parent is None:
            return None
        path = os.path.join(parent, name)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
            return cls(path)
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            return None

    def set_limit(self, limit: int | None) -> None:
        """Write ``pids.max`` (``max`` for None) if it differs from the last task's."""
        if limit != self.limit:
            os.pwrite(self.max_fd, b"max" if limit is None else str(limit).encode(), 0)
            self.limit = limit

    def refused(self) -> int:
        """Forks refused by ``pids.max`` since the cgroup was made."""
        text = os.pread(self.events_fd, 256, 0).decode()
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
        return 0

    def peak(self) -> int:
        """The most processes the cgroup held at once since it was made (``pids.peak``)."""
        return int(os.pread(self.peak_fd, 64, 0))

    def before_task(self, limit: int | None) -> None:
        """Set the task's limit and note the counters it is measured against (zygote, before the fork)."""
        self.set_limit(limit)
        self.refused_before = self.refused()
        self.peak_before = self.peak()

    def after_task(self) -> tuple[int, int | None]:
        """``(forks refused, the task's peak process count or None if not known)`` (after the task)."""
        refused = self.refused() - self.refused_before
        peak = self.peak()
        if peak > self.peak_before:
            return refused, peak
        return refused, self.limit if refused and self.limit is not None else None

    def close(self) -> None:
        """Close the files and remove the cgroup (it is empty once its last task's tree ended)."""
        for fd in (self.procs_fd, self.max_fd, self.events_fd, self.peak_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def _own_pids_cgroup() -> str | None:
    """The v1 pids cgroup directory this process is in, if it is writable (root)."""
    base = "/sys/fs/cgroup/pids"
    if os.geteuid() != 0 or not os.path.isdir(base):
        return None
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "pids" in controllers.split(","):
                    d = os.path.join(base, path.lstrip("/"))
                    return d if os.access(d, os.W_OK) else None
    except (OSError, ValueError):
        return None
    return None


class NamespacePool:
    """Namespace slots of one zygote, made on demand and reused."""

    def __init__(self, parent_dir: str) -> None:
        self.parent_dir = parent_dir
        self.base = os.path.join(parent_dir, f"{_PREFIX}{os.getpid()}")
        self.free: dict[int | None, list[NamespaceSlot]] = {}  # by tmp_size
        self.all: list[NamespaceSlot] = []
        self.broken: str = ""
        self._remove_stale()

    def _remove_stale(self) -> None:
        procfs.remove_if_owner_dead(self.parent_dir, _PREFIX, _rmtree, numbered=False)
        parent = _own_pids_cgroup()
        if parent is not None:
            procfs.remove_if_owner_dead(parent, _PIDS_PREFIX, os.rmdir, numbered=True)

    def acquire(self, tmp_size: int | None = None) -> NamespaceSlot | None:
        """Return a free slot whose /tmp has ``tmp_size`` bytes, making one if needed;
        ``None`` if the kernel refuses namespaces."""
        free = self.free.get(tmp_size)
        if free:
            return free.pop()
        if self.broken:
            return None
        n = len(self.all)
        d = os.path.join(self.base, str(n))
        tmp, shm, work = os.path.join(d, "tmp"), os.path.join(d, "shm"), os.path.join(d, "work")
        try:
            for sub in (tmp, shm, work):
                os.makedirs(sub, 0o700, exist_ok=True)
            from loadmaster.node.sandbox.paths import python_paths_under_tmp

            slot = make_slot(tmp, shm, keep=python_paths_under_tmp(), workdir=work, tmp_size=tmp_size)
        except (OSError, NamespaceUnavailable) as exc:
            self.broken = str(exc)
            return None
        slot.pids = PidsCgroup.make(f"{_PIDS_PREFIX}{os.getpid()}-{n}")
        self.all.append(slot)
        return slot

    def release(self, slot: NamespaceSlot) -> None:
        """Give back a slot whose task's tree has ended and whose files were collected."""
        self.free.setdefault(slot.tmp_size, []).append(slot)

    def close(self) -> None:
        """Drop every namespace and remove the slots' directories."""
        for slot in self.all:
            slot.close()
        self.all.clear()
        self.free.clear()
        _rmtree(self.base)


def _rmtree(path: str) -> None:
    """Remove a tree; ``shutil`` is imported here only: it loads zlib, bz2 and lzma and their
    libraries, memory areas that every fork of the zygote would copy (see bench/README.md)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
