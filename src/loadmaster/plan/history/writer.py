"""A thread that writes task reports to the history, so the engine's loop never waits on SQLite.

A write waits while another process holds the database's write lock (up to
the history's ``timeout_s``, 60 s by default); on the engine thread that
stopped every dispatch on the node for as long. The engine hands each batch of
reports to :meth:`HistoryWriter.put` (a list append and an event) and goes on;
this thread writes what has queued up meanwhile in one transaction, through a
connection of its own (a second :class:`History` on the same file), so that the
planner's reads on the engine thread do not queue behind a write that waits.
:meth:`HistoryWriter.close` writes what is left and returns when it has
landed: nothing is lost at shutdown.

An in-memory history (``":memory:"``) has no other writer to wait for; it is
written through the one object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from loadmaster.plan.history.store import History
from loadmaster.results import TaskReport

log = logging.getLogger("loadmaster.history")


class HistoryWriter:
    """Writes batches of reports of one run on a thread of its own (started on the first batch)."""

    def __init__(self, history: History, run_id: int) -> None:
        self.history = history
        self.run_id = run_id
        self._pending: list[TaskReport] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.written = 0  # reports written (tests, diagnosis)

    def put(self, reports: Sequence[TaskReport]) -> None:
        """Queue ``reports`` to be written (never blocks on the database)."""
        with self._lock:
            self._pending.extend(reports)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loadmaster-history", daemon=True)
                self._thread.start()
        self._wake.set()

    def close(self) -> None:
        """Write what is queued, wait until it has landed, and stop the thread."""
        with self._lock:
            self._closing = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()

    def _connection(self) -> History:
        path = self.history.path
        if path == ":memory:" or not isinstance(self.history, History):
            return self.history
        try:
            return History(path, timeout_s=self.history.timeout_s)
        except Exception:
            log.warning("history %s: a second connection for writing could not be opened; writing "
                        "through the first", path, exc_info=True)
            return self.history

    def _run(self) -> None:
        own = self._connection()
        try:
            while True:
                self._wake.wait()
                with self._lock:
                    self._wake.clear()
                    batch, self._pending = self._pending, []
                    closing = self._closing
                if batch:
                    try:
                        own.record(self.run_id, batch)
                        self.written += len(batch)
                    except Exception:
                        log.exception("could not write %d task reports to the history %s", len(batch),
                                      self.history.path)
                if closing and not self._pending:
                    return
        finally:
            if own is not self.history:
                own.close()
