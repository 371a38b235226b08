"""The sizing rules every strategy shares: the grain, the floors, the fair share, growth on retry.

Who runs this code: the client's engine (scheduler) thread, through the
strategies and :class:`~loadmaster.plan.planner.Planner`; pure functions of a
node's grant and a request, no state.

This module does *not* cover: the running statistics a strategy reads
(``running.py``) or any strategy itself. See ``docs/sizing.md``.
"""

from __future__ import annotations

import math
from dataclasses import replace

from loadmaster.errors import InvalidSpec
from loadmaster.spec import Resources

MiB = 1024 * 1024

GRAIN = 16 * MiB
"""Every memory and disk allocation is a multiple of this (16 MiB): finer
than Work Queue's 250 MB histogram buckets, coarse enough that allocations of
one category repeat and pack well."""

MIN_MEMORY = 32 * MiB
"""No memory allocation is smaller (an interpreter and its libraries need this much)."""

FAIR_SHARE_FLOOR = 256 * MiB
"""The fair share of an unmeasured category is at least this, even on a node with
little memory per core."""

DISK_FLOOR = 1024 * MiB
"""A learned disk allocation is at least 1 GiB: disk is rarely the scarce
resource, and an early disk kill costs a whole attempt."""

DISK_FACTOR = 2.0
"""A learned disk allocation is twice the most written by a measured attempt."""

RETRY_GROWTH = 2.0
"""A retry after exhaustion gets at least this many times the previous allocation..."""

RETRY_OVER_USED = 1.25
"""...and at least this many times what the exhausted attempt had used."""

NEAR_NODE = 0.75
"""A memory retry whose doubling would pass this share of the node grows by
``RETRY_OVER_USED`` × what was used instead (at least to this share), once: an
attempt that takes the whole node runs alone and first waits for the node to
empty, so the step before it is worth trying."""

MIN_TASK_TIME_S = 1e-3
"""Tovar's formulas weight each observed peak by its tasks' wall time; an instant
task still counts for 1 ms so that the weights never all vanish."""


def round_up(nbytes: float, grain: int = GRAIN) -> int:
    """Return ``nbytes`` rounded up to a multiple of ``grain`` (0 stays 0)."""
    whole = math.ceil(nbytes)
    return -(-whole // grain) * grain


def margin_for(completed: int) -> float:
    """Return the ``learned`` margin over the largest peak after ``completed`` measurements.

    50 % after one measurement, 25 % after two to four, 10 % from five on: one
    sample says little about the spread of a category; five say enough that the
    largest of them plus 10 % covers the bulk of the rest (and retries cover the tail).
    """
    if completed <= 1:
        return 0.50
    if completed <= 4:
        return 0.25
    return 0.10


def node_memory(node: Resources) -> int:
    """Return the node's memory grant in bytes.

    Raises:
        InvalidSpec: the node states no memory (the planner needs a finite grant).
    """
    if node.memory is None:
        raise InvalidSpec(
            f"node {node!r} states no memory; the planner sizes tasks against the node's "
            "grant, so pass the detected capacity (node.capacity.detect_capacity())"
        )
    return node.memory


def fair_share(node: Resources, cores: float) -> int:
    """Return the memory an unmeasured task of ``cores`` cores gets: its share of the node.

    ``node.memory / node.cores × cores``, rounded down to :data:`GRAIN`, at least
    :data:`FAIR_SHARE_FLOOR`, at most the node's memory. A node without a core count
    counts as one core.
    """
    memory = node_memory(node)
    node_cores = node.cores or 1.0
    share = int(memory * min(cores, node_cores) / node_cores) // GRAIN * GRAIN
    return min(memory, max(FAIR_SHARE_FLOOR, share))


def task_cores(requested: Resources | None, node: Resources) -> float:
    """Return the cores a task gets: as requested, else one (or the node's, if fewer)."""
    if requested is not None and requested.cores is not None:
        return requested.cores
    return min(1.0, node.cores) if node.cores is not None else 1.0


def complete(
    requested: Resources | None, node: Resources, memory: int, disk: int | None
) -> Resources:
    """Return the full allocation: the user's fields as stated, the rest filled in.

    ``memory`` and ``disk`` are the strategy's sizes (capped at the node here);
    cores default to 1, GPUs to 0, wall time to unlimited (``None``).
    """
    mem_cap = node_memory(node)
    memory = min(max(memory, MIN_MEMORY), mem_cap)
    if disk is not None and node.disk is not None:
        disk = min(disk, node.disk)
    if requested is None:
        cores = min(1.0, node.cores) if node.cores is not None else 1.0
        return Resources(cores=cores, memory=memory, disk=disk, gpus=0)
    return Resources(
        cores=requested.cores if requested.cores is not None else task_cores(None, node),
        memory=requested.memory if requested.memory is not None else memory,
        disk=requested.disk if requested.disk is not None else disk,
        gpus=requested.gpus if requested.gpus is not None else 0,
        wall_time=requested.wall_time,
    )


def grow(previous: Resources, resource: str, used: float, node: Resources) -> Resources | None:
    """Return ``previous`` with ``resource`` grown for a retry, or ``None`` if it cannot grow.

    The new size is ``max(2 × previous, 1.25 × used)``, rounded up to :data:`GRAIN`
    (memory, disk), capped at the node. Memory near the node grows in a smaller
    step first: when ``previous`` is under :data:`NEAR_NODE` (¾) of the node and
    the doubling would pass it, ``max(1.25 × used, ¾ node)``. ``None`` when the
    previous allocation was already the node's (or was unlimited, so nothing
    bigger exists).

    Raises:
        InvalidSpec: ``resource`` is not ``"memory"``, ``"disk"`` or ``"wall_time"``.
    """
    if resource == "memory":
        cap: float | None = node_memory(node)
    elif resource == "disk":
        cap = node.disk
    elif resource == "wall_time":
        cap = None
    else:
        raise InvalidSpec(
            f"retry: unknown resource {resource!r}; expected 'memory', 'disk' or 'wall_time'"
        )
    prev = getattr(previous, resource)
    if prev is None or (cap is not None and prev >= cap):
        return None
    target = max(prev * RETRY_GROWTH, used * RETRY_OVER_USED)
    if resource == "memory" and cap is not None and prev < cap * NEAR_NODE < target:
        target = max(used * RETRY_OVER_USED, cap * NEAR_NODE)
    if resource == "wall_time":
        return replace(previous, wall_time=float(target))
    new = round_up(target)
    if cap is not None:
        new = min(new, int(cap))
    if new <= prev:
        return None
    return replace(previous, **{resource: new})
