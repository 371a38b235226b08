"""The scheduler's node index: what is free on each node, and which node a task fits.

Runs in the engine thread only, as part of the scheduler
(``schedule/scheduler.py``); no locks, no I/O. It reads and writes nothing but
its own counters: each node's free cores, memory, disk and GPU ids, and the
number of tasks it runs. It does not decide which task starts (the queue
policy in ``scheduler.py``), how big a task is (``plan/``), or whether other
processes on the node hold memory (each node's ``admit`` callback, called by
the scheduler).

Nodes are grouped by capacity: all nodes of one size (a Slurm partition, one
``SLURMCluster``'s jobs, the workers of a ``LocalCluster``) form one
:class:`NodeGroup`, and the groups are kept in ascending order of capacity
(memory, then cores, GPUs, disk). In a group, a segment tree over the nodes'
slots holds, per subtree, the most free cores and the most free memory of any
node in it. :meth:`NodeGroup.first_fit` descends to the leftmost node whose
free cores and memory both suffice, skipping every subtree that cannot hold
the task, then checks GPUs and disk on that node (and continues to the right
if they do not suffice). A take or a release updates one leaf and its
ancestors, stopping where a maximum does not change. So a placement costs
O(groups + log n) for n nodes; a search can visit more leaves only where the
two maxima of a subtree sit on different nodes (a node with cores but no
memory beside one with memory but no cores), and only as many as there are
such nodes.

A node can be *masked*: kept out of every search (reserved for the head of
the queue, or refused by its admission callback for the rest of one pick);
its leaf then counts nothing free.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadmaster.errors import NodeError
from loadmaster.spec import Resources

EPS = 1e-9
"""Slack on core counts (fractions of cores add up with rounding errors)."""

_BIG = 1 << 62  # "unlimited" disk in comparisons


@dataclass(frozen=True, slots=True)
class NodeView:
    """A read-only picture of one node, as the scheduler counts it.

    Attributes:
        name: the node's name (as the backend knows it).
        capacity: what tasks may use there in all.
        free_cores, free_memory, free_disk: what is not allocated now (bytes;
            ``free_disk`` is ``None`` when the node states no disk limit).
        free_gpus: the GPU ids not given to a task.
        running: tasks that hold an allocation there.
        reserved: kept for the head of the queue (nothing else starts there).
        admission_blocked: the node's admission refused memory at the last pick.
    """

    name: str
    capacity: Resources
    free_cores: float
    free_memory: int
    free_disk: int | None
    free_gpus: tuple[str, ...]
    running: int
    reserved: bool
    admission_blocked: bool


def holds(capacity: Resources, a: Resources) -> bool:
    """Whether allocation ``a`` fits in ``capacity`` at all (on an empty node of that size)."""
    if (a.cores or 0.0) > (capacity.cores or 0.0) + EPS or (a.memory or 0) > (capacity.memory or 0):
        return False
    if a.gpus and a.gpus > (capacity.gpus or 0):
        return False
    return not (a.disk is not None and capacity.disk is not None and a.disk > capacity.disk)


class Node:
    """One node's free counters (internal to the scheduler; read :class:`NodeView` outside)."""

    __slots__ = (
        "admission_blocked",
        "admit",
        "blocked",
        "capacity",
        "free_cores",
        "free_disk",
        "free_gpus",
        "free_memory",
        "group",
        "name",
        "pos",
        "reserved",
        "running",
    )

    def __init__(self, name: str, capacity: Resources, gpu_ids: tuple[str, ...],
                 admit: object) -> None:
        self.name = name
        self.capacity = capacity
        self.free_cores = capacity.cores or 0.0
        self.free_memory = capacity.memory or 0
        self.free_disk = capacity.disk
        self.free_gpus: list[str] = list(gpu_ids) or [str(i) for i in range(capacity.gpus or 0)]
        self.running = 0
        self.admit = admit
        self.admission_blocked = False
        self.reserved = False   # kept for the head of the queue
        self.blocked = False    # refused by its admission during this pick
        self.group: NodeGroup | None = None
        self.pos = -1

    @property
    def memory_in_use(self) -> int:
        """Bytes allocated to the tasks running here."""
        return (self.capacity.memory or 0) - self.free_memory

    def fits(self, a: Resources) -> bool:
        """Whether ``a`` fits in what is free here (not asking the node's admission)."""
        if (a.cores or 0.0) > self.free_cores + EPS or (a.memory or 0) > self.free_memory:
            return False
        if a.gpus and a.gpus > len(self.free_gpus):
            return False
        return not (a.disk is not None and self.free_disk is not None and a.disk > self.free_disk)

    def take(self, a: Resources) -> tuple[str, ...]:
        """Count ``a`` as in use here; return the GPU ids it gets."""
        self.free_cores -= a.cores or 0.0
        self.free_memory -= a.memory or 0
        if a.disk is not None and self.free_disk is not None:
            self.free_disk -= a.disk
        self.running += 1
        if a.gpus:
            ids = tuple(self.free_gpus[: a.gpus])
            del self.free_gpus[: a.gpus]
            return ids
        return ()

    def give(self, a: Resources, gpu_ids: tuple[str, ...]) -> None:
        """Give back what a task held here."""
        self.free_cores += a.cores or 0.0
        self.free_memory += a.memory or 0
        if a.disk is not None and self.free_disk is not None:
            self.free_disk += a.disk
        if self.running > 0:
            self.running -= 1
        self.free_gpus.extend(gpu_ids)

    def view(self) -> NodeView:
        """Return a read-only copy of this node's counters."""
        return NodeView(self.name, self.capacity, self.free_cores, self.free_memory,
                        self.free_disk, tuple(self.free_gpus), self.running, self.reserved,
                        self.admission_blocked)


