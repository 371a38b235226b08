"""Packing: which waiting tasks start now, given what is free on the node.

Runs in the executor's engine thread only (no locks). Knows nothing of
processes: the engine asks :meth:`Scheduler.pick` for tasks whose allocation
fits in what is free, hands them to a backend, and calls :meth:`release` when
they end.

Policy: one of two orders, with the same no-starvation bound.

* FIFO (``priority=None``): first come, first served, with bounded backfill.
  When the task at the head of the queue does not fit, later tasks that do fit
  may start ahead of it.
* Longest first (``priority`` given, the executor's default ``order=
  "longest-first"``): among the ``window`` oldest waiting tasks, the one with
  the highest ``priority(task)`` (the planner's predicted wall time) that fits
  starts first; ties, and tasks with no prediction yet (``None``, ranked
  first so that each category is measured early), go in submission order; a
  retry (``attempts > 0``) goes before any first attempt. This is the greedy
  "longest processing time first" list schedule: long tasks start early and
  short ones fill the cores at the end, so the run does not end with one long
  task on an otherwise idle node.

In both, the oldest waiting task (the head of the queue) may be overtaken only
``max_bypass`` times; after that nothing starts until the head does, so no
task is starved, by a stream of small tasks (FIFO) or of long ones (longest
first). A retry, put back at the head, starts a new count: it waits for a
bigger allocation, and blocking the node for it at once would drain the node
early. The scan looks at most ``window`` tasks deep, so a pick costs
O(window) (plus a sort of ``window`` keys when ordered) however long the
queue is.

Memory held by other processes on the node is respected through ``admit``
(see ``schedule/admission.py``): a task starts only if the node ledger grants
its memory too.

Does not cover: sizing (``plan/``), or where a task's inputs are cached
(later issues).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

from loadmaster.spec import Resources, TaskSpec

_EPS = 1e-9


class Scheduler:
    """Free resources of one node and the queue of tasks waiting for them.

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
        self.capacity = capacity
        self.free_cores = capacity.cores or 0.0
        self.free_memory = capacity.memory or 0
        self.free_disk = capacity.disk
        self.free_gpus: list[str] = list(gpu_ids) or [str(i) for i in range(capacity.gpus or 0)]
        self.queue: deque[TaskSpec] = deque()
        self.max_bypass = max_bypass
        self.window = window
        self._bypassed = 0       # times the current head was overtaken
        self._head_id = (-1, -1)  # (task id, attempts) of the current head
        # Node-wide admission: called with the memory this executor would then
        # have allocated; False means another process holds the rest for now.
        self.admit = admit
        self.admission_blocked = False
        self.priority = priority
        self.priority_by_category = priority_by_category

    @property
    def memory_in_use(self) -> int:
        """Bytes allocated to running tasks."""
        return (self.capacity.memory or 0) - self.free_memory

    def __len__(self) -> int:
        return len(self.queue)

    def push(self, task: TaskSpec, *, front: bool = False) -> None:
        """Queue a task (``front=True`` for a retry, which keeps its place in line)."""
        if front:
            self.queue.appendleft(task)
        else:
            self.queue.append(task)

    def remove(self, task: TaskSpec) -> bool:
        """Drop a waiting task (cancelled); return whether it was waiting."""
        try:
            self.queue.remove(task)
            return True
        except ValueError:
            return False

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
        q = self.queue
        if not q or held.gpus:
            return None
        if self.priority is not None and not (self.priority_by_category and self._uniform_window()):
            return None
        head = q[0]
        a = allocation(head)
        if (a.gpus or (a.cores or 0.0) > (held.cores or 0.0) + _EPS or (a.memory or 0) > (held.memory or 0)
                or (a.disk or 0) > (held.disk or 0)):
            return None
        q.popleft()
        return head, a

    def pick(
        self, allocation: Callable[[TaskSpec], Resources], limit: int | None = None
    ) -> list[tuple[TaskSpec, Resources, tuple[str, ...]]]:
        """Remove and return the tasks that start now, with their allocations and GPU ids.

        ``allocation(task)`` returns the task's allocation (the engine caches it
        on the task). At most ``limit`` tasks are returned.
        """
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
            started = self._backfill(allocation, out, limit)
            self._bypassed += started
            break
        return out

    def _uniform_window(self) -> bool:
        """Whether the window holds only first attempts of one category and input size.

        Longest-first then ranks them in submission order, so the plain FIFO pick
        gives the same starts, ~50 µs per pick cheaper (a stream of tiny tasks).
        """
        q = self.queue
        if not q:
            return True
        head = q[0]
        category, size = head.category, head.input_size
        for task in itertools.islice(q, self.window):
            if task.attempts or task.category != category or task.input_size != size:
                return False
        return True

    def _backfill(
        self,
        allocation: Callable[[TaskSpec], Resources],
        out: list[tuple[TaskSpec, Resources, tuple[str, ...]]],
        limit: int | None,
    ) -> int:
        started = 0
        q = self.queue
        i = 1
        seen = 0
        while i < len(q) and seen < self.window and self._bypassed + started < self.max_bypass:
            if limit is not None and len(out) >= limit:
                break
            task = q[i]
            a = allocation(task)
            seen += 1
            if self.fits(a):
                del q[i]
                out.append((task, a, self._take(a)))
                started += 1
                continue
            i += 1
        return started

    def _pick_ordered(
        self,
        allocation: Callable[[TaskSpec], Resources],
        priority: Callable[[TaskSpec], float | None],
        limit: int | None,
    ) -> list[tuple[TaskSpec, Resources, tuple[str, ...]]]:
        """``pick`` in longest-first order, the queue's head protected by ``max_bypass``."""
        out: list[tuple[TaskSpec, Resources, tuple[str, ...]]] = []
        q = self.queue
        if not q or self.free_cores < _EPS:
            return out
        # Work on the window's tasks as a list (identity, not dataclass equality),
        # then put those still waiting back in front of the rest, in their order.
        win = [q.popleft() for _ in range(min(self.window, len(q)))]
        started: set[int] = set()
        ranked = sorted(range(len(win)), key=lambda i: self._rank(win[i], i, priority))
        head = 0  # index in win of the oldest task still waiting
        r = 0
        try:
            while r < len(ranked) and (limit is None or len(out) < limit):
                while head < len(win) and head in started:
                    head += 1
                if head == len(win):
                    break
                oldest = win[head]
                if (oldest.task_id, oldest.attempts) != self._head_id:
                    self._head_id, self._bypassed = (oldest.task_id, oldest.attempts), 0
                if self._bypassed >= self.max_bypass:
                    # The oldest task's turn: only it may start.
                    a = allocation(oldest)
                    if self.fits(a):
                        started.add(head)
                        out.append((oldest, a, self._take(a)))
                        continue
                    break
                i = ranked[r]
                if i in started:
                    r += 1
                    continue
                task = win[i]
                a = allocation(task)
                if self.fits(a):
                    started.add(i)
                    out.append((task, a, self._take(a)))
                    if i != head:
                        self._bypassed += 1
                    if self.free_cores < _EPS:
                        break
                r += 1
        finally:
            q.extendleft(reversed([t for i, t in enumerate(win) if i not in started]))
        return out

    @staticmethod
    def _rank(task: TaskSpec, position: int,
              priority: Callable[[TaskSpec], float | None]) -> tuple[int, float, int]:
        """Sort key of the longest-first order: retries, then unknown, then longest predicted."""
        if task.attempts > 0:
            return (0, 0.0, position)
        key = priority(task)
        if key is None:
            return (1, 0.0, position)
        return (2, -key, position)
