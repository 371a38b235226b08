"""Packing: which waiting tasks start now, given what is free (the scheduler's entry point).

Runs in the executor's engine thread only (no locks, no I/O). Two classes,
one queue policy (``schedule/policy.py``):

* :class:`~loadmaster.schedule.cluster.ClusterScheduler` (re-exported here,
  with :class:`~loadmaster.schedule.cluster.Placement`): many nodes of any
  sizes, ``pick(alloc_for)`` returning ``Placement(task, node, allocation,
  gpu_ids)``; its API and the placement rule are in ``schedule/cluster.py``.
* :class:`Scheduler`, the single-node API the current engine uses
  (``Scheduler(capacity, gpu_ids=..., admit=...)``, ``pick(allocation)`` of
  ``(task, allocation, gpu_ids)``, ``release(allocation, gpu_ids)``,
  ``pick_next(held, allocation)``, ``hold``, ``memory_in_use``,
  ``free_cores``/``free_memory``): the same policy on one node named
  :data:`DEFAULT_NODE`, with its own short path to that node.

Does not cover: sizing (``plan/``), or where a task's inputs are cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from loadmaster.schedule.cluster import AllocFor, ClusterScheduler, Placement
from loadmaster.schedule.nodes import EPS as _EPS
from loadmaster.schedule.nodes import Node, NodeView
from loadmaster.schedule.policy import QueuePolicy, fits_within
from loadmaster.spec import Resources, TaskSpec

__all__ = ["DEFAULT_NODE", "AllocFor", "ClusterScheduler", "NodeView", "Placement", "Scheduler"]

DEFAULT_NODE: Final = "local"
"""The name of the single node of :class:`Scheduler`."""


class Scheduler(QueuePolicy):
    """Free resources of one node and the queue of tasks waiting for them (the single-node API).

    Args:
        capacity: what tasks may use in all (cores, memory, disk, gpus).
        gpu_ids: the node's GPU ids (default ``0..gpus-1``).
        max_bypass: how many tasks may start ahead of the oldest waiting one.
        window: how many of the oldest waiting tasks one pick looks at.
        admit: node-wide admission (``schedule/admission.py``), or ``None``.
        priority: ``None`` for FIFO; else the key of the longest-first order
            (higher starts first; ``None`` means "not known yet", ranked first).
        priority_by_category: the priority depends only on a task's category
            and input size (the planner's prediction does): a window of first
            attempts that share both is then started in submission order
            without ranking it (~50 µs less per pick).
    """

    def __init__(self, capacity: Resources, *, gpu_ids: tuple[str, ...] = (), max_bypass: int = 32,
                 window: int = 64, admit: Callable[[int], bool] | None = None,
                 priority: Callable[[TaskSpec], float | None] | None = None,
                 priority_by_category: bool = False) -> None:
        super().__init__(max_bypass=max_bypass, window=window, priority=priority,
                         priority_by_category=priority_by_category)
        self.capacity = capacity
        self._node = Node(DEFAULT_NODE, capacity, gpu_ids, None)  # its name, for _place (counters below)
        # The one node's counters, kept here as before (the hot path reads them).
        self.free_cores = capacity.cores or 0.0
        self.free_memory = capacity.memory or 0
        self.free_disk = capacity.disk
        self.free_gpus: list[str] = list(gpu_ids) or [str(i) for i in range(capacity.gpus or 0)]
        self._free = self
        # Node-wide admission: called with the memory this executor would then
        # have allocated; False means another process holds the rest for now.
        self.admit = admit

    @property
    def memory_in_use(self) -> int:
        """Bytes allocated to running tasks."""
        return (self.capacity.memory or 0) - self.free_memory

    def fits(self, a: Resources) -> bool:
        """Return whether allocation ``a`` fits in what is free now (here and in the node ledger)."""
        if (a.cores or 0.0) > self.free_cores + _EPS or (a.memory or 0) > self.free_memory:
            return False
        if a.gpus and a.gpus > len(self.free_gpus):
            return False
        if a.disk is not None and self.free_disk is not None and a.disk > self.free_disk:
            return False
        if self.admit is not None and not self.admit(self.memory_in_use + (a.memory or 0)):
            self.admission_blocked = True
            return False
        return True

    def _take(self, a: Resources) -> tuple[str, ...]:
        self.free_cores -= a.cores or 0.0
        self.free_memory -= a.memory or 0
        if a.disk is not None and self.free_disk is not None:
            self.free_disk -= a.disk
        if a.gpus:
            ids = tuple(self.free_gpus[: a.gpus])
            del self.free_gpus[: a.gpus]
            return ids
        return ()

    def release(self, a: Resources, gpu_ids: tuple[str, ...] = ()) -> None:
        """Give back what a finished task held."""
        self.free_cores += a.cores or 0.0
        self.free_memory += a.memory or 0
        if a.disk is not None and self.free_disk is not None:
            self.free_disk += a.disk
        self.free_gpus.extend(gpu_ids)

    def hold(self, a: Resources) -> None:
        """Count allocation ``a`` as in use (a task that took over what another released; no GPUs)."""
        self._take(a)

    def pick_next(self, held: Resources,
                  allocation: Callable[[TaskSpec], Resources]) -> tuple[TaskSpec, Resources] | None:
        """Remove and return the task to follow a running one on what it ``held``, or ``None``.

        Only the head of the queue, and only where it is what :meth:`pick` would
        start first anyway (FIFO, or a window of alike first attempts, which
        longest-first starts in submission order), so the order and the
        no-starvation bound stay as they are; only where its allocation fits
        in ``held`` and neither asks for GPUs, so the node stays within its
        capacity when the follower takes over (see :meth:`hold`).
        """
        head = self._next_head(held)
        if head is None:
            return None
        a = allocation(head)
        if not fits_within(a, held):
            return None
        self._pop_head(head)
        return head, a

    def pick(
        self, allocation: Callable[[TaskSpec], Resources], limit: int | None = None
    ) -> list[tuple[TaskSpec, Resources, tuple[str, ...]]]:
        """Remove and return the tasks that start now, with their allocations and GPU ids.

        ``allocation(task)`` returns the task's allocation (the engine caches it
        on the task). At most ``limit`` tasks are returned.
        """
        # The policy's FIFO head loop (``_Policy._pick``), written out for the one
        # node: this is the local engine's hot path.
        self.admission_blocked = False
        if self.free_cores < _EPS:  # every task needs some of a core: nothing can start
            return []
        if self.priority is not None and not (self.priority_by_category and self._uniform_window()):
            return self._pick_ordered(allocation, self.priority, limit)
        out: list[tuple[TaskSpec, Resources, tuple[str, ...]]] = []
        q = self.queue
        while q and (limit is None or len(out) < limit) and self.free_cores >= _EPS:
            head = q[0]
            a = allocation(head)
            if self.fits(a):
                q.popleft()
                out.append((head, a, self._take(a)))
                continue
            # The head waits; backfill behind it, a bounded number of times.
            if (head.task_id, head.attempts) != self._head_id:
                self._head_id, self._bypassed = (head.task_id, head.attempts), 0
            if self._bypassed >= self.max_bypass or self.free_cores < _EPS:
                break
            self._bypassed += self._backfill(allocation, out, limit, bounded=True)
            break
        return out

    def _place(self, task: TaskSpec, alloc: Any) -> tuple[Node, Resources] | None:
        a: Resources = alloc(task)
        return (self._node, a) if self.fits(a) else None

    def _start(self, task: TaskSpec, node: Node, a: Resources, out: list[Any]) -> None:
        out.append((task, a, self._take(a)))