class NodeGroup:
    """The nodes of one capacity, and the segment tree that finds a fit among them."""

    __slots__ = ("capacity", "cores", "count", "free_slots", "gpus", "key", "memory", "size", "slots")

    def __init__(self, capacity: Resources) -> None:
        self.capacity = capacity
        self.key = (capacity.memory or 0, capacity.cores or 0.0, capacity.gpus or 0,
                    _BIG if capacity.disk is None else capacity.disk)
        self.size = 1
        self.cores: list[float] = [-1.0, -1.0]   # max free cores per subtree (1-based heap)
        self.memory: list[int] = [-1, -1]        # max free memory per subtree
        # max free GPUs per subtree, in groups of GPU nodes only (elsewhere every node has none)
        self.gpus: list[int] | None = [-1, -1] if capacity.gpus else None
        self.slots: list[Node | None] = [None]
        self.free_slots: list[int] = [0]
        self.count = 0

    def insert(self, node: Node) -> None:
        """Add ``node`` in the lowest free slot (growing the tree when full)."""
        if not self.free_slots:
            self._grow()
        self.free_slots.sort(reverse=True)  # the lowest slot first: first fit stays in join order
        pos = self.free_slots.pop()
        self.slots[pos] = node
        node.group, node.pos = self, pos
        self.count += 1
        self.update(node)

    def delete(self, node: Node) -> None:
        """Take ``node`` out of the tree."""
        i = node.pos + self.size
        self.slots[node.pos] = None
        self.free_slots.append(node.pos)
        node.group, node.pos = None, -1
        self.count -= 1
        self.cores[i], self.memory[i] = -1.0, -1
        if self.gpus is not None:
            self.gpus[i] = -1
        self._fix(i >> 1)

    def _grow(self) -> None:
        old = self.size
        self.size = size = old * 2
        self.slots.extend([None] * old)
        self.free_slots.extend(range(old, size))
        self.cores = [-1.0] * (2 * size)
        self.memory = [-1] * (2 * size)
        gpus = self.gpus = None if self.gpus is None else [-1] * (2 * size)
        for node in self.slots:
            if node is not None:
                masked = node.reserved or node.blocked
                self.cores[node.pos + size] = -1.0 if masked else node.free_cores
                self.memory[node.pos + size] = -1 if masked else node.free_memory
                if gpus is not None:
                    gpus[node.pos + size] = -1 if masked else len(node.free_gpus)
        for i in range(size - 1, 0, -1):
            self.cores[i] = max(self.cores[2 * i], self.cores[2 * i + 1])
            self.memory[i] = max(self.memory[2 * i], self.memory[2 * i + 1])
            if gpus is not None:
                gpus[i] = max(gpus[2 * i], gpus[2 * i + 1])

    def update(self, node: Node) -> None:
        """Bring the tree up to date after ``node``'s free counters or mask changed."""
        i = node.pos + self.size
        if node.reserved or node.blocked:
            self.cores[i], self.memory[i] = -1.0, -1
        else:
            self.cores[i], self.memory[i] = node.free_cores, node.free_memory
        gpus = self.gpus
        if gpus is not None:
            gpus[i] = -1 if node.reserved or node.blocked else len(node.free_gpus)
            j = i >> 1
            while j:
                g = max(gpus[2 * j], gpus[2 * j + 1])
                if gpus[j] == g:
                    break
                gpus[j] = g
                j >>= 1
        self._fix(i >> 1)

    def _fix(self, i: int) -> None:
        c, m = self.cores, self.memory
        while i:
            left = 2 * i
            cl, cr = c[left], c[left + 1]
            ml, mr = m[left], m[left + 1]
            nc = cl if cl > cr else cr
            nm = ml if ml > mr else mr
            if c[i] == nc and m[i] == nm:
                return  # the maxima above do not change either
            c[i], m[i] = nc, nm
            i >>= 1

    def first_fit(self, a: Resources) -> Node | None:
        """Return the first node (by slot) where ``a`` fits now, or ``None``."""
        if a.gpus:
            return self._first_fit_gpus(a)
        cores = (a.cores or 0.0) - EPS
        memory = a.memory or 0
        c, m = self.cores, self.memory
        if c[1] < cores or m[1] < memory:
            return None
        size, slots = self.size, self.slots
        stack = [1]
        pop, push = stack.pop, stack.append
        while stack:
            i = pop()
            while i < size:  # descend, the left child first; the right one waits on the stack
                left = 2 * i
                if c[left] >= cores and m[left] >= memory:
                    if c[left + 1] >= cores and m[left + 1] >= memory:
                        push(left + 1)
                    i = left
                elif c[left + 1] >= cores and m[left + 1] >= memory:
                    i = left + 1
                else:
                    break
            else:
                node = slots[i - size]
                if node is not None and node.fits(a):
                    return node
        return None

    def _first_fit_gpus(self, a: Resources) -> Node | None:
        """:meth:`first_fit` for a task that asks for GPUs (the GPU maxima prune too)."""
        gpus = self.gpus
        if gpus is None:
            return None
        cores, memory, want = (a.cores or 0.0) - EPS, a.memory or 0, a.gpus or 0
        c, m = self.cores, self.memory
        size, slots = self.size, self.slots
        stack = [1]
        while stack:
            i = stack.pop()
            if c[i] < cores or m[i] < memory or gpus[i] < want:
                continue
            if i >= size:
                node = slots[i - size]
                if node is not None and node.fits(a):
                    return node
                continue
            stack.append(2 * i + 1)
            stack.append(2 * i)
        return None

    def most_free(self) -> Node | None:
        """Return the unmasked node with the most free memory, or ``None``."""
        m = self.memory
        if m[1] < 0:
            return None
        i, size = 1, self.size
        while i < size:
            i = 2 * i if m[2 * i] >= m[2 * i + 1] else 2 * i + 1
        return self.slots[i - size]


