"""The client's choice of a transfer's source, and the limits that keep distribution a tree, not a star.

Runs in the client (the engine thread, or any thread: one lock). Holder
states live in the :class:`~loadmaster.data.replicas.ReplicaTable` (one
table: ``creating`` while a node's copy arrives, ``ready`` once committed);
the planner adds who is reachable where (:meth:`TransferPlanner.add_node`)
and who is sending to whom now.

:meth:`TransferPlanner.plan` picks, for a digest and a destination node, the
source with the **fewest current outgoing transfers**, then one on the
**same host**, then at random, among the holders not at their limit: ready
holders and ``creating`` ones alike (a node whose copy is arriving serves it
as it arrives, so a chain or tree forms and the bytes are pipelined; a
``creating`` holder counts only while a planned transfer feeds it, so the
sources form a DAG and two nodes never wait on each other). The
submitter (``"client"``) is a source like any other but with a small limit
(``submitter_limit``, 1 by default): the first node takes the file from it,
the next from that node, and so on; never a star from the submitter.

Both limits, the source's outgoing and the destination's incoming, count
source-destination pairs (several files one source sends one destination go
one after another: one transfer between them), and are
**reserved when the transfer is planned** (not when it starts) and released
exactly once by :meth:`release` whatever happened: done (the destination
becomes ``ready``), failed, timed out (:meth:`expire`), or a node died
(:meth:`remove_node` releases every reservation it was part of). A failed
transfer drops the destination's ``creating`` state, so nobody is sent to it.
``plan`` returns None when every holder is at its limit or the destination
is: the caller waits (:meth:`wait_plan` blocks until a release) rather than
exceeding a limit.

A reservation also lists alternates (other holders, ordered the same way)
for the fetcher to resume from if its source dies; those are not reserved
(a resumption is short and rare; it may briefly exceed a limit by one).

Does not cover: moving bytes (``peer.py``, ``server.py``), placement
(``ReplicaTable.prefer``).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loadmaster.data.refs import Source
from loadmaster.data.replicas import CREATING, READY, SUBMITTER, ReplicaTable

OUTCOMES = ("done", "failed", "timeout", "dead")


@dataclass(frozen=True, slots=True)
class Peer:
    """A node that can send: its host, transfer server address and outgoing limit."""

    name: str
    host: str
    address: str
    limit: int


@dataclass(slots=True)
class Reservation:
    """A planned transfer: ``digest`` from ``source`` to ``dest``, both limits held until released."""

    id: int
    digest: str
    size: int
    dest: str
    source: Source
    alternates: tuple[Source, ...]
    deadline: float
    outcome: str = ""  # set once by release()
    started: float = field(default_factory=time.monotonic)

    @property
    def sources(self) -> tuple[Source, ...]:
        """The source, then the alternates (what a fetcher is given)."""
        return (self.source, *self.alternates)


class TransferPlanner:
    """Chooses sources and keeps the limits (see the module docstring).

    Args:
        replicas: the client's replica table (a new one by default).
        source_limit: outgoing transfers a node may serve at once.
        dest_limit: incoming transfers a node may take at once.
        submitter_limit: outgoing transfers the submitter may serve at once.
        timeout_s: a reservation not released by then is released as ``"timeout"`` by :meth:`expire`.
        rng: the tie breaker (seed it for a reproducible test).
        clock: seconds (monotonic).
    """

    def __init__(self, replicas: ReplicaTable | None = None, *, source_limit: int = 2, dest_limit: int = 2,
                 submitter_limit: int = 1, timeout_s: float = 600.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.replicas = replicas or ReplicaTable()
        self.source_limit, self.dest_limit, self.submitter_limit = source_limit, dest_limit, submitter_limit
        self.timeout_s, self.rng, self.clock = timeout_s, rng or random.Random(), clock
        self._cond = threading.Condition()
        self._peers: dict[str, Peer] = {}
        self._out: dict[str, int] = {}
        self._in: dict[str, int] = {}
        self._pairs: dict[tuple[str, str], int] = {}  # (source, dest) -> live reservations between them
        self._live: dict[int, Reservation] = {}
        self._ids = itertools.count(1)
        self.log: list[tuple[str, str, str, str]] = []  # (digest, source, dest, outcome), for reports and tests

    # ── who is there ──────────────────────────────────────────────────────────
    def add_node(self, name: str, host: str, address: str, limit: int | None = None) -> None:
        """``name`` serves transfers at ``address`` (``"ip:port"``) on ``host``."""
        with self._cond:
            self._peers[name] = Peer(name, host, address, self.source_limit if limit is None else limit)

    def add_submitter(self, host: str, address: str) -> None:
        """The submitter's own transfer server (its declared files), with ``submitter_limit``."""
        self.add_node(SUBMITTER, host, address, self.submitter_limit)

    def declare(self, digest: str, node: str = SUBMITTER) -> None:
        """``node`` (the submitter by default) holds ``digest`` ready."""
        self.replicas.mark(node, digest, READY)

    def remove_node(self, name: str) -> list[Reservation]:
        """``name`` died or left: release (as ``"dead"``) every reservation it was in; it holds nothing."""
        with self._cond:
            self._peers.pop(name, None)
            hit = [r for r in self._live.values() if name in (r.dest, r.source.node)]
        for r in hit:
            self.release(r, "dead")
        self.replicas.drop_node(name)
        return hit

    # ── planning ──────────────────────────────────────────────────────────────
    def outgoing(self, node: str) -> int:
        """Transfers ``node`` is reserved to send now."""
        with self._cond:
            return self._out.get(node, 0)

    def incoming(self, node: str) -> int:
        """Transfers ``node`` is reserved to receive now."""
        with self._cond:
            return self._in.get(node, 0)

    def live(self) -> list[Reservation]:
        """Reservations not released yet."""
        with self._cond:
            return list(self._live.values())

    def plan(self, digest: str, size: int, dest: str) -> Reservation | None:
        """Reserve a transfer of ``digest`` to ``dest``; None when every holder (or ``dest``) is at its limit.

        Raises:
            LookupError: nobody holds ``digest``, or ``dest`` holds it already.
        """
        with self._cond:
            return self._plan(digest, size, dest)

    def wait_plan(self, digest: str, size: int, dest: str, timeout_s: float | None = None) -> Reservation:
        """Like :meth:`plan`, but wait for a release when every holder is busy.

        Raises:
            LookupError: as :meth:`plan`.
            TimeoutError: still nothing free after ``timeout_s``.
        """
        end = None if timeout_s is None else self.clock() + timeout_s
        with self._cond:
            while True:
                r = self._plan(digest, size, dest)
                if r is not None:
                    return r
                left = None if end is None else end - self.clock()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no source of {digest[:16]} for {dest} freed up in {timeout_s} s")
                self._cond.wait(left)

    def _plan(self, digest: str, size: int, dest: str) -> Reservation | None:
        states = self.replicas.states(digest)
        if states.get(dest) == READY:
            raise LookupError(f"{dest} holds {digest[:16]} already")
        fed = {x.dest for x in self._live.values() if x.digest == digest}
        # A creating holder counts only while a planned transfer feeds it: sources form a DAG, never a cycle.
        holders = [n for n, st in states.items()
                   if n != dest and n in self._peers and (st == READY or (st == CREATING and n in fed))]
        if not holders:
            raise LookupError(f"nobody reachable holds {digest[:16]}")
        dest_host = self._peers[dest].host if dest in self._peers else ""
        # A source already sending dest another file costs no more of either limit (see _pair).
        pairs = self._pairs if dest not in fed else {}
        ranked = sorted(holders, key=lambda n: ((n, dest) not in pairs, self._out.get(n, 0),
                                                self._peers[n].host != dest_host, self.rng.random()))
        dest_full = self._in.get(dest, 0) >= self.dest_limit
        free = [n for n in ranked if (n, dest) in pairs
                or (not dest_full and self._out.get(n, 0) < self._peers[n].limit)]
        if not free:
            return None
        src = free[0]
        # Alternates to resume from: ready holders first (they will not stop short), then the rest.
        alts = sorted((n for n in ranked if n != src), key=lambda n: (states[n] != READY, ranked.index(n)))
        r = Reservation(next(self._ids), digest, size, dest, self._source(src, digest),
                        tuple(self._source(n, digest) for n in alts), self.clock() + self.timeout_s)
        self._pair(src, dest, +1)
        self._live[r.id] = r
        if states.get(dest) is None:
            self.replicas.mark(dest, digest, CREATING)
        return r

    def _pair(self, src: str, dest: str, step: int) -> None:
        """Count a reservation from ``src`` to ``dest`` (``step`` +1 or -1); the limits count pairs.

        A node stages an order's inputs one after another (and a few orders at
        once, ``stagers.py``), so the files one source sends one destination
        share that destination's one link: they hold one of the source's
        outgoing and one of the destination's incoming transfers between them.
        (Counted per file, the submitter, at its limit of 1 with a node's first
        file, had no reservation left for that node's second: it went
        unreserved, to every node at once, a star.)
        """
        key = (src, dest)
        n = self._pairs.get(key, 0) + step
        if n:
            self._pairs[key] = n
        else:
            del self._pairs[key]
        if (step > 0 and n == 1) or n == 0:
            self._out[src] = self._out.get(src, 0) + step
            self._in[dest] = self._in.get(dest, 0) + step

    def _source(self, node: str, digest: str) -> Source:
        p = self._peers[node]
        return Source(node, p.host, "", p.address)

    # ── releasing ─────────────────────────────────────────────────────────────
    def release(self, r: Reservation, outcome: str) -> bool:
        """Release ``r``'s limits once; False if it was released already.

        ``outcome``: ``"done"``, ``"failed"``, ``"timeout"`` or ``"dead"``.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r}: one of {OUTCOMES}")
        with self._cond:
            if r.id not in self._live:
                return False
            del self._live[r.id]
            r.outcome = outcome
            src = r.source.node
            self._pair(src, r.dest, -1)
            self.log.append((r.digest, src, r.dest, outcome))
            if outcome == "done":
                self.replicas.mark(r.dest, r.digest, READY)
            elif (not any(x.dest == r.dest and x.digest == r.digest for x in self._live.values())
                  and self.replicas.states(r.digest).get(r.dest) == CREATING):
                self.replicas.mark(r.dest, r.digest, None)
            self._cond.notify_all()
            return True

    def expire(self) -> list[Reservation]:
        """Release (as ``"timeout"``) every reservation past its deadline; return them."""
        now = self.clock()
        with self._cond:
            late = [r for r in self._live.values() if r.deadline <= now]
        return [r for r in late if self.release(r, "timeout")]
