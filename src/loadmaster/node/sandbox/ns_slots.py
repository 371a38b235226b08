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

Slots live under ``<sandbox parent>/slots-<zygote pid>/<n>/{tmp,shm}``; slots
of a zygote that died are removed at start-up. Does not cover: tasks that
declare paths under ``/tmp`` (they get a namespace of their own, with those
paths bound back in), or a sandbox parent directory under ``/tmp``.
"""

from __future__ import annotations

import os

from loadmaster.node.measure import procfs
from loadmaster.node.sandbox.namespaces import NamespaceSlot, NamespaceUnavailable, make_slot

_PREFIX = "slots-"  # slots-<zygote pid>


class NamespacePool:
    """Namespace slots of one zygote, made on demand and reused."""

    def __init__(self, parent_dir: str) -> None:
        self.parent_dir = parent_dir
        self.base = os.path.join(parent_dir, f"{_PREFIX}{os.getpid()}")
        self.free: list[NamespaceSlot] = []
        self.all: list[NamespaceSlot] = []
        self.broken: str = ""
        self._remove_stale()

    def _remove_stale(self) -> None:
        procfs.remove_if_owner_dead(self.parent_dir, _PREFIX, _rmtree, numbered=False)

    def acquire(self) -> NamespaceSlot | None:
        """Return a free slot, making one if needed; ``None`` if the kernel refuses namespaces."""
        if self.free:
            return self.free.pop()
        if self.broken:
            return None
        d = os.path.join(self.base, str(len(self.all)))
        tmp, shm = os.path.join(d, "tmp"), os.path.join(d, "shm")
        try:
            for sub in (tmp, shm):
                os.makedirs(sub, 0o700, exist_ok=True)
            from loadmaster.node.sandbox.policy import python_paths_under_tmp

            slot = make_slot(tmp, shm, keep=python_paths_under_tmp())
        except (OSError, NamespaceUnavailable) as exc:
            self.broken = str(exc)
            return None
        self.all.append(slot)
        return slot

    def release(self, slot: NamespaceSlot) -> None:
        """Give back a slot whose task's tree has ended and whose files were collected."""
        self.free.append(slot)

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
