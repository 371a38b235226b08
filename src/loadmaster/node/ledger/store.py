"""The ledger directory's locked, crash-safe read-modify-write of the record.

Who runs this code: every ledger user, for every change and every look
(:class:`~loadmaster.node.ledger.book.MemoryLedger` holds one
:class:`RecordStore`). It never runs in a zygote or a task's forked child.

::

    process A ─┐                     <dir>/lock             flock(LOCK_EX) around changes
    process B ─┼── flock ── read ──▶ <dir>/record           header + JSON: holds, queue
    process C ─┘   change   write ─▶ <dir>/holders/P-S.json each process's own entries
                   notify  ───────▶ <dir>/wake/<ticket>    one FIFO per waiter (wake-up)

Reads and writes, all in one directory (mode 0700, owned by the user; see
:mod:`loadmaster.node.ledger.location`):

- ``lock``: an empty file; ``flock(LOCK_EX)`` on a fresh open file description
  guards every read-modify-write of the record, so threads of one process
  exclude each other too (POSIX ``fcntl`` locks would not: they belong to the
  process and vanish when *any* of its descriptors of the file is closed). The
  kernel drops the lock when its holder dies, even by SIGKILL.
- ``record`` (format: :mod:`loadmaster.node.ledger.record`): replaced whole
  (write to a temporary name, then ``rename``), and its length and checksum
  are verified on every read. A record that is missing, torn or corrupt is
  never trusted: it is rebuilt from the holder files (a warning is logged).
- ``holders/<pid>-<starttime>.json``: the same format, holding only the entries
  of that process. Written after the record in the same locked section, only
  when they changed. They exist so the record can be rebuilt from the live
  holders; entries of dead processes are dropped while rebuilding.
- ``wake/<ticket>``: the waiters' pipes (:mod:`loadmaster.node.ledger.wake`);
  a rebuild removes those of tickets it no longer knows.

Every locked section first drops the entries of dead processes
(:mod:`loadmaster.node.ledger.liveness`), and wakes the waiters when a hold or
ticket went away.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from loadmaster.errors import LedgerError
from loadmaster.node.ledger.liveness import reclaim
from loadmaster.node.ledger.location import ENV_VAR
from loadmaster.node.ledger.record import LedgerState, by_id, decode_record, encode_record
from loadmaster.node.ledger.wake import notify

logger = logging.getLogger("loadmaster.node.ledger.store")

T = TypeVar("T")


class RecordStore:
    """The files of one ledger directory (already checked by ``prepare_dir``).

    Thread-safe: every :meth:`transact` takes the node-wide lock on a fresh
    open file description.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record = path / "record"
        self.lock = path / "lock"
        self.holders = path / "holders"
        self.wake = path / "wake"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the node-wide lock of the ledger for the ``with`` block."""
        # A fresh open file description per section, so threads exclude each other.
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def peek(self) -> LedgerState:
        """Read the record without the lock, for choosing what to sleep on (a hint only)."""
        try:
            return LedgerState.from_json(decode_record(self.record.read_bytes()))
        except (OSError, ValueError):
            return LedgerState()

    def transact(self, change: Callable[[LedgerState], T]) -> T:
        """Under the lock: load (rebuild if needed), reclaim the dead, apply ``change``,
        write what changed, wake the waiters if anything went away; return what
        ``change`` returned.

        Raises:
            LedgerError: the record or a holder file could not be written.
        """
        with self.locked():
            old, dirty = self._load()
            state = old.copy()
            reclaim(state, self.wake)
            result = change(state)
            if dirty or state != old:
                self._commit(old, state)
            gone_holds = {e.id for e in old.holds} - {e.id for e in state.holds}
            gone_waits = {e.id for e in old.waits} - {e.id for e in state.waits}
            if gone_holds or gone_waits:
                notify(state, self.wake)
            return result

    def _load(self) -> tuple[LedgerState, bool]:
        try:
            data = self.record.read_bytes()
        except FileNotFoundError:
            return self._rebuild(None), True
        try:
            return LedgerState.from_json(decode_record(data)), False
        except ValueError as exc:
            return self._rebuild(str(exc)), True

    def _rebuild(self, why: str | None) -> LedgerState:
        """Return the state made from the holder files (the caller writes it)."""
        state = LedgerState()
        for child in sorted(self.holders.iterdir()):
            if not child.name.endswith(".json"):
                continue
            try:
                part = LedgerState.from_json(decode_record(child.read_bytes()))
            except (OSError, ValueError) as exc:
                logger.warning(
                    "ledger holder file %s is unreadable (%s); its entries are lost", child, exc
                )
                child.unlink(missing_ok=True)
                continue
            state.holds += part.holds
            state.waits += part.waits
        state.waits.sort(key=by_id)
        ids = [e.id for e in state.holds + state.waits]
        state.next_id = max(ids, default=0) + 1
        if why is not None:
            logger.warning(
                "ledger record %s was not trusted (%s); rebuilt from the holder files: "
                "%d reservation(s), %d waiter(s) before dropping dead processes",
                self.record,
                why,
                len(state.holds),
                len(state.waits),
            )
        tickets = {str(w.id) for w in state.waits}
        for pipe in self.wake.iterdir():
            if pipe.name not in tickets:
                pipe.unlink(missing_ok=True)
        return state

    def _commit(self, old: LedgerState, new: LedgerState) -> None:
        try:
            self._write(self.record, encode_record(new.to_json()))
            before, after = old.projection(), new.projection()
            for key in before.keys() | after.keys():
                if before.get(key) == after.get(key):
                    continue
                path = self.holders / f"{key}.json"
                if key in after:
                    self._write(path, encode_record(after[key].to_json()))
                else:
                    path.unlink(missing_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot write the memory ledger in {str(self.path)!r}: {exc}. "
                f"Free space there (it is usually tmpfs) or set {ENV_VAR} elsewhere."
            ) from exc

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Under the lock, so one temporary name per directory is enough; a leftover of a
        # killed writer is simply overwritten.
        tmp = path.parent / ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)


__all__ = ["RecordStore"]
