"""Packing: which waiting tasks start now, and on which node, given what is free.

Runs in the executor's engine thread only (no locks, no I/O). Knows nothing of
processes: the engine asks for tasks whose allocation fits in what is free,
hands them to a backend, and gives their resources back when they end. What
is free per node is kept by ``schedule/nodes.py``.

Two classes, one policy:

* :class:`ClusterScheduler`, for many nodes (the API the node runtime seam
  uses)::

      s = ClusterScheduler(priority=..., priority_by_category=True, prefer=None)
      s.add_node("n1", Resources(cores=16, memory="64GiB"), gpu_ids=(), admit=ledger.ensure)
      s.push(task)                                  # or push(task, front=True) for a retry
      for p in s.pick(alloc_for):                   # alloc_for(task, node_capacity) -> Resources
          run(p.task, p.node, p.allocation, p.gpu_ids)
      s.release(p.node, p.allocation, p.gpu_ids)    # when it ends
      s.pick_next(node, held, alloc_for)            # hand-ahead on one node: (task, alloc) or None
      s.hold(node, alloc)                           # the follower took over what the first held
      s.remove_node("n1")                           # lost: re-push its tasks (front=True)
      s.node("n1"), s.nodes()                       # NodeView: capacity, free, running
      s.memory_in_use("n1"), s.admission_blocked, s.largest, s.too_big

  ``alloc_for(task, capacity)`` sizes the task for a node of that capacity
  (``Planner.first_allocation(..., node=capacity)``: the planner caps the task
  at the node it goes to). For a first attempt it must depend only on the
  task's category, ``requested``, ``input_size`` and the capacity: within one
  pick, a task of the same three that fitted nowhere is not tried again. A
  retry is best grown up to :attr:`ClusterScheduler.largest` (the biggest
  node) and then fits only nodes that big. ``admit`` is the node's memory
  admission (``schedule/admission.py``), called with the memory that node
  would then have allocated; a refusal keeps the task off that node only.
  ``release`` of a node already removed does nothing (its tasks are the
  engine's to re-place).

* :class:`Scheduler`, the single-node API the current engine uses
  (``Scheduler(capacity, gpu_ids=..., admit=...)``, ``pick(allocation)`` of
  ``(task, allocation, gpu_ids)``, ``release(allocation, gpu_ids)``,
  ``pick_next(held, allocation)``, ``hold``, ``memory_in_use``,
  ``free_cores``/``free_memory``): the same policy on one node named
  :data:`DEFAULT_NODE`, with its own short path to that node.

The queue policy: one of two orders, with the same no-starvation bound.

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

Placement among nodes, per task:

1. ``prefer(task)`` (the data-locality hook: names of nodes that already hold
   its inputs, best first; at most :data:`PREFER_MAX` are looked at): the
   first of them where the task fits now, if any. A preferred node that is
   full does not make the task wait: the locality is weighed against free
   resources by falling through to step 2.
2. First fit over the nodes in ascending order of capacity (memory first),
   and in join order among nodes of one capacity: the first node where the
   task, sized for that node, fits now. First fit keeps the nodes at the
   front full and those at the back empty, so a big task or a retry finds a
   whole node, an autoscaler finds idle nodes to release, and small tasks do
   not fragment the big nodes while small nodes have room. A node group where
   the task would only fit capped (its allocation there is the node's whole
   memory, and the biggest node would give it more) is skipped: it waits for
   a node that holds what it needs rather than running short of memory.
   Cost: O(node sizes + log nodes) per task (see ``nodes.py``), so 1,000
   nodes place at the rate measured in ``bench/scheduler_sim.py``.

Does not cover: sizing (``plan/``), carrying the task to its node (backends),
or where a task's inputs are cached (the data issue supplies ``prefer``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NamedTuple

from loadmaster.errors import NodeError
from loadmaster.schedule.nodes import EPS, Node, NodeGroup, NodePool, NodeView, holds
from loadmaster.spec import Resources, TaskSpec

_EPS = EPS

DEFAULT_NODE: Final = "local"
"""The name of the single node of :class:`Scheduler`."""

PREFER_MAX: Final = 4
"""How many of ``prefer(task)``'s node names a placement looks at (bounds its cost)."""

