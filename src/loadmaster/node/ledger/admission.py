"""Node-wide admission: this executor's share of the node's memory ledger.

Runs in the node runtime (``node/runtime.py``), which owns it: in the
engine thread for the local backend (the scheduler's ``admit`` calls
:meth:`NodeAdmission.ensure`; the runtime's ``poll`` calls
:meth:`NodeAdmission.trim`). Other loadmaster processes on the node
(other executors, workflows, Slurm jobs, ``loadmaster reserve``) reserve
memory in the same ledger (``node/ledger/book.py``); an executor starts a task only
when the memory it allocates is held in the ledger.

Holding is done in chunks, not per task: the executor holds at least what its
running tasks are allocated, grows by a chunk (``chunk_bytes`` or what the
task needs, whichever is more) when a task needs more, and gives back chunks
it has not needed for ``linger_s``. So a stream of tasks costs no ledger I/O
at all (each ledger change is a locked read-modify-rename of the record file,
~0.1–0.3 ms), while a crashed executor's chunks are reclaimed by the ledger
like any dead holder's. Each chunk is tracked to this process's tree
(``Reservation.track``), so memory its tasks already use is not counted twice
against the node's ``MemAvailable``.

Does not cover: queueing in the ledger (the engine never blocks on it: a task
the ledger cannot admit now waits in the scheduler, and the engine asks again
after ``retry_s``), nor sizing.
"""

from __future__ import annotations

import logging
import os
import time

from loadmaster.errors import LedgerError
from loadmaster.node.ledger.book import MemoryLedger, Reservation
from loadmaster.sizes import format_size

log = logging.getLogger("loadmaster.node.admission")


class NodeAdmission:
    """Holds ledger memory for one executor, in chunks."""

    def __init__(self, ledger: MemoryLedger, *, chunk_bytes: int, linger_s: float = 2.0,
                 retry_s: float = 0.05, label: str = "executor") -> None:
        self.ledger = ledger
        self.chunk_bytes = chunk_bytes
        self.linger_s = linger_s
        self.retry_s = retry_s
        self.label = label
        self.chunks: list[Reservation] = []
        self.held = 0
        self.blocked_since: float | None = None
        self._last_refusal = 0.0
        self._surplus_since: float | None = None
        self._warned = False

    def ensure(self, in_use: int) -> bool:
        """Make sure ``in_use`` bytes are held; return False if the ledger refuses now."""
        if in_use <= self.held:
            return True
        if time.monotonic() - self._last_refusal < self.retry_s:
            return False  # refused moments ago: ask the ledger again only after retry_s
        need = in_use - self.held
        want = min(max(need, self.chunk_bytes), max(need, self.ledger.capacity_bytes - self.held))
        try:
            res = self.ledger.try_reserve(want, label=self.label)
            if res is None and want > need:
                res = self.ledger.try_reserve(need, label=self.label)
        except LedgerError as exc:
            log.warning("node memory ledger refused %s: %s", format_size(need), exc)
            res = None
        if res is None:
            self._last_refusal = time.monotonic()
            if self.blocked_since is None:
                self.blocked_since = time.monotonic()
                if not self._warned:
                    self._warned = True
                    snap = self.ledger.snapshot()
                    log.warning(
                        "waiting for node memory: this executor needs %s more; the ledger %s holds %s "
                        "of %s for %d reservation(s) (see `loadmaster ledger`)",
                        format_size(need), snap.path, format_size(snap.held_bytes),
                        format_size(snap.capacity_bytes), len(snap.holders),
                    )
            return False
        try:
            res.track(os.getpid())
        except Exception as exc:  # tracking only refines the MemAvailable rule
            log.debug("could not track reservation %s: %s", res, exc)
        self.chunks.append(res)
        self.held += res.nbytes
        self.blocked_since = None
        return True

    def trim(self, in_use: int) -> float | None:
        """Give back chunks unneeded for ``linger_s``; return seconds until the next check, if any."""
        if not self.chunks:
            return None
        last = self.chunks[-1]
        if self.held - last.nbytes < in_use:
            self._surplus_since = None
            return None
        now = time.monotonic()
        if self._surplus_since is None:
            self._surplus_since = now
        if now - self._surplus_since < self.linger_s:
            return self.linger_s - (now - self._surplus_since)
        self.chunks.pop()
        self.held -= last.nbytes
        last.release()
        self._surplus_since = None
        return self.trim(in_use) if self.chunks else None

    def close(self) -> None:
        """Give everything back."""
        for res in self.chunks:
            try:
                res.release()
            except Exception as exc:
                log.warning("could not release %s: %s", res, exc)
        self.chunks.clear()
        self.held = 0
