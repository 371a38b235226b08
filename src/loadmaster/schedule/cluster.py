"""The scheduler across nodes: which waiting tasks start now, and on which node.

Runs in the executor's engine thread only (no locks, no I/O). Knows nothing of
processes: the engine asks for tasks whose allocation fits in what is free,
hands them to a backend, and gives their resources back when they end. The
order is the queue policy's (``schedule/policy.py``); what is free per node
is kept by the node index (``schedule/nodes.py``).

The API (the one the node runtime seam uses)::

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
task's category, ``requested``, ``input_size`` and the capacity: a task of
the same three that fitted nowhere is tried again only on the nodes that
gained resources since (all of them again every :data:`FORGET_EVERY`
picks, as the planner may have sized it smaller meanwhile). A
retry is best grown up to :attr:`ClusterScheduler.largest` (the biggest
node) and then fits only nodes that big. ``admit`` is the node's memory
admission (``schedule/admission.py``), called with the memory that node
would then have allocated; a refusal keeps the task off that node only.
``release`` of a node already removed does nothing (its tasks are the
engine's to re-place).

With one node (the local engine), ``pick`` takes a written-out path with no
index and no memo, as fast as the single-node :class:`Scheduler`'s
(``bench/README.md``, "Scheduler across nodes").

Placement among nodes, per task:

0. The freed slot's rule (``holders`` given, tasks with declared inputs
   only; ``schedule/locality.py``): a node that gave resources back since the
   last pick is offered first to the waiting tasks for which it holds the most
   of their input bytes, then the usual order below goes on.
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
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NamedTuple

from loadmaster.errors import NodeError
from loadmaster.schedule import locality
from loadmaster.schedule.locality import Holders, LocalityCounts
from loadmaster.schedule.nodes import EPS as _EPS
from loadmaster.schedule.nodes import Node, NodeGroup, NodeView
from loadmaster.schedule.policy import QueuePolicy, fits_within, insert_by_priority
from loadmaster.spec import Resources, TaskSpec

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


def _no_alloc(task: TaskSpec, capacity: Resources) -> Resources:
    raise AssertionError("alloc_for used outside a pick")


class ClusterScheduler(QueuePolicy):
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
        holders: ``holders(task)``, the nodes holding the most of a task's
            declared inputs: counted in :attr:`locality` at each placement of a
            task with declared inputs, and given a freed node's room first
            (``schedule/locality.py``).
    """

    def __init__(self, *, max_bypass: int = 32, window: int = 64,
                 priority: Callable[[TaskSpec], float | None] | None = None,
                 priority_by_category: bool = False,
                 prefer: Callable[[TaskSpec], Sequence[str]] | None = None,
                 holders: Holders | None = None) -> None:
        super().__init__(max_bypass=max_bypass, window=window, priority=priority,
                         priority_by_category=priority_by_category)
        self.prefer = prefer
        self.holders = holders
        self.locality: dict[str, LocalityCounts] = {}  # per category (schedule/locality.py)
        self._data_seen = False  # a task with declared inputs was pushed (and holders is set)
        self._freed: list[Node] = []  # nodes that gave back since the last pick (only once _data_seen)
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
        if task.data is not None and self.holders is not None:
            self._data_seen = True
        if front:
            q.appendleft(task)
            self._wkeys = None
        elif q and q[-1].priority < task.priority:
            insert_by_priority(q, task)
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
        self._alloc_for_now = alloc_for
        if self._freed:
            out: list[Placement] = []
            locality.pick_freed(self, self.holders, self._freed, alloc_for, out, limit)  # type: ignore[arg-type]
            self._freed.clear()
            if self.queue and (limit is None or len(out) < limit):
                out += self._pick(alloc_for, None if limit is None else limit - len(out))
            return out
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
            self._bypassed += QueuePolicy._backfill(self, alloc_for, out, limit, bounded=True)
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
        if not fits_within(a, held):
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
        if self._data_seen:
            self._freed.append(n)

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
        if task.data is not None and self.holders is not None:
            locality.count(self, self.holders, task, node, self._alloc_for_now)
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
                # Its inputs' holders first, as below: alike tasks (one key) often read different files.
                again = self._place_preferred(task, alloc_for) if self.prefer is not None else None
                if again is None:
                    again = self._place_on(task, alloc_for, tried)
                if again is None:
                    self._failed_now.add(key)
                    self._failed[key] = len(self._gains)
                return again
        pool = self.pool
        if self.prefer is not None:
            got = self._place_preferred(task, alloc_for)
            if got is not None:
                return got
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

    def _place_preferred(self, task: TaskSpec, alloc_for: AllocFor) -> tuple[Node, Resources] | None:
        """The first of ``prefer(task)``'s nodes (those holding its inputs) where it fits now, if any."""
        by_name = self.pool.by_name
        for name in self.prefer(task)[:PREFER_MAX]:  # type: ignore[misc]
            n = by_name.get(name)
            if n is None or n.reserved:
                continue
            a = alloc_for(task, n.capacity)
            if n.fits(a) and self._admit(n, a):
                return n, a
        return None

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