GAINS_MAX: Final = 512
"""Gains (a release on a node) logged since the oldest "fitted nowhere", beyond which all are forgotten."""

KEYS_MAX: Final = 4096
"""Distinct (category, requested, input size) remembered at most (forgotten beyond)."""

FORGET_EVERY: Final = 64
"""Picks after which "fitted nowhere" is forgotten anyway: the planner may have sized it smaller."""

AllocFor = Callable[[TaskSpec, Resources], Resources]
"""``alloc_for(task, node_capacity)``: the task's allocation on a node of that capacity."""


class Placement(NamedTuple):
    """A task to start now: on ``node``, with ``allocation`` and the GPU ids it gets.

    Immutable (a named tuple: made per task on the hot path, ~3x cheaper than a
    frozen dataclass).
    """

    task: TaskSpec
    node: str
    allocation: Resources
    gpu_ids: tuple[str, ...] = ()


class _Policy:
    """The queue and its policy (shared by both schedulers; internal).

    Subclasses supply ``_place(task, alloc) -> (node, allocation) | None`` and
    ``_start(task, node, allocation, out)``.
    """

    def __init__(self, *, max_bypass: int, window: int,
                 priority: Callable[[TaskSpec], float | None] | None,
                 priority_by_category: bool) -> None:
        self.pool = NodePool()
        self._free: Node | NodePool = self.pool  # whose free_cores say whether anything can start
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
        if front:
            self.queue.appendleft(task)
        else:
            self.queue.append(task)

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
              priority: Callable[[TaskSpec], float | None]) -> tuple[int, float, int]:
        """Sort key of the longest-first order: retries, then unknown, then longest predicted."""
        if task.attempts > 0:
            return (0, 0.0, position)
        key = priority(task)
        if key is None:
            return (1, 0.0, position)
        return (2, -key, position)

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


def _no_alloc(task: TaskSpec, capacity: Resources) -> Resources:
    raise AssertionError("alloc_for used outside a pick")


def _within(a: Resources, held: Resources) -> bool:
    """Whether ``a`` (asking no GPUs) fits inside what ``held`` holds."""
    return not (a.gpus or (a.cores or 0.0) > (held.cores or 0.0) + _EPS
                or (a.memory or 0) > (held.memory or 0) or (a.disk or 0) > (held.disk or 0))


