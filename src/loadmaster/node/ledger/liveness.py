"""Liveness of the ledger's holders: entries of crashed processes never leak.

Who runs this code: every locked section of the ledger
(:meth:`~loadmaster.node.ledger.store.RecordStore.transact` calls
:func:`reclaim` first), and a waiter choosing whom to watch
(:mod:`loadmaster.node.ledger.wake`).

An entry stays while its process (pid *and* start time, so a reused pid does
not keep it) or its tracked process is alive and not a zombie. Nothing else is
needed to free a dead holder's memory: no lease to renew, no heartbeat, no
cleaner process.

Reads: ``/proc/<pid>/stat`` (field 22, the start time) of every entry's
process. Writes: removes ``wake/<ticket>`` pipes of dead waiters.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from loadmaster.node.ledger.record import LedgerEntry, LedgerState
from loadmaster.sizes import format_size

logger = logging.getLogger("loadmaster.node.ledger.liveness")


def process_start_time(pid: int) -> int | None:
    """Return the start time of ``pid`` (field 22 of ``/proc/<pid>/stat``, clock ticks
    since boot), or None when it does not exist or is a zombie (it holds no memory)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # fields[0] is field 3 (state)
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def reclaim(state: LedgerState, wake_dir: Path) -> None:
    """Drop the holds and tickets of ``state`` whose processes are gone (logged), and
    the wake-up pipes of dropped tickets."""
    starts: dict[int, int | None] = {}

    def alive(pid: int, start: int) -> bool:
        if pid not in starts:
            starts[pid] = process_start_time(pid)
        return starts[pid] == start

    def keep(e: LedgerEntry) -> bool:
        if alive(e.pid, e.start_time) or (
            e.track_pid and alive(e.track_pid, e.track_start_time)
        ):
            return True
        logger.info(
            "reclaimed %s %s by pid %d (start time %d) for %r since %.1f s: process gone",
            "reservation of" if e in state.holds else "request for",
            format_size(e.nbytes),
            e.pid,
            e.start_time,
            e.label,
            time.time() - e.since,
        )
        return False

    state.holds = [e for e in state.holds if keep(e)]
    live_waits = [e for e in state.waits if keep(e)]
    for e in state.waits:
        if e not in live_waits:
            (wake_dir / str(e.id)).unlink(missing_ok=True)
    state.waits = live_waits


__all__ = ["process_start_time", "reclaim"]
