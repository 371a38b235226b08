"""The node-wide memory ledger: reservations shared by every loadmaster process on a node.

Who runs this code: any process on the node that is about to start a task — the
executor's scheduler thread (through :meth:`MemoryLedger.try_reserve`, which
never waits for other reservations), ``loadmaster reserve`` (through the
blocking, FIFO :meth:`MemoryLedger.reserve`), other workflows and other Slurm
jobs of the same user. It never runs in a zygote or a task's forked child.

This module is the booking API: ask, wait, hold, track, release, look. The
parts it is made of, one job each:

- :mod:`~loadmaster.node.ledger.location`: which directory, and refusing one
  that is shared between nodes or writable by others;
- :mod:`~loadmaster.node.ledger.store`: the lock-guarded, crash-safe
  read-modify-write of the record and the holder files;
- :mod:`~loadmaster.node.ledger.record`: the entries and the checked file format;
- :mod:`~loadmaster.node.ledger.liveness`: dropping entries of dead processes;
- :mod:`~loadmaster.node.ledger.policy`: the admission rule (FIFO, capacity,
  ``MemAvailable``);
- :mod:`~loadmaster.node.ledger.wake`: sleeping without busy-spinning.

This package does *not* cover: deciding how much a task needs (the planner),
enforcing it (the monitor), ledgers shared across PID namespaces (pids there
cannot be checked: give each namespace its own ``LOADMASTER_LEDGER``), or
processes with different memory grants sharing one ledger (each checks ``H + r``
against its own capacity). Network file systems are refused (see
:func:`~loadmaster.node.ledger.location.check_local_fs`).

See also: ``docs/ledger.md``, ``loadmaster reserve``, ``loadmaster ledger``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import Any

from loadmaster.errors import InvalidSpec, LedgerError, LedgerTimeout
from loadmaster.node.ledger import policy, wake
from loadmaster.node.ledger.liveness import process_start_time
from loadmaster.node.ledger.location import default_ledger_dir, prepare_dir
from loadmaster.node.ledger.policy import Blocked, mem_available
from loadmaster.node.ledger.record import LedgerEntry, LedgerState, by_id
from loadmaster.node.ledger.store import RecordStore
from loadmaster.sizes import format_size

logger = logging.getLogger("loadmaster.node.ledger.book")


@dataclass(frozen=True)
class LedgerSnapshot:
    """What the ledger holds and who waits, as seen by one process at ``taken_at``.

    ``capacity_bytes`` is the capacity of the process that took it;
    ``free_bytes = max(0, capacity_bytes - held_bytes)``.
    """

    path: str
    capacity_bytes: int
    held_bytes: int
    free_bytes: int
    available_bytes: int
    holders: tuple[LedgerEntry, ...]
    waiters: tuple[LedgerEntry, ...]
    taken_at: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``loadmaster ledger --json`` prints it)."""
        return asdict(self)


class Reservation:
    """Memory held in the ledger until :meth:`release` (or the end of a ``with`` block).

    Attributes: ``id``, ``nbytes``, ``label``, ``pid`` and ``start_time`` (its holder).
    """

    def __init__(self, ledger: MemoryLedger, entry: LedgerEntry) -> None:
        self._ledger = ledger
        self.id = entry.id
        self.nbytes = entry.nbytes
        self.label = entry.label
        self.pid = entry.pid
        self.start_time = entry.start_time
        self.released = False

    def release(self) -> None:
        """Give the memory back (idempotent)."""
        self._ledger.release(self)

    def track(self, pid: int) -> None:
        """Say that the process tree of ``pid`` uses this reservation.

        The ledger then counts only the part it has not touched yet as unused, and
        keeps the reservation while ``pid`` lives even if the holder dies.
        """
        self._ledger._track(self, pid)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Reservation {self.id} {format_size(self.nbytes)} {self.label!r} {state}>"