class NodePool:
    """All nodes, by name and in groups of one capacity (ascending)."""

    __slots__ = ("_by_capacity", "by_name", "free_cores", "groups")

    def __init__(self) -> None:
        self.by_name: dict[str, Node] = {}
        self.groups: list[NodeGroup] = []
        self._by_capacity: dict[Resources, NodeGroup] = {}
        self.free_cores = 0.0  # over all nodes: none free means nothing can start anywhere

    def __len__(self) -> int:
        return len(self.by_name)

    def add(self, name: str, capacity: Resources, gpu_ids: tuple[str, ...], admit: object) -> Node:
        """Add a node; return it.

        Raises:
            NodeError: the name is taken, or the node has no cores or no memory.
        """
        if not isinstance(name, str) or not name:
            raise NodeError(f"node name {name!r}: give a non-empty string (the backend's node name)")
        if name in self.by_name:
            raise NodeError(
                f"node {name!r} is already known (capacity {self.by_name[name].capacity}); "
                "node names must be unique: remove_node() it first if it came back"
            )
        if not isinstance(capacity, Resources):
            raise NodeError(f"node {name!r}: capacity {capacity!r} is not a Resources")
        if not capacity.cores or not capacity.memory:
            raise NodeError(
                f"node {name!r} states cores={capacity.cores!r}, memory={capacity.memory!r}: "
                "a node needs some cores and some memory for any task to run there; "
                "pass its detected capacity (node.capacity.detect_capacity())"
            )
        if gpu_ids and len(gpu_ids) != (capacity.gpus or 0):
            raise NodeError(
                f"node {name!r}: {len(gpu_ids)} GPU id(s) {gpu_ids!r} for gpus={capacity.gpus!r}; "
                "give one id per GPU"
            )
        if len(set(gpu_ids)) != len(gpu_ids):
            raise NodeError(f"node {name!r}: GPU ids {gpu_ids!r} repeat; give each GPU once")
        node = Node(name, capacity, tuple(gpu_ids), admit)
        group = self._by_capacity.get(capacity)
        if group is None:
            group = self._by_capacity[capacity] = NodeGroup(capacity)
            self.groups.append(group)
            self.groups.sort(key=lambda g: g.key)
        group.insert(node)
        self.by_name[name] = node
        self.free_cores += node.free_cores
        return node

    def remove(self, name: str) -> Node:
        """Take node ``name`` out; return it.

        Raises:
            NodeError: no node has that name.
        """
        node = self.by_name.pop(name, None) if isinstance(name, str) else None
        if node is None:
            known = ", ".join(sorted(self.by_name)[:8]) or "none"
            more = ", ..." if len(self.by_name) > 8 else ""
            raise NodeError(f"no node named {name!r} to remove (known: {known}{more}); "
                            "was it removed already?")
        group = node.group
        assert group is not None
        group.delete(node)
        if not group.count:
            self.groups.remove(group)
            del self._by_capacity[group.capacity]
        self.free_cores -= node.free_cores
        return node

    def take(self, node: Node, a: Resources) -> tuple[str, ...]:
        """Count ``a`` as in use on ``node``; return its GPU ids."""
        ids = node.take(a)
        self.free_cores -= a.cores or 0.0
        group = node.group
        if group is not None:
            group.update(node)
        return ids

    def give(self, node: Node, a: Resources, gpu_ids: tuple[str, ...]) -> None:
        """Give back what a task held on ``node``."""
        node.give(a, gpu_ids)
        self.free_cores += a.cores or 0.0
        group = node.group
        if group is not None:
            group.update(node)

    def mask(self, node: Node, *, reserved: bool | None = None, blocked: bool | None = None) -> None:
        """Set ``node``'s reserved or blocked flag, and the tree with it."""
        if reserved is not None:
            node.reserved = reserved
        if blocked is not None:
            node.blocked = blocked
        if node.group is not None:
            node.group.update(node)
