"""The History object: one SQLite connection, its lock, its retries, its writes.

Who runs this code:

* **Client thread** (the user's): ``History(path)`` opens or creates the
  database, checks that it is a loadmaster history of a schema this code knows
  (``checks.py``), migrates an older schema forward (``schema.py``), and sets
  it to WAL mode. ``loadmaster history`` and the CLI's closing table read it
  through :meth:`History.category_summary` and :meth:`History.runs`.
* **Scheduler thread** (the executor's): :meth:`History.start_run`,
  :meth:`History.record` (a batch of finished reports, one short transaction)
  and :meth:`History.observations` (what a sizing strategy reads). The one
  connection is opened with ``check_same_thread=False`` and every use of it is
  guarded by one lock, so both threads may call any method.
* **Other processes**: any number of executors on the same machine may write
  to the same file at once. SQLite's WAL mode lets readers proceed while one
  writer commits; writers take the write lock up front (``BEGIN IMMEDIATE``),
  wait for it through SQLite's busy timeout, and retry on
  ``database is locked`` until ``timeout_s``. Nothing is lost.

What it reads and writes: one SQLite file (plus SQLite's own ``-wal`` and
``-shm`` files beside it), tables ``runs`` and ``reports`` (see
``docs/history.md``). The file carries ``PRAGMA application_id`` =
:data:`APPLICATION_ID` and ``PRAGMA user_version`` = :data:`SCHEMA_VERSION`.

A file that is not a loadmaster history raises
:class:`~loadmaster.errors.HistoryError` naming the file, and is never written
to: every check before initialisation or migration only reads. A new or empty
file is initialised.

This module does *not* cover: deciding allocations from the history
(``plan/strategy.py`` and the planner), the SQL of the reads (``queries.py``),
network file systems (SQLite's WAL needs shared memory on one host; on NFS the
journal mode stays as the file system allows and a warning is logged), or use
of one ``History`` object across ``fork`` (a child must open its own; using an
inherited one raises ``HistoryError``).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import platformdirs

from loadmaster.errors import HistoryError
from loadmaster.plan.history.checks import (
    HISTORY_ENV,
    check_identity,
    identify,
    prepare_file,
    sqlite_error,
    truncation,
)
from loadmaster.plan.history.queries import select_categories, select_observations, select_reports, summarise
from loadmaster.plan.history.rows import INSERT_REPORT, RUN_COLUMNS, CategorySummary, RunInfo, report_row, row_run
from loadmaster.plan.history.schema import APPLICATION_ID, LEARNED_MAX, SCHEMA_VERSION, MigrationFailed, migrate
from loadmaster.plan.history.schema import create as create_schema
from loadmaster.plan.strategy import Observation
from loadmaster.results import TaskReport
from loadmaster.spec import Resources

logger = logging.getLogger("loadmaster.history")

_T = TypeVar("_T")


UPSERT_LEARNED = (
    "INSERT INTO learned_imports (category, module, runs, last_seen) VALUES (?, ?, 1, ?) "
    "ON CONFLICT (category, module) DO UPDATE SET runs = runs + 1, last_seen = max(last_seen, excluded.last_seen)"
)
# A category keeps its LEARNED_MAX most recently seen modules (schema step 4).
PRUNE_LEARNED = (
    "DELETE FROM learned_imports WHERE category = ?1 AND module NOT IN (SELECT module FROM learned_imports "
    f"WHERE category = ?1 ORDER BY last_seen DESC, runs DESC, module LIMIT {LEARNED_MAX})"
)


def default_history_path() -> str:
    """Return the default database path.

    ``$LOADMASTER_HISTORY`` if set and not empty (``~`` expanded), else
    ``platformdirs.user_data_dir("loadmaster")/history.sqlite``. The directory
    is not created here; :class:`History` creates it when it opens the file.
    """
    env = os.environ.get(HISTORY_ENV, "")
    if env:
        return env if env == ":memory:" else os.path.expanduser(env)
    return os.path.join(platformdirs.user_data_dir("loadmaster"), "history.sqlite")


class History:
    """Stored task reports, per category, across runs.

    Args:
        path: the database file; ``None`` means :func:`default_history_path`;
            ``":memory:"`` keeps everything in this process (tests, dry runs).
            Missing parent directories are created.
        timeout_s: how long a write waits for other writers before giving up
            with ``HistoryError``.

    Raises:
        HistoryError: the file is not a loadmaster history (not SQLite,
            damaged, truncated, another application's database), was written
            by a newer loadmaster, or its directory cannot be written. The
            file is left exactly as it was.

    Opening runs ``PRAGMA quick_check``, so a damaged file is refused at once
    rather than in the middle of a run: opening a 100,000-report history
    (12 MB) took ~40 ms here, most of it that check.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, timeout_s: float = 60.0
    ) -> None:
        """Open or create the history; see the class docstring."""
        raw = default_history_path() if path is None else os.fspath(path)
        self._path = raw if raw == ":memory:" else os.path.abspath(os.path.expanduser(raw))
        self._timeout_s = float(timeout_s)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open()

    # ------------------------------------------------------------------ opening

    @property
    def path(self) -> str:
        """The database file (absolute), or ``":memory:"``."""
        return self._path

    @property
    def timeout_s(self) -> float:
        """How long a write waits for other writers."""
        return self._timeout_s

    def _open(self) -> sqlite3.Connection:
        """Check the file, connect, initialise a new file; return the connection."""
        if self._path != ":memory:":
            prepare_file(self._path)
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=min(self._timeout_s, 10.0),
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,  # scheduler thread; guarded by self._lock
            )
        except sqlite3.Error as exc:
            raise self._error(f"cannot open the history database: {exc}", exc) from exc
        try:
            self._check_and_initialise(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_and_initialise(self, conn: sqlite3.Connection) -> None:
        """Check application id, schema version and integrity; create the schema if new.

        Every statement before the schema is created only reads.
        """
        try:
            app_id, version, objects = self._retry(lambda: identify(conn))
            if app_id == 0 and not objects:
                self._initialise(conn)
                app_id, version, objects = self._retry(lambda: identify(conn))
            check_identity(self._path, app_id, version, objects)
            problems = self._retry(lambda: [r[0] for r in conn.execute("PRAGMA quick_check(5)")])
            if problems != ["ok"]:
                raise HistoryError(
                    f"history: {self._path!r} is damaged (SQLite quick_check: "
                    f"{'; '.join(map(str, problems))}{truncation(self._path)}). loadmaster will not "
                    "touch it. Restore it "
                    "from a copy, or move it away to start a new history.",
                    path=self._path,
                )
            if version < SCHEMA_VERSION:
                self._migrate(conn, version)
            conn.execute("PRAGMA foreign_keys = ON")
            if self._path != ":memory:":
                mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                if str(mode).lower() != "wal":
                    logger.warning(
                        "history %s: SQLite kept journal mode %r instead of WAL (a network file "
                        "system?); concurrent executors will wait for each other longer",
                        self._path,
                        mode,
                    )
                # WAL + NORMAL: a commit survives a crash of the process; only a power
                # loss can lose the last transactions.
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise self._error(f"cannot open {self._path!r}: {exc}", exc) from exc

    def _initialise(self, conn: sqlite3.Connection) -> None:
        """Create the schema in one transaction, unless another process just did."""

        def create() -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                app_id, _, objects = identify(conn)
                if app_id == 0 and not objects:
                    create_schema(conn)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    logger.info(
                        "history %s: created (schema version %d)", self._path, SCHEMA_VERSION
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._retry(create)

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """Bring a file at schema ``version`` up to :data:`SCHEMA_VERSION`, step by step.

        Raises:
            HistoryError: a step failed; it was rolled back, so the file stays
                whole at the version it reached (named in the message).
        """
        try:
            migrate(conn, self._path, self._retry, start=version)
        except MigrationFailed as exc:
            cause = exc.cause
            raise HistoryError(
                f"history: cannot migrate {self._path!r} from schema version {exc.at} to "
                f"{exc.step} ({type(cause).__name__}: {cause}). That step was rolled back: the "
                f"file is whole at version {exc.at} and an older loadmaster still reads it. "
                + (
                    "Another process held the history's write lock; retry when it is done."
                    if "locked" in str(cause) or "busy" in str(cause)
                    else "Check that the file and its directory are writable and the disk is not full."
                ),
                path=self._path,
            ) from cause

    # ------------------------------------------------------------------ plumbing

    def _error(self, what: str, exc: BaseException) -> HistoryError:
        """Return a HistoryError for SQLite's ``exc`` with evidence and a next step."""
        return sqlite_error(self._path, self._timeout_s, what, exc)

    def _retry(self, action: Callable[[], _T]) -> _T:
        """Run ``action``, retrying on ``database is locked``/``busy`` until ``timeout_s``.

        SQLite's busy handler already waits inside each statement; this loop
        covers the cases where SQLite returns SQLITE_BUSY without waiting.
        """
        deadline = time.monotonic() + self._timeout_s
        delay_s = 0.001
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                    raise
                logger.debug("history %s: %s; retrying in %.3f s", self._path, text, delay_s)
                time.sleep(delay_s * (0.5 + random.random()))
                delay_s = min(delay_s * 2, 0.1)

    @contextmanager
    def _connection(self, doing: str) -> Iterator[sqlite3.Connection]:
        """Yield the connection under the lock; turn SQLite errors into HistoryError."""
        with self._lock:
            if self._conn is None:
                raise HistoryError(
                    f"history: {self._path!r} is closed; cannot {doing}. Open a new History.",
                    path=self._path,
                )
            if os.getpid() != self._pid:
                raise HistoryError(
                    f"history: this History of {self._path!r} was opened in process {self._pid} "
                    f"and cannot be used in its forked child {os.getpid()}; open a new History "
                    "in the child.",
                    path=self._path,
                )
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._error(f"cannot {doing} in {self._path!r}: {exc}", exc) from exc

    def _write(self, doing: str, statements: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``statements`` in one short write transaction, retried while locked."""
        with self._connection(doing) as conn:

            def transaction() -> _T:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = statements(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result

            return self._retry(transaction)

    # ------------------------------------------------------------------ runs

    def start_run(self, *, label: str, capacity: Resources) -> int:
        """Record the start of a run on this host; return its id.

        Raises:
            HistoryError: the database cannot be written.
        """
        row = (
            label,
            socket.gethostname(),
            os.getpid(),
            time.time(),
            capacity.cores,
            capacity.memory,
            capacity.disk,
            capacity.gpus,
            capacity.wall_time,
        )

        def insert(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO runs (label, host, pid, started_at, cap_cores, cap_memory, cap_disk, "
                "cap_gpus, cap_wall_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            assert cur.lastrowid is not None
            return int(cur.lastrowid)

        return self._write("start a run", insert)

    def finish_run(self, run_id: int) -> None:
        """Record the end of a run (now).

        Raises:
            HistoryError: no run ``run_id`` in the file, or it cannot be written.
        """

        def update(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE runs SET finished_at = ? WHERE run_id = ?", (time.time(), run_id)
            ).rowcount

        if self._write("finish a run", update) != 1:
            raise HistoryError(
                f"history: no run {run_id} in {self._path!r}; start_run() returns the id to pass.",
                path=self._path,
            )

    def run(self, run_id: int) -> RunInfo | None:
        """Return run ``run_id``, or ``None`` if there is none."""
        with self._connection("read a run") as conn:
            row = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs r WHERE r.run_id = ?", (run_id,))
            found = row.fetchone()
        return None if found is None else row_run(found)

    def runs(self) -> list[RunInfo]:
        """Return every run, oldest first."""
        with self._connection("read the runs") as conn:
            rows = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs r ORDER BY r.run_id").fetchall()
        return [row_run(r) for r in rows]

    def latest_run(self) -> RunInfo | None:
        """Return the newest run, or ``None``."""
        with self._connection("read the latest run") as conn:
            found = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs r ORDER BY r.run_id DESC LIMIT 1"
            ).fetchone()
        return None if found is None else row_run(found)

    # ------------------------------------------------------------------ reports

    def record(self, run_id: int, reports: Sequence[TaskReport]) -> None:
        """Store ``reports`` of run ``run_id`` in one transaction (all or none).

        Called from the scheduler thread with the reports that finished since
        its last call. One ``executemany`` in one ``BEGIN IMMEDIATE`` ...
        ``COMMIT``: a batch of 100 reports took 1-1.7 ms here (median over 200
        batches into a 100,000-row file, WAL, ``synchronous=NORMAL``, 2-core
        VM; ~11 us per report, mostly building rows and JSON), 1,000 reports
        ~16 ms.
        While another process holds the write lock it waits (up to
        ``timeout_s``) and retries; nothing is dropped.

        ``extra`` is stored as JSON: values JSON cannot hold are stored as their
        ``repr`` (and come back as that string).

        Raises:
            HistoryError: no run ``run_id``, the lock was held longer than
                ``timeout_s``, or the file cannot be written.
        """
        if not reports:
            return
        rows = [report_row(run_id, r) for r in reports]
        learned = [(r.category, str(m), r.finished_at or time.time())
                   for r in reports for m in (r.extra.get("imported") or ())]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(INSERT_REPORT, rows)
            if learned:
                conn.executemany(UPSERT_LEARNED, learned)
                conn.executemany(PRUNE_LEARNED, [(c,) for c in sorted({row[0] for row in learned})])

        try:
            self._write(f"record {len(rows)} reports of run {run_id}", insert)
        except HistoryError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.IntegrityError) and "FOREIGN KEY" in str(cause):
                raise HistoryError(
                    f"history: cannot record {len(rows)} reports in {self._path!r}: no run "
                    f"{run_id} there (SQLite: {cause}); call start_run() first.",
                    path=self._path,
                ) from cause
            raise

    def reports(
        self, *, category: str | None = None, run_id: int | None = None, limit: int | None = None
    ) -> list[TaskReport]:
        """Return stored reports, oldest first.

        ``category`` and ``run_id`` filter; with ``limit``, the newest
        ``limit`` reports (still oldest first).
        """
        with self._connection("read reports") as conn:
            return select_reports(conn, category=category, run_id=run_id, limit=limit)

    def observations(self, category: str, limit: int = 1000) -> list[Observation]:
        """Return the newest ``limit`` attempts of ``category``, oldest first.

        What a sizing strategy reads. Reports of lost tasks (no measurement)
        are left out; failed and exhausted ones are kept (``exhausted`` tells
        the strategy the true need was at least the allocation). Served by the
        ``(category, id)`` index: ~3 ms for 1,000 of 100,000 rows here.
        """
        with self._connection("read observations") as conn:
            return select_observations(conn, category, limit)

    def learned_imports(self, category: str) -> list[str]:
        """The top-level modules runs of ``category`` imported (``TaskReport.extra["imported"]``), sorted.

        At most ``LEARNED_MAX`` (64): the most recently seen; older ones are dropped as new ones come.
        """
        with self._connection("read learned imports") as conn:
            return [row[0] for row in conn.execute(
                "SELECT module FROM learned_imports WHERE category = ? ORDER BY module", (category,))]

    def categories(self) -> list[str]:
        """Return every category with at least one report, sorted."""
        with self._connection("read categories") as conn:
            return select_categories(conn)

    def category_summary(self, run_id: int | None = None) -> list[CategorySummary]:
        """Return one :class:`CategorySummary` per category, sorted by name.

        With ``run_id``, only that run's reports count (served by the
        ``(run_id, id)`` index). The whole of a 100,000-report history takes
        ~0.2 s here.
        """
        with self._connection("summarise categories") as conn:
            return summarise(conn, run_id)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the connection (idempotent). Later calls raise ``HistoryError``."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and os.getpid() == self._pid:
                conn.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<History {self._path!r} {state}>"