class ClusterScheduler(_Policy):
    """Free resources per node and the queue of tasks waiting for them (see the module docstring).

    Args:
        max_bypass: how many tasks may start ahead of the oldest waiting one.
        window: how many of the oldest waiting tasks one pick looks at.
        priority: ``None`` for FIFO; else the key of the longest-first order
            (higher starts first; ``None`` means "not known yet", ranked first).
        priority_by_category: the priority depends only on a task's category
            and input size: a window of first attempts that share both is
            started in submission order without ranking it.
        prefer: data locality: ``prefer(task)`` names the nodes to try first.
    """

    def __init__(self, *, max_bypass: int = 32, window: int = 64,
                 priority: Callable[[TaskSpec], float | None] | None = None,
                 priority_by_category: bool = False,
                 prefer: Callable[[TaskSpec], Sequence[str]] | None = None) -> None:
        super().__init__(max_bypass=max_bypass, window=window, priority=priority,
                         priority_by_category=priority_by_category)
        self.prefer = prefer
        self._single: Node | None = None
        # First attempts (by category, requested, input size) that fitted nowhere,
        # and the nodes that gained resources since: such a task is tried on those
        # nodes only. Both are forgotten together (see _forget_fits).
        self._failed: dict[int, int] = {}  # key -> how much of _gains it was tried on
        self._gains: list[Node] = []  # nodes that gained resources, in order (may repeat)
        self._probe: dict[int, TaskSpec] = {}  # a task of each failed key
        self._alloc_for_now: AllocFor = _no_alloc
        self._wkeys: list[int | None] | None = None  # keys of queue[1 : window + 1]
        self._win_keys: list[int | None] = []  # keys of queue[:window] in an ordered pick
        self._picks = 0
        self._refused: list[Node] = []  # nodes whose admission refused in this pick

    # ── nodes ────────────────────────────────────────────────────────────────
    def add_node(self, name: str, capacity: Resources, gpu_ids: Sequence[str] = (),
                 admit: Callable[[int], bool] | None = None) -> NodeView:
        """Add a node that tasks may use up to ``capacity``; return its view.

        ``gpu_ids`` default to ``"0".."gpus-1"``; ``admit`` is its memory admission.

        Raises:
            NodeError: the name is taken, or the node has no cores or no memory,
                or the GPU ids do not match ``capacity.gpus``.
        """
        old = self._single
        node = self.pool.add(name, capacity, tuple(gpu_ids), admit)
        if old is not None and old.group is not None:
            old.group.update(old)  # its leaf was not kept up to date while it was alone
        self._single = node if len(self.pool) == 1 else None
        self._wkeys = None
        self._forget_fits()
        return node.view()

    def remove_node(self, name: str) -> NodeView:
        """Forget node ``name`` (gone); return its last view. Re-placing its tasks is the engine's job.

        Raises:
            NodeError: no node has that name.
        """
        if self._reserved is not None and self._reserved.name == name:
            self._unreserve()
        node = self.pool.remove(name)
        self._single = next(iter(self.pool.by_name.values())) if len(self.pool) == 1 else None
        self._wkeys = None
        return node.view()

    def node(self, name: str) -> NodeView:
        """Return the view of node ``name``.

        Raises:
            NodeError: no node has that name.
        """
        node = self.pool.by_name.get(name)
        if node is None:
            raise NodeError(f"no node named {name!r} (known: {len(self.pool)} node(s))")
        return node.view()

    def nodes(self) -> Iterator[NodeView]:
        """Yield a view of every node, in join order."""
        for node in list(self.pool.by_name.values()):
            yield node.view()

    @property
    def largest(self) -> Resources | None:
        """The capacity of the node with the most memory (retries grow up to it), or ``None``."""
        groups = self.pool.groups
        return groups[-1].capacity if groups else None

    def memory_in_use(self, node: str) -> int:
        """Bytes allocated to the tasks running on ``node`` (0 for a node not known)."""
        n = self.pool.by_name.get(node)
        return n.memory_in_use if n is not None else 0

    # ── tasks ────────────────────────────────────────────────────────────────
    def push(self, task: TaskSpec, *, front: bool = False) -> None:
        """Queue a task (``front=True`` for a retry, which keeps its place in line)."""
        q = self.queue
        if front:
            q.appendleft(task)
            self._wkeys = None
        else:
            q.append(task)
            if len(q) <= self.window + 1:
                self._wkeys = None

    def pick(self, alloc_for: AllocFor, limit: int | None = None) -> list[Placement]:
        """Remove and return the tasks that start now, each with its node, allocation and GPU ids.

        At most ``limit`` tasks are returned.
        """
        node = self._single
        if node is not None:
            return self._pick_single(node, alloc_for, limit)
        self._failed_now.clear()
        self._picks += 1
        if self._picks % FORGET_EVERY == 0:
            self._forget_fits()
        for node in self._refused:
            node.admission_blocked = False
            self._gained(node)
        self._refused.clear()
        return self._pick(alloc_for, limit)

    def _pick_single(self, node: Node, alloc_for: AllocFor, limit: int | None) -> list[Placement]:
        """``pick`` with one node: the policy's FIFO head loop written out (the local engine's hot path).

        The node's leaf in the tree is not kept up to date meanwhile (``add_node`` does it).
        """
        self.admission_blocked = node.admission_blocked = False
        if self._refused:
            self._refused.clear()
        if node.free_cores < _EPS:  # every task needs some of a core: nothing can start
            return []
        if self.priority is not None and not (self.priority_by_category and self._uniform_window()):
            return self._pick_ordered(alloc_for, self.priority, limit)
        out: list[Placement] = []
        q = self.queue
        cap, name, admit, pool = node.capacity, node.name, node.admit, self.pool
        while q and (limit is None or len(out) < limit) and node.free_cores >= _EPS:
            head = q[0]
            a = alloc_for(head, cap)
            if node.fits(a) and (admit is None or self._admit(node, a)):
                q.popleft()
                pool.free_cores -= a.cores or 0.0
                out.append(Placement(head, name, a, node.take(a)))
                continue
            # The head waits; backfill behind it, a bounded number of times.
            if (head.task_id, head.attempts) != self._head_id:
                self._head_id, self._bypassed = (head.task_id, head.attempts), 0
            if self._bypassed >= self.max_bypass or node.free_cores < _EPS:
                break
            self._bypassed += _Policy._backfill(self, alloc_for, out, limit, bounded=True)
            break
        return out

    def _forget_fits(self) -> None:
        self._failed.clear()
        self._gains.clear()
        self._probe.clear()
        if len(self._kid) > KEYS_MAX:
            self._kid.clear()
            self._wkeys = None

    def _gained(self, node: Node) -> None:
        """``node`` has more free (or may admit again): tasks that fitted nowhere may fit there."""
        if self._failed:
            gains = self._gains
            gains.append(node)
            if len(gains) > GAINS_MAX:
                self._forget_fits()

    def _unreserve(self) -> None:
        node = self._reserved
        super()._unreserve()
        if node is not None:
            self._gained(node)

    def pick_next(self, node: str, held: Resources, alloc_for: AllocFor) -> tuple[TaskSpec, Resources] | None:
        """Remove and return the task to follow a running one on ``node`` on what it ``held``, or ``None``.

        Only the head of the queue, and only where it is what :meth:`pick` would
        start first anyway (FIFO, or a window of alike first attempts), sized
        for that node; only where its allocation fits in ``held`` and neither
        asks for GPUs.
        """
        n = self.pool.by_name.get(node)
        head = self._next_head(held)
        if n is None or head is None:
            return None
        a = alloc_for(head, n.capacity)
        if not _within(a, held):
            return None
        self._pop_head(head)
        return head, a

    def release(self, node: str, allocation: Resources, gpu_ids: tuple[str, ...] = ()) -> None:
        """Give back what a finished task held on ``node`` (nothing if that node was removed)."""
        n = self.pool.by_name.get(node)
        if n is None:
            return
        if n is self._single:  # alone: no tree to keep
            n.give(allocation, gpu_ids)
            self.pool.free_cores += allocation.cores or 0.0
            return
        self.pool.give(n, allocation, gpu_ids)
        if self._failed:
            self._gained(n)

    def hold(self, node: str, allocation: Resources) -> None:
        """Count ``allocation`` as in use on ``node`` (a follower took over what its first released)."""
        n = self.pool.by_name.get(node)
        if n is not None:
            self.pool.take(n, allocation)

    def _start(self, task: TaskSpec, node: Node, a: Resources, out: list[Any]) -> None:
        if node is self._single:
            self.pool.free_cores -= a.cores or 0.0
            out.append(Placement(task, node.name, a, node.take(a)))
            return
        out.append(Placement(task, node.name, a, self.pool.take(node, a)))
        if self._reserved is not None and self._reserved_for == (task.task_id, task.attempts):
            self._unreserve()

    def _admit(self, node: Node, a: Resources) -> bool:
        admit = node.admit
        if admit is None or admit(node.memory_in_use + (a.memory or 0)):  # type: ignore[operator]
            return True
        node.admission_blocked = self.admission_blocked = True
        self._refused.append(node)
        return False

    def _place(self, task: TaskSpec, alloc: Any) -> tuple[Node, Resources] | None:
        alloc_for: AllocFor = alloc
        reserved = self._reserved
        if reserved is not None and self._reserved_for == (task.task_id, task.attempts):
            a = alloc_for(task, reserved.capacity)
            if reserved.fits(a) and self._admit(reserved, a):
                return reserved, a
        single = self._single
        if single is not None:
            if single.reserved:
                return None
            a = alloc_for(task, single.capacity)
            if single.fits(a) and (single.admit is None or self._admit(single, a)):
                return single, a
            return None
        key = None if task.attempts else self._kid.setdefault(
            (task.category, task.requested, task.input_size), len(self._kid))
        if key is not None:
            if key in self._failed_now:
                return None
            tried = self._failed.get(key)
            if tried is not None:  # it fitted nowhere: only the nodes that gained since can hold it
                again = self._place_on(task, alloc_for, tried)
                if again is None:
                    self._failed_now.add(key)
                    self._failed[key] = len(self._gains)
                return again
        pool = self.pool
        if self.prefer is not None:
            for name in self.prefer(task)[:PREFER_MAX]:
                n = pool.by_name.get(name)
                if n is None or n.reserved:
                    continue
                a = alloc_for(task, n.capacity)
                if n.fits(a) and self._admit(n, a):
                    return n, a
        groups = pool.groups
        top: Resources | None = None
        for group in groups:
            cap = group.capacity
            a = alloc_for(task, cap)
            if (a.gpus and a.gpus > (cap.gpus or 0)) or (a.disk is not None and cap.disk is not None
                                                         and a.disk > cap.disk):
                continue
            if (a.memory or 0) >= (cap.memory or 0) and group is not groups[-1]:
                if top is None:
                    top = alloc_for(task, groups[-1].capacity)
                if (top.memory or 0) > (a.memory or 0):
                    continue  # only capped here: wait for a node that holds what it needs
            node = group.first_fit(a)
            if node is None:
                continue
            if node.admit is None or self._admit(node, a):
                return node, a
            found = self._search_admitted(group, a, node)
            if found is not None:
                return found, a
        if key is not None:
            self._failed[key] = len(self._gains)
            self._failed_now.add(key)
            self._probe[key] = task
        return None

    def _keys(self, tasks: Iterator[TaskSpec]) -> list[int | None]:
        """The fit keys of ``tasks`` (see ``_kid``); ``None`` for a retry (never skipped)."""
        kid = self._kid
        return [None if t.attempts else kid.setdefault((t.category, t.requested, t.input_size), len(kid))
                for t in tasks]

    def _hopeless(self, keys: list[int | None]) -> set[int | None]:
        """Of ``keys`` (a window's), those that fit nowhere and not on a node that gained since.

        Added to ``_failed_now``; returned for the scans to skip.
        """
        failed, failed_now = self._failed, self._failed_now
        if not failed:
            return failed_now  # type: ignore[return-value]
        n = len(self._gains)
        for key in set(keys).intersection(failed).difference(failed_now):
            assert key is not None
            probe = self._probe.get(key)
            tried = failed[key]
            if probe is None or self._place_on(probe, self._alloc_for_now, tried, take=False) is None:
                failed_now.add(key)
                failed[key] = n
        return failed_now  # type: ignore[return-value]

    def _backfill(self, alloc: Any, out: list[Any], limit: int | None, *, bounded: bool) -> int:
        """The window's backfill, skipping the tasks of keys known to fit nowhere without a call."""
        q = self.queue
        if len(q) < 2:
            return 0
        keys = self._wkeys
        if keys is None:
            keys = self._wkeys = self._keys(itertools.islice(q, 1, self.window + 1))
        self._alloc_for_now = alloc
        skip = self._hopeless(keys)
        candidates = [j for j, k in enumerate(keys, 1) if k not in skip]
        pool = self.pool
        started = 0
        gone: list[int] = []
        for j in candidates:
            if bounded and self._bypassed + started >= self.max_bypass:
                break
            if (limit is not None and len(out) >= limit) or pool.free_cores < _EPS:
                break
            k = keys[j - 1]
            if k is not None and k in skip:
                continue  # failed meanwhile, in this pick
            i = j - started
            task = q[i]
            p = self._place(task, alloc)
            if p is not None:
                del q[i]
                gone.append(j - 1)
                self._start(task, p[0], p[1], out)
                started += 1
        if gone:  # the window's keys, kept in step with the queue
            for j in reversed(gone):
                del keys[j]
            if len(q) > len(keys) + 1:
                keys.extend(self._keys(itertools.islice(q, len(keys) + 1, self.window + 1)))
        return started

    def _window_changed(self) -> None:
        self._wkeys = None

    def _window_restored(self, started: set[int]) -> None:
        if self._single is not None:
            self._wkeys = None
            return
        kept = [k for i, k in enumerate(self._win_keys) if i not in started]
        q = self.queue
        if len(q) > len(kept):
            kept.extend(self._keys(itertools.islice(q, len(kept), self.window + 1)))
        self._wkeys = kept[1:]
        self._win_keys = []

    def _candidates(self, n: int, alloc: Any) -> Sequence[int]:
        """Positions among the first ``n`` whose keys are not known to fit nowhere now."""
        q = self.queue
        if not n or self._single is not None:
            return range(n)
        keys = self._wkeys
        if keys is None:
            keys = self._wkeys = self._keys(itertools.islice(q, 1, self.window + 1))
        keys = self._win_keys = self._keys(iter((q[0],))) + keys[: n - 1]
        self._alloc_for_now = alloc
        skip = self._hopeless(keys)
        return [i for i, k in enumerate(keys) if k not in skip]

    def _head_started(self) -> None:
        keys = self._wkeys
        if keys:
            del keys[0]
            q = self.queue
            if len(q) > self.window:
                keys.extend(self._keys(itertools.islice(q, self.window, self.window + 1)))
        else:
            self._wkeys = None

    def _place_on(self, task: TaskSpec, alloc_for: AllocFor, tried: int, *,
                  take: bool = True) -> tuple[Node, Resources] | None:
        """Place ``task`` on a node that gained since it fitted nowhere (``_gains[tried:]``, few).

        ``take=False``: only say where it would fit (no admission asked).
        """
        groups = self.pool.groups
        gains = self._gains
        for j in range(tried, len(gains)):
            node = gains[j]
            if node.reserved or node.group is None:
                continue
            cap = node.capacity
            a = alloc_for(task, cap)
            if not node.fits(a):
                continue
            if (a.memory or 0) >= (cap.memory or 0) and node.group is not groups[-1]:
                top = alloc_for(task, groups[-1].capacity)
                if (top.memory or 0) > (a.memory or 0):
                    continue  # only capped here
            if not take or self._admit(node, a):
                return node, a
        return None

    def _search_admitted(self, group: NodeGroup, a: Resources, refused: Node) -> Node | None:
        """First fit in ``group`` past nodes whose admission refuses ``a`` (masked meanwhile)."""
        masked = [refused]
        pool = self.pool
        pool.mask(refused, blocked=True)
        try:
            while True:
                node = group.first_fit(a)
                if node is None:
                    return None
                if node.admit is None or self._admit(node, a):
                    return node
                masked.append(node)
                pool.mask(node, blocked=True)
        finally:
            for node in masked:
                pool.mask(node, blocked=False)


