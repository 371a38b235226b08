"""Data locality in the cluster scheduler: the counts of where tasks went, and the freed slot's rule.

Runs in the engine thread, as part of
:class:`~loadmaster.schedule.cluster.ClusterScheduler`, only for tasks with
declared inputs (``TaskSpec.data``) and only when the scheduler has a
``holders`` hook (``ReplicaTable.best_holders``: the nodes holding the most bytes
of a task's inputs, ready or on their way). Tasks without declared files cost
nothing here.

* :class:`LocalityCounts`: at each placement of a task with declared inputs,
  whether some node held them, whether one of those *holders* had room for it
  at that moment (it fits in what is free there now, the node not reserved for
  the queue's head; memory admission is not asked, so the count of "had room"
  errs high), and whether it was placed on a holder. ``on_holder / room`` is
  "with room on the holding nodes, the share of tasks run where their inputs
  already are"; ``on_holder / held`` the share overall.
* :func:`pick_freed`, the freed slot's rule: a node that gave resources back
  since the last pick gives them first to waiting tasks (of the queue's
  ``window`` oldest, in queue order) for which it is a holder, before the
  queue's own order places anything there. A consumer whose producer's node
  is busy when it is submitted then waits for that node to free, as long as
  other tasks take the slots freed elsewhere; a freed slot is never left idle
  (the usual pick follows), so locality still never leaves a core unused.
  Each task started ahead of the queue's head counts as a bypass of it, so the
  head's reservation (``schedule/policy.py``) still bounds its wait.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from loadmaster.schedule.nodes import EPS, Node
from loadmaster.spec import Resources, TaskSpec

if TYPE_CHECKING:
    from loadmaster.schedule.cluster import ClusterScheduler

Holders = Callable[[TaskSpec], Sequence[str]]
"""``holders(task)``: the nodes holding the most bytes of ``task``'s declared inputs (ties all named)."""


@dataclasses.dataclass(slots=True)
class LocalityCounts:
    """Placements of tasks with declared inputs, as the scheduler decided them (see the module docstring).

    Attributes:
        placed: tasks with declared inputs placed.
        held: of those, the ones whose inputs some node held at that moment.
        room: of those, the ones for which a holder had room at that moment.
        on_holder: of those, the ones placed on a holder.
    """

    placed: int = 0
    held: int = 0
    room: int = 0
    on_holder: int = 0

    @property
    def with_room(self) -> float | None:
        """Placed on a holder, of the tasks for which a holder had room (``None`` if none had)."""
        return self.on_holder / self.room if self.room else None

    @property
    def overall(self) -> float | None:
        """Placed on a holder, of the tasks whose inputs some node held (``None`` if none)."""
        return self.on_holder / self.held if self.held else None

    def add(self, other: LocalityCounts) -> LocalityCounts:
        """The sum of two counts (a new one)."""
        return LocalityCounts(self.placed + other.placed, self.held + other.held, self.room + other.room,
                              self.on_holder + other.on_holder)


def count(s: ClusterScheduler, holders: Holders, task: TaskSpec, node: Node,
          alloc_for: Callable[[TaskSpec, Resources], Resources]) -> None:
    """Count the placement of ``task`` (declared inputs) on ``node``, before it takes its allocation."""
    c = s.locality.get(task.category)
    if c is None:
        c = s.locality[task.category] = LocalityCounts()
    c.placed += 1
    names = holders(task)
    if not names:
        return
    c.held += 1
    if node.name in names:
        c.room += 1
        c.on_holder += 1
        return
    by_name = s.pool.by_name
    for name in names:
        h = by_name.get(name)
        if h is not None and h is not node and not h.reserved and h.fits(alloc_for(task, h.capacity)):
            c.room += 1
            return


def pick_freed(s: ClusterScheduler, holders: Holders, freed: list[Node], alloc_for: Any,
               out: list[Any], limit: int | None) -> None:
    """Start waiting tasks on the nodes in ``freed`` that hold their inputs (the freed slot's rule)."""
    by_name = s.pool.by_name
    nodes = [n for n in dict.fromkeys(freed)
             if by_name.get(n.name) is n and not n.reserved and n.free_cores >= EPS]
    if not nodes:
        return
    q = s.queue
    head = q[0] if q else None
    i = seen = 0
    while i < len(q) and seen < s.window and nodes and (limit is None or len(out) < limit):
        task = q[i]
        seen += 1
        if task.data is None:
            i += 1
            continue
        if task is not head and head is not None and s._bypassed >= s.max_bypass \
                and (head.task_id, head.attempts) == s._head_id:
            break  # the head's turn (its reservation comes in the usual pick)
        names = holders(task)
        for n in nodes:
            if n.name not in names:
                continue
            a = alloc_for(task, n.capacity)
            if not (n.fits(a) and s._admit(n, a)):
                continue
            del q[i]
            if task is not head and head is not None:
                if (head.task_id, head.attempts) != s._head_id:
                    s._head_id, s._bypassed = (head.task_id, head.attempts), 0
                s._bypassed += 1
            s._start(task, n, a, out)
            if n.free_cores < EPS:
                nodes.remove(n)
            break
        else:
            i += 1
    if out:
        s._window_changed()
