"""The ledger's admission rule: whether a request fits, and its inputs from ``/proc``.

Who runs this code: every ledger user, inside a locked section, when it asks
for memory (:meth:`~loadmaster.node.ledger.book.MemoryLedger.reserve`,
:meth:`~loadmaster.node.ledger.book.MemoryLedger.try_reserve`).

A request of ``r`` bytes is admitted when its ticket is the oldest live ticket
(FIFO; a non-blocking ``try_reserve`` is admitted only when no ticket waits at
all) and both hold::

    H + r <= C          # H: sum of live reservations, C: this process's memory capacity
    r + U <= A          # A: MemAvailable now, U: reserved but not yet used by holders

``U`` is the sum over held reservations of ``max(0, reserved - in use)``; the
memory a reservation uses is known only when its holder said which process
tree runs under it (``Reservation.track``, ``loadmaster reserve`` tracks
its command); an untracked reservation counts as wholly unused (safe: it may be
counted twice, once in ``U`` and once outside ``A``). Together this is
``H + r <= min(C, (H - U) + A)``: memory in use by reserved tasks is already
outside ``A``, memory reserved but not yet touched is not.

Reads: ``/proc/meminfo`` (``MemAvailable``) and ``/proc/<pid>/smaps_rollup``
of tracked task trees (their memory in use), the latter only when the cheap
check (everything held counted as unused) refuses. Writes nothing; it changes
only the state it is given.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from loadmaster.errors import LedgerError
from loadmaster.node.ledger.liveness import process_start_time
from loadmaster.node.ledger.record import LedgerEntry, LedgerState
from loadmaster.node.measure import procfs
from loadmaster.sizes import format_size


class Blocked(enum.Enum):
    """Why a request is not admitted yet (decides how its waiter sleeps)."""

    QUEUE = "queue"
    CAPACITY = "capacity"
    MEMORY = "memory"


def admission_refusal(
    request: int, *, held: int, capacity: int, available: int, unused: int
) -> tuple[Blocked, str] | None:
    """Return why ``request`` bytes do not fit now, or None when they do.

    The rule (see the module docstring): ``held + request <= capacity`` and
    ``request + unused <= available``.
    """
    if held + request > capacity:
        return Blocked.CAPACITY, (
            f"the ledger holds {format_size(held)} of its {format_size(capacity)} capacity, "
            f"{format_size(max(0, capacity - held))} free"
        )
    if request + unused > available:
        return Blocked.MEMORY, (
            f"the node has {format_size(available)} available (MemAvailable), of which "
            f"{format_size(unused)} is reserved by holders but not yet in use"
        )
    return None


def mem_available() -> int:
    """Return ``MemAvailable`` of ``/proc/meminfo`` in bytes."""
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise LedgerError("/proc/meminfo has no MemAvailable line (Linux 3.14 or later needed)")


def tree_usage_bytes(pid: int) -> int:
    """Return the memory in use by ``pid`` and its descendants: the sum of their
    proportional set sizes (shared pages split between sharers), RSS where
    ``smaps_rollup`` cannot be read."""
    total = 0
    for p in procfs.tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup", "rb") as f:
                data = f.read()
            i = data.index(b"\nPss:")
            total += int(data[i + 5 : data.index(b"kB", i)]) * 1024
        except (OSError, ValueError):
            total += procfs.memory_marks(p)[1]
    return total


def refusal(
    state: LedgerState, entry: LedgerEntry, *, capacity: int, available: Callable[[], int]
) -> tuple[Blocked, str] | None:
    """Apply :func:`admission_refusal` to ``entry`` against the holds of ``state``."""
    held = sum(e.nbytes for e in state.holds)
    avail = available()
    # Cheap first: everything held counted as unused. Measure trees only if that fails.
    if admission_refusal(entry.nbytes, held=held, capacity=capacity, available=avail, unused=held) is None:
        return None
    unused = 0
    for e in state.holds:
        alive = e.track_pid and process_start_time(e.track_pid) == e.track_start_time
        used = tree_usage_bytes(e.track_pid) if alive else 0
        unused += max(0, e.nbytes - used)
    return admission_refusal(entry.nbytes, held=held, capacity=capacity, available=avail, unused=unused)


def admit(
    state: LedgerState, ticket: LedgerEntry, *, capacity: int, available: Callable[[], int]
) -> LedgerEntry | tuple[Blocked, str]:
    """Turn ``ticket`` into a hold of ``state`` if it is first in the queue and fits;
    else return why not."""
    ahead = [w for w in state.waits if w.id < ticket.id]
    if ahead:
        first = ahead[0]
        return Blocked.QUEUE, (
            f"{len(ahead)} older request(s) wait ahead of it (first: pid {first.pid} "
            f"asking {format_size(first.nbytes)} for {first.label!r})"
        )
    why = refusal(state, ticket, capacity=capacity, available=available)
    if why is not None:
        return why
    state.waits = [w for w in state.waits if w.id != ticket.id]
    state.holds.append(ticket)
    return ticket


__all__ = ["Blocked", "admission_refusal", "admit", "mem_available", "refusal", "tree_usage_bytes"]