class Scheduler(_Policy):
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
        self._node = node = Node(DEFAULT_NODE, capacity, gpu_ids, None)
        self.pool.by_name[DEFAULT_NODE] = node
        self._free = node
        # Node-wide admission: called with the memory this executor would then
        # have allocated; False means another process holds the rest for now.
        self.admit = admit

    # The one node's counters, as before.
    @property
    def free_cores(self) -> float:
        """Cores not allocated."""
        return self._node.free_cores

    @free_cores.setter
    def free_cores(self, value: float) -> None:
        self._node.free_cores = value

    @property
    def free_memory(self) -> int:
        """Bytes not allocated."""
        return self._node.free_memory

    @free_memory.setter
    def free_memory(self, value: int) -> None:
        self._node.free_memory = value

    @property
    def free_disk(self) -> int | None:
        """Disk bytes not allocated (``None``: no limit)."""
        return self._node.free_disk

    @property
    def free_gpus(self) -> list[str]:
        """The GPU ids not given to a task."""
        return self._node.free_gpus

    @property
    def memory_in_use(self) -> int:
        """Bytes allocated to running tasks."""
        return self._node.memory_in_use

    def fits(self, a: Resources) -> bool:
        """Return whether allocation ``a`` fits in what is free now (here and in the node ledger)."""
        node = self._node
        if (a.cores or 0.0) > node.free_cores + _EPS or (a.memory or 0) > node.free_memory:
            return False
        if a.gpus and a.gpus > len(node.free_gpus):
            return False
        if a.disk is not None and node.free_disk is not None and a.disk > node.free_disk:
            return False
        if self.admit is not None and not self.admit(node.memory_in_use + (a.memory or 0)):
            self.admission_blocked = True
            return False
        return True

    def _take(self, a: Resources) -> tuple[str, ...]:
        node = self._node
        cores = a.cores or 0.0
        node.free_cores -= cores
        node.free_memory -= a.memory or 0
        if a.disk is not None and node.free_disk is not None:
            node.free_disk -= a.disk
        node.running += 1
        if a.gpus:
            ids = tuple(node.free_gpus[: a.gpus])
            del node.free_gpus[: a.gpus]
            return ids
        return ()

    def release(self, a: Resources, gpu_ids: tuple[str, ...] = ()) -> None:
        """Give back what a finished task held."""
        node = self._node
        cores = a.cores or 0.0
        node.free_cores += cores
        node.free_memory += a.memory or 0
        if a.disk is not None and node.free_disk is not None:
            node.free_disk += a.disk
        if node.running > 0:
            node.running -= 1
        if gpu_ids:
            node.free_gpus.extend(gpu_ids)

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
        if not _within(a, held):
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
        node = self._node
        if node.free_cores < _EPS:  # every task needs some of a core: nothing can start
            return []
        if self.priority is not None and not (self.priority_by_category and self._uniform_window()):
            return self._pick_ordered(allocation, self.priority, limit)
        out: list[tuple[TaskSpec, Resources, tuple[str, ...]]] = []
        q = self.queue
        while q and (limit is None or len(out) < limit) and node.free_cores >= _EPS:
            head = q[0]
            a = allocation(head)
            if self.fits(a):
                q.popleft()
                out.append((head, a, self._take(a)))
                continue
            # The head waits; backfill behind it, a bounded number of times.
            if (head.task_id, head.attempts) != self._head_id:
                self._head_id, self._bypassed = (head.task_id, head.attempts), 0
            if self._bypassed >= self.max_bypass or node.free_cores < _EPS:
                break
            self._bypassed += self._backfill(allocation, out, limit, bounded=True)
            break
        return out

    def _place(self, task: TaskSpec, alloc: Any) -> tuple[Node, Resources] | None:
        a: Resources = alloc(task)
        return (self._node, a) if self.fits(a) else None

    def _start(self, task: TaskSpec, node: Node, a: Resources, out: list[Any]) -> None:
        out.append((task, a, self._take(a)))
