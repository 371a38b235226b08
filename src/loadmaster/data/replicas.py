"""The client's replica table: which node holds which digest (creating, ready), for placement and sources.

Runs in the client: the engine thread writes it (an order with declared files
sent to a node marks its inputs ``creating`` there; the node's
:class:`~loadmaster.data.refs.DataReport` marks them ``ready``, and its kept
outputs too; a node that leaves is dropped), the submitting threads read it
(where a kept output can be read from), under one lock.

:meth:`ReplicaTable.prefer` is the scheduler's locality hook
(``ClusterScheduler(prefer=...)``): the nodes holding most of a task's input
bytes, best first. The scheduler tries them first and falls through to first
fit when they are full, so locality never makes a task wait for a busy node.

Does not cover: choosing a transfer's source and its limits (the transfer
service, next), what a node holds on disk (``data/cache.py``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from loadmaster.data.refs import DataOrder, DataReport, Source

CREATING = "creating"
READY = "ready"
SUBMITTER = "client"
"""The submitter's name as a holder (its declared files): a source, never a place to run a task."""


@dataclass(frozen=True, slots=True)
class Kept:
    """A kept output (``Output(path, keep=True)``): its content and where it lives."""

    digest: str
    size: int
    kind: str


class ReplicaTable:
    """Who holds what (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holders: dict[str, dict[str, str]] = {}  # digest -> node -> state
        self.caches: dict[str, tuple[str, str]] = {}  # node -> (host, cache dir)
        self.kept: dict[str, Kept] = {}  # submitter path -> its kept output

    def creating(self, node: str, data: DataOrder) -> None:
        """Orders with these inputs went to ``node``: they will be there (engine thread)."""
        with self._lock:
            for ref in data.inputs:
                states = self.holders.setdefault(ref.digest, {})
                states.setdefault(node, CREATING)

    def record(self, node: str, report: DataReport) -> None:
        """What ``node`` said it holds after a task (engine thread)."""
        with self._lock:
            self.caches[node] = (report.host, report.cache_dir)
            for s in report.inputs:
                self.holders.setdefault(s.digest, {})[node] = READY
            for p in report.outputs:
                self.holders.setdefault(p.digest, {})[node] = READY
                if p.kept:
                    self.kept[p.key] = Kept(p.digest, p.size, p.kind)
            if report.error:  # inputs it could not stage are not coming there
                for states in self.holders.values():
                    if states.get(node) == CREATING:
                        del states[node]

    def mark(self, node: str, digest: str, state: str | None) -> None:
        """Set ``node``'s state for ``digest`` (``CREATING``, ``READY``, or None: it holds nothing)."""
        with self._lock:
            states = self.holders.setdefault(digest, {})
            if state is None:
                states.pop(node, None)
            else:
                states[node] = state

    def states(self, digest: str) -> dict[str, str]:
        """A copy of who holds ``digest`` and how (node -> ``CREATING`` or ``READY``)."""
        with self._lock:
            return dict(self.holders.get(digest, {}))

    def drop_node(self, node: str) -> None:
        """``node`` left: it holds nothing any more."""
        with self._lock:
            self.caches.pop(node, None)
            for states in self.holders.values():
                states.pop(node, None)

    def sources(self, digest: str) -> tuple[Source, ...]:
        """The ready holders of ``digest`` as fetch sources (their cache entries)."""
        with self._lock:
            out = []
            for node, state in self.holders.get(digest, {}).items():
                where = self.caches.get(node)
                if state == READY and where is not None:
                    out.append(Source(node, where[0], os.path.join(where[1], "objects", digest[:2], digest)))
            return tuple(out)

    def kept_output(self, path: str) -> Kept | None:
        """The kept output an earlier task wrote as ``path``, if any."""
        with self._lock:
            return self.kept.get(path)

    def prefer(self, task: object) -> list[str]:
        """The nodes holding most bytes of ``task``'s inputs (ready or creating), best first."""
        held = self._held(task)
        return sorted(held, key=held.__getitem__, reverse=True)

    def best_holders(self, task: object) -> list[str]:
        """The nodes holding the most bytes of ``task``'s inputs (ready or creating; ties all named).

        The scheduler's ``holders`` hook: where the task's inputs already are,
        for the locality counts and the freed slot's rule (``schedule/locality.py``).
        """
        held = self._held(task)
        if not held:
            return []
        most = max(held.values())
        return [n for n, b in held.items() if b == most]

    def _held(self, task: object) -> dict[str, int]:
        """Bytes of ``task``'s inputs each node holds (ready or creating; the submitter is not a node)."""
        data: DataOrder | None = getattr(task, "data", None)
        held: dict[str, int] = {}
        if data is None or not data.inputs:
            return held
        with self._lock:
            for ref in data.inputs:
                for node in self.holders.get(ref.digest, ()):
                    if node != SUBMITTER:
                        held[node] = held.get(node, 0) + ref.size
        return held