class MemoryLedger:
    """A handle on the node's memory ledger directory.

    Settings are read once here: the directory (``path``, else
    ``$LOADMASTER_LEDGER``, else :func:`default_ledger_dir`) and the capacity
    (``capacity_bytes``, else ``detect_capacity().memory`` of this process).
    ``memory_available`` is the seam through which ``MemAvailable`` is read
    (tests give a function; default :func:`mem_available`).

    Thread-safe; each call takes the node-wide lock for about a millisecond.

    Raises (from the constructor):
        LedgerError: the directory is refused (see :func:`prepare_dir`).
    """

    safety_recheck_s: float = 1.0
    """A waiter re-checks at least this often even without a wake-up (for deaths
    that pidfds cannot report)."""

    memory_recheck_max_s: float = 0.05
    """Cap of the backoff of a waiter blocked only by the node's available memory."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        capacity_bytes: int | None = None,
        memory_available: Callable[[], int] | None = None,
    ) -> None:
        self.path = prepare_dir(default_ledger_dir() if path is None else path)
        self._store = RecordStore(self.path)
        if capacity_bytes is None:
            from loadmaster.node.capacity import detect_capacity

            cap = detect_capacity(self.path)
            self.capacity_bytes = cap.memory
            self.capacity_source = cap.sources.get("memory", "detect_capacity()")
        else:
            self.capacity_bytes = int(capacity_bytes)
            self.capacity_source = "capacity_bytes argument"
        self._available = memory_available or mem_available
        self._me_cache: tuple[int, int] | None = None

    # ------------------------------------------------------------ public API

    def reserve(
        self, nbytes: int, *, timeout_s: float | None = None, label: str = ""
    ) -> Reservation:
        """Wait until ``nbytes`` fit (in FIFO order with every other waiter) and hold them.

        Raises:
            InvalidSpec: ``nbytes`` is negative.
            LedgerError: ``nbytes`` exceeds the capacity (it could never fit).
            LedgerTimeout: not admitted within ``timeout_s``; the message names the
                request, what is free, and who holds and waits.
        """
        self._check_request(nbytes)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        me = self._me()
        ticket = LedgerEntry(0, me[0], me[1], int(nbytes), label, time.time())
        fifo: int | None = None

        def enqueue(state: LedgerState) -> LedgerEntry | tuple[Blocked, str]:
            nonlocal ticket, fifo
            ticket = replace(ticket, id=state.next_id)
            state.next_id += 1
            state.waits.append(ticket)
            outcome = self._admit(state, ticket)
            if not isinstance(outcome, LedgerEntry):
                fifo = wake.open_fifo(self._store.wake, ticket.id)
            return outcome

        pidfds: dict[tuple[int, int], int] = {}
        admitted = False
        try:
            outcome = self._store.transact(enqueue)
            delay_s = 0.005
            while not isinstance(outcome, LedgerEntry):
                blocked, _why = outcome
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if blocked is Blocked.MEMORY:
                    wait_s, delay_s = delay_s, min(delay_s * 2, self.memory_recheck_max_s)
                else:
                    wait_s, delay_s = self.safety_recheck_s, 0.005
                if deadline is not None:
                    wait_s = min(wait_s, deadline - now)
                assert fifo is not None
                wake.sleep(fifo, pidfds, self._store.peek(), ticket, wait_s)
                outcome = self._store.transact(lambda s: self._readmit(s, ticket))
            if isinstance(outcome, LedgerEntry):
                admitted = True
                return Reservation(self, outcome)
            raise self._timeout(ticket, timeout_s)
        finally:
            for fd in pidfds.values():
                os.close(fd)
            if fifo is not None:
                os.close(fifo)
            if not admitted:
                self._store.transact(lambda s: self._drop_ticket(s, ticket))
            if fifo is not None:
                try:
                    os.unlink(self._store.wake / str(ticket.id))
                except FileNotFoundError:
                    pass

    def try_reserve(self, nbytes: int, *, label: str = "") -> Reservation | None:
        """Hold ``nbytes`` if they fit now and no other request waits; else return None.

        Never waits for other reservations (only for the lock, held briefly by
        whoever changes the record).

        Raises:
            InvalidSpec: ``nbytes`` is negative.
            LedgerError: ``nbytes`` exceeds the capacity (it could never fit).
        """
        self._check_request(nbytes)
        me = self._me()

        def attempt(state: LedgerState) -> LedgerEntry | None:
            if state.waits:
                return None
            entry = LedgerEntry(state.next_id, me[0], me[1], int(nbytes), label, time.time())
            if policy.refusal(state, entry, capacity=self.capacity_bytes, available=self._available):
                return None
            state.next_id += 1
            state.holds.append(entry)
            return entry

        entry = self._store.transact(attempt)
        return None if entry is None else Reservation(self, entry)

    def release(self, reservation: Reservation) -> None:
        """Give a reservation's memory back and wake the waiters (idempotent)."""
        if reservation.released:
            return
        reservation.released = True

        def drop(state: LedgerState) -> None:
            for i, e in enumerate(state.holds):
                if (e.id, e.pid, e.start_time) == (
                    reservation.id,
                    reservation.pid,
                    reservation.start_time,
                ):
                    del state.holds[i]
                    return
            logger.debug("reservation %d was no longer in the ledger", reservation.id)

        self._store.transact(drop)

    def snapshot(self) -> LedgerSnapshot:
        """Return the live holders and waiters (dead ones are reclaimed first)."""
        state = self._store.transact(lambda s: s.copy())
        held = sum(e.nbytes for e in state.holds)
        return LedgerSnapshot(
            path=str(self.path),
            capacity_bytes=self.capacity_bytes,
            held_bytes=held,
            free_bytes=max(0, self.capacity_bytes - held),
            available_bytes=self._available(),
            holders=tuple(sorted(state.holds, key=by_id)),
            waiters=tuple(state.waits),
            taken_at=time.time(),
        )

    # ------------------------------------------------------------ helpers

    def _check_request(self, nbytes: int) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise InvalidSpec(f"memory reservation: {nbytes!r} is not a whole number of bytes")
        if nbytes > self.capacity_bytes:
            raise LedgerError(
                f"cannot reserve {format_size(nbytes)}: this process's memory capacity is "
                f"{format_size(self.capacity_bytes)} (from {self.capacity_source}), so it "
                f"could never fit. Ask for less, or run where more memory is granted."
            )

    def _admit(self, state: LedgerState, ticket: LedgerEntry) -> LedgerEntry | tuple[Blocked, str]:
        return policy.admit(state, ticket, capacity=self.capacity_bytes, available=self._available)

    def _readmit(self, state: LedgerState, ticket: LedgerEntry) -> LedgerEntry | tuple[Blocked, str]:
        if not any(w.id == ticket.id for w in state.waits):
            # Lost in a rebuild (our holder file was unreadable): queue again in our place.
            logger.warning("ticket %d was missing from the ledger; queued again", ticket.id)
            state.waits = sorted([*state.waits, ticket], key=by_id)
        return self._admit(state, ticket)

    @staticmethod
    def _drop_ticket(state: LedgerState, ticket: LedgerEntry) -> None:
        state.waits = [w for w in state.waits if w.id != ticket.id]

    def _timeout(self, ticket: LedgerEntry, timeout_s: float | None) -> LedgerTimeout:
        def describe(state: LedgerState) -> str:
            others = [w for w in state.waits if w.id != ticket.id]
            probe = LedgerState(state.next_id, state.holds, others)
            held = sum(e.nbytes for e in state.holds)
            blocked = self._admit(probe.copy(), ticket)
            why = "it would fit now" if isinstance(blocked, LedgerEntry) else blocked[1]
            holders = "; ".join(
                f"pid {e.pid} holds {format_size(e.nbytes)} for {e.label!r} "
                f"since {time.time() - e.since:.1f} s"
                for e in sorted(state.holds, key=lambda e: -e.nbytes)[:5]
            )
            return (
                f"could not reserve {format_size(ticket.nbytes)} for {ticket.label!r} within "
                f"{timeout_s:g} s in the memory ledger {str(self.path)!r}: {why}. Asked "
                f"{format_size(ticket.nbytes)}; free "
                f"{format_size(max(0, self.capacity_bytes - held))} of "
                f"{format_size(self.capacity_bytes)} capacity; MemAvailable "
                f"{format_size(self._available())}; held by: {holders or 'nobody'}"
                f"{f' (and {len(state.holds) - 5} more)' if len(state.holds) > 5 else ''}. "
                f"Next: allow a longer timeout, ask for less, or see `loadmaster ledger`."
            )

        return LedgerTimeout(self._store.transact(describe))

    def _track(self, reservation: Reservation, pid: int) -> None:
        start = process_start_time(pid)
        if start is None:
            return

        def set_track(state: LedgerState) -> None:
            state.holds = [
                replace(e, track_pid=pid, track_start_time=start)
                if (e.id, e.pid) == (reservation.id, reservation.pid)
                else e
                for e in state.holds
            ]

        self._store.transact(set_track)

    def _me(self) -> tuple[int, int]:
        pid = os.getpid()
        if self._me_cache is None or self._me_cache[0] != pid:
            start = process_start_time(pid)
            assert start is not None
            self._me_cache = (pid, start)
        return self._me_cache


__all__ = ["LedgerSnapshot", "MemoryLedger", "Reservation"]
