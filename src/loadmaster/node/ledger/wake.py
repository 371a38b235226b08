"""Waiting for the ledger without busy-spinning: wake-up pipes and pidfds.

Who runs this code: a process blocked in
:meth:`~loadmaster.node.ledger.book.MemoryLedger.reserve` (:func:`open_fifo`,
:func:`sleep`), and whoever removes a hold or a ticket (:func:`notify`, from
:meth:`~loadmaster.node.ledger.store.RecordStore.transact`).

A waiter sleeps in ``poll()`` on its own named pipe ``wake/<ticket>`` (written
whenever a hold or ticket goes away) and on a pidfd of every process ahead of
it (readable the moment that process dies, even by SIGKILL, even when it is
not our child). These two cover every event that can let a waiter in, except
one: memory freed by processes outside the ledger. Only when a waiter is
blocked by the node's available memory does it re-check on a bounded
exponential backoff (5 ms doubling to ``MemoryLedger.memory_recheck_max_s``,
50 ms): there is no event for "MemAvailable rose", and a 50 ms delay is small
next to a task's run. Otherwise a slow safety re-check
(``MemoryLedger.safety_recheck_s``, 1 s) covers what has no event (a process
in a PID namespace where ``pidfd_open`` fails). The caller chooses the wait;
this module only sleeps and wakes.
"""

from __future__ import annotations

import os
import select
from pathlib import Path

from loadmaster.node.ledger.liveness import process_start_time
from loadmaster.node.ledger.record import LedgerEntry, LedgerState


def open_fifo(wake_dir: Path, ticket_id: int) -> int:
    """Create the wake-up pipe of ``ticket_id`` and return it open for reading."""
    path = wake_dir / str(ticket_id)
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:  # left by a dead waiter of a lost record
        os.unlink(path)
        os.mkfifo(path, 0o600)
    # Read-write: we are our own writer, so poll() never reports a hang-up.
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def sleep(
    fifo: int, pidfds: dict[tuple[int, int], int], state: LedgerState, ticket: LedgerEntry, wait_s: float
) -> None:
    """Sleep until a wake-up byte, the death of a process ahead of ``ticket`` in
    ``state`` (an unlocked read: a hint only), or ``wait_s``.

    ``pidfds`` is the caller's cache of open pidfds by (pid, start time); the
    caller closes them when it stops waiting.
    """
    watch: set[tuple[int, int]] = set()
    for e in state.holds + [w for w in state.waits if w.id < ticket.id]:
        if process_start_time(e.pid) == e.start_time:
            watch.add((e.pid, e.start_time))
        elif e.track_pid and process_start_time(e.track_pid) == e.track_start_time:
            watch.add((e.track_pid, e.track_start_time))  # its holder died, its task lives
        else:
            return  # dead: the next locked section reclaims it, re-check at once
    for key in list(pidfds):
        if key not in watch:
            os.close(pidfds.pop(key))
    for key in watch - pidfds.keys():
        try:
            fd = os.pidfd_open(key[0])
        except OSError:
            return  # gone since: re-check at once
        if process_start_time(key[0]) != key[1]:
            os.close(fd)
            return  # the pid now names another process: the one we wanted is dead
        pidfds[key] = fd
    poller = select.poll()
    poller.register(fifo, select.POLLIN)
    for fd in pidfds.values():
        poller.register(fd, select.POLLIN)
    poller.poll(max(0.0, wait_s) * 1000)
    try:
        while os.read(fifo, 4096):
            pass
    except BlockingIOError:
        pass


def notify(state: LedgerState, wake_dir: Path) -> None:
    """Write a wake-up byte into the pipe of every waiter in ``state``."""
    for w in state.waits:
        try:
            fd = os.open(wake_dir / str(w.id), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # no reader (dead) or no pipe yet
        try:
            os.write(fd, b"!")
        except OSError:
            pass  # pipe full: a wake-up is already pending
        finally:
            os.close(fd)


__all__ = ["notify", "open_fifo", "sleep"]
