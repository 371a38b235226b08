"""The queue policy: which waiting task starts next (shared by both schedulers).

Runs in the executor's engine thread only (no locks, no I/O), as part of
:class:`~loadmaster.schedule.cluster.ClusterScheduler` (many nodes) and
:class:`~loadmaster.schedule.scheduler.Scheduler` (one node). It owns the
queue and the order; where a task fits is its subclass's ``_place`` (one node,
or the node index of ``schedule/nodes.py``).

The queue policy: one of two orders, with the same no-starvation bound.

A task's own ``TaskSpec.priority`` (``Executor.options(priority=)``, Parsl's
``parsl_resource_specification["priority"]``; 0 by default) comes before
either order: the queue is kept in descending priority (``push``; a task of
higher priority goes ahead of every waiting one of lower, a retry still at the
front), and the longest-first rank puts it first too.

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
  short ones fill the cores at the end.

In both, the oldest waiting task (the head of the queue) may be overtaken only
``max_bypass`` times. On one node, nothing starts after that until the head
does, so no task is starved, by a stream of small tasks (FIFO) or of long ones
(longest first). On several nodes the head instead *reserves* one node (of
those whose capacity can hold it, the one with the most free memory): nothing
else starts there, so it drains and the head starts there at the latest,
while the other nodes go on backfilling. A head that no node could hold even
empty is kept in :attr:`ClusterScheduler.too_big` and blocks nothing (the
engine should fail it, or wait for a bigger node). A retry, put back at the
head, starts a new count. The scan looks at most ``window`` tasks deep, so a
pick costs O(window) (plus a sort of ``window`` keys when ordered) however
long the queue is.

Does not cover: where a task fits (the subclasses), sizing (``plan/``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from loadmaster.schedule.nodes import EPS, Node, NodePool, holds
from loadmaster.spec import Resources, TaskSpec

_EPS = EPS


class QueuePolicy:
    """The queue and its policy (shared by both schedulers).

    Subclasses supply ``_place(task, alloc) -> (node, allocation) | None`` and
    ``_start(task, node, allocation, out)``.
    """

    def __init__(self, *, max_bypass: int, window: int,
                 priority: Callable[[TaskSpec], float | None] | None,
                 priority_by_category: bool) -> None:
        self.pool = NodePool()
        # Whose free_cores say whether anything can start: the pool, or the one node's scheduler.
        self._free: Any = self.pool
        self.queue: deque[TaskSpec] = deque()
        self.max_bypass = max_bypass
        self.window = window
        self._bypassed = 0       # times the current head was overtaken
        self._head_id = (-1, -1)  # (task id, attempts) of the current head
        self.admission_blocked = False
        self.priority = priority
        self.priority_by_category = priority_by_category
        self._reserved: Node | None = None
        self._reserved_for = (-1, -1)
        self.too_big: TaskSpec | None = None
        # First attempts (category, requested, input size) known to fit nowhere in
        # this pick; the loops skip them without a call (empty on one node).
        self._failed_now: set[int] = set()
        self._kid: dict[tuple[Any, ...], int] = {}  # such a key -> a small int (cheap to hash)

    def _place(self, task: TaskSpec, alloc: Any) -> tuple[Node, Resources] | None:
        raise NotImplementedError

    def _start(self, task: TaskSpec, node: Node, a: Resources, out: list[Any]) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.queue)

    def _candidates(self, n: int, alloc: Any) -> Sequence[int]:
        """Positions among the queue's first ``n`` that may start in this pick (all, on one node)."""
        return range(n)

    def _window_restored(self, started: set[int]) -> None:
        """The window of ``_candidates`` is back in the queue, less the ``started`` positions."""

    def _window_changed(self) -> None:
        """The queue's first ``window + 1`` tasks changed (other than by the head's start)."""

    def _head_started(self) -> None:
        """The head was taken off the queue by a pick."""

    def push(self, task: TaskSpec, *, front: bool = False) -> None:
        """Queue a task (``front=True`` for a retry, which keeps its place in line)."""
        q = self.queue
        if front:
            q.appendleft(task)
        elif q and q[-1].priority < task.priority:
            insert_by_priority(q, task)
            self._window_changed()
        else:
            q.append(task)

    def remove(self, task: TaskSpec) -> bool:
        """Drop a waiting task (cancelled); return whether it was waiting."""
        try:
            self.queue.remove(task)
        except ValueError:
            return False
        self._window_changed()
        if (task.task_id, task.attempts) == self._reserved_for:
            self._unreserve()
        return True

    # ── the head's reservation (several nodes only) ──────────────────────────
    def _unreserve(self) -> None:
        node = self._reserved
        self._reserved, self._reserved_for = None, (-1, -1)
        if node is not None:
            self.pool.mask(node, reserved=False)

    def _reserve(self, head: TaskSpec, alloc: Any) -> bool:
        """Keep a node for ``head``, overtaken ``max_bypass`` times; return whether others may go on.

        One node: no (nothing else starts until the head does). Several: the
        node that can hold the head and has the most free memory is masked.
        """
        hid = (head.task_id, head.attempts)
        if self._reserved is not None and self._reserved_for == hid:
            return True
        if len(self.pool) <= 1:
            return False
        best: Node | None = None
        holdable = False
        for group in self.pool.groups:
            if not holds(group.capacity, alloc(head, group.capacity)):
                continue
            holdable = True
            node = group.most_free()
            if node is not None and (best is None or node.free_memory > best.free_memory):
                best = node
        if best is None:
            if holdable:
                return False  # every node that could hold it is masked now: wait
            self.too_big = head  # no node could: it blocks nothing
            return True
        self._unreserve()
        self._reserved, self._reserved_for = best, hid
        self.pool.mask(best, reserved=True)
        return True

    # ── picking ──────────────────────────────────────────────────────────────
    def _pick(self, alloc: Any, limit: int | None) -> list[Any]:
        """Remove and return the tasks that start now (as the subclass's ``_start`` records them)."""
        self.admission_blocked = False
        free = self._free
        q = self.queue
        if self._reserved is not None and (not q or (q[0].task_id, q[0].attempts) != self._reserved_for):
            self._unreserve()
        if self.too_big is not None and (not q or q[0] is not self.too_big):
            self.too_big = None
        if free.free_cores < _EPS:  # every task needs some of a core: nothing can start
            return []
        if self.priority is not None and not (self.priority_by_category and self._uniform_window()):
            return self._pick_ordered(alloc, self.priority, limit)
        out: list[Any] = []
        while q and (limit is None or len(out) < limit) and free.free_cores >= _EPS:
            head = q[0]
            p = self._place(head, alloc)
            if p is not None:
                q.popleft()
                self._head_started()
                self._start(head, p[0], p[1], out)
                continue
            # The head waits; backfill behind it, a bounded number of times.
            if (head.task_id, head.attempts) != self._head_id:
                self._head_id, self._bypassed = (head.task_id, head.attempts), 0
            if free.free_cores < _EPS:
                break
            if self._bypassed >= self.max_bypass:
                if self._reserve(head, alloc):
                    self._backfill(alloc, out, limit, bounded=False)
                break
            self._bypassed += self._backfill(alloc, out, limit, bounded=True)
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

    def _backfill(self, alloc: Any, out: list[Any], limit: int | None, *, bounded: bool) -> int:
        started = 0
        q = self.queue
        free = self._free
        failed_now = self._failed_now
        i = 1
        seen = 0
        while i < len(q) and seen < self.window and (not bounded or self._bypassed + started < self.max_bypass):
            if (limit is not None and len(out) >= limit) or free.free_cores < _EPS:
                break
            task = q[i]
            seen += 1
            if (failed_now and not task.attempts
                    and self._kid.get((task.category, task.requested, task.input_size)) in failed_now):
                i += 1
                continue
            p = self._place(task, alloc)
            if p is not None:
                del q[i]
                self._start(task, p[0], p[1], out)
                started += 1
                continue
            i += 1
        return started

    def _pick_ordered(self, alloc: Any, priority: Callable[[TaskSpec], float | None],
                      limit: int | None) -> list[Any]:
        """``pick`` in longest-first order, the queue's head protected by ``max_bypass``."""
        out: list[Any] = []
        q = self.queue
        free = self._free
        failed_now = self._failed_now
        kid = self._kid
        n = min(self.window, len(q))
        candidates = self._candidates(n, alloc)
        # Work on the window's tasks as a list (identity, not dataclass equality),
        # then put those still waiting back in front of the rest, in their order.
        win = [q.popleft() for _ in range(n)]
        started: set[int] = set()
        rank = self._rank
        ranked = sorted(candidates, key=lambda i: rank(win[i], i, priority))
        head = 0  # index in win of the oldest task still waiting
        r = 0
        protected = False  # the oldest holds a reserved node: the others may go on
        try:
            while r < len(ranked) and (limit is None or len(out) < limit):
                while head < len(win) and head in started:
                    head += 1
                if head == len(win):
                    break
                oldest = win[head]
                if (oldest.task_id, oldest.attempts) != self._head_id:
                    self._head_id, self._bypassed = (oldest.task_id, oldest.attempts), 0
                    protected = False
                if self._bypassed >= self.max_bypass and not protected:
                    # The oldest task's turn: it starts, or holds a node, before any other.
                    p = self._place(oldest, alloc)
                    if p is not None:
                        started.add(head)
                        self._start(oldest, p[0], p[1], out)
                        continue
                    if not self._reserve(oldest, alloc):
                        break
                    protected = True
                i = ranked[r]
                if i in started:
                    r += 1
                    continue
                task = win[i]
                if (failed_now and not task.attempts
                        and kid.get((task.category, task.requested, task.input_size)) in failed_now):
                    r += 1
                    continue
                p = self._place(task, alloc)
                if p is not None:
                    started.add(i)
                    self._start(task, p[0], p[1], out)
                    if i != head:
                        self._bypassed += 1
                    if free.free_cores < _EPS:
                        break
                r += 1
        finally:
            q.extendleft(reversed([t for i, t in enumerate(win) if i not in started]))
            self._window_restored(started)
        return out

    @staticmethod
    def _rank(task: TaskSpec, position: int,
              priority: Callable[[TaskSpec], float | None]) -> tuple[int, float, int, float, int]:
        """Sort key of the longest-first order: retries; then the task's own priority, larger first;
        among equals, unknown, then longest predicted."""
        if task.attempts > 0:
            return (0, 0.0, 0, 0.0, position)
        key = priority(task)
        if key is None:
            return (1, -task.priority, 0, 0.0, position)
        return (1, -task.priority, 1, -key, position)

    def _next_head(self, held: Resources) -> TaskSpec | None:
        """The head, if hand-ahead may give it (see ``pick_next``), else ``None``."""
        q = self.queue
        if not q or held.gpus:
            return None
        if self.priority is not None and not (self.priority_by_category and self._uniform_window()):
            return None
        return q[0]

    def _pop_head(self, head: TaskSpec) -> None:
        self.queue.popleft()
        self._window_changed()
        if (head.task_id, head.attempts) == self._reserved_for:
            self._unreserve()


def insert_by_priority(q: deque[TaskSpec], task: TaskSpec) -> None:
    """Put ``task`` in ``q`` behind every task of its priority or more, ahead of any of less.

    The queue is kept in descending ``priority`` (retries aside, at the front);
    ``push`` calls this only when the tail's priority is below ``task``'s (the
    default, every task at 0, appends). Scans from the tail: a batch of higher
    priority behind a long low one costs one scan of that one per task.
    """
    p = task.priority
    i = len(q)
    while i > 0 and q[i - 1].priority < p and not q[i - 1].attempts:
        i -= 1
    q.insert(i, task)


def fits_within(a: Resources, held: Resources) -> bool:
    """Whether ``a`` (asking no GPUs) fits inside what ``held`` holds."""
    return not (a.gpus or (a.cores or 0.0) > (held.cores or 0.0) + _EPS
                or (a.memory or 0) > (held.memory or 0) or (a.disk or 0) > (held.disk or 0))
