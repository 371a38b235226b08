"""Task history in SQLite: every TaskReport of every run, kept across runs.

Who runs this code:

* **Client thread** (the user's): ``History(path)`` opens or creates the
  database, checks that it is a loadmaster history of a schema this code knows,
  and sets it to WAL mode. ``loadmaster history`` and the CLI's closing table
  read it through :meth:`History.category_summary` and :meth:`History.runs`.
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

A file that is not a loadmaster history (random bytes, text, a damaged or
truncated SQLite file, another application's database) raises
:class:`~loadmaster.errors.HistoryError` naming the file, and is never written
to: every check before initialisation only reads. A new or empty file is
initialised.

This module does *not* cover: deciding allocations from the history
(``plan/strategy.py`` and the planner), network file systems (SQLite's WAL
needs shared memory on one host; on NFS the journal mode stays as the file
system allows and a warning is logged), or use of one ``History`` object
across ``fork`` (a child must open its own; using an inherited one raises
``HistoryError``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import socket
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from loadmaster.errors import HistoryError
from loadmaster.plan.strategy import Observation
from loadmaster.results import MeasureMethod, Outcome, TaskReport
from loadmaster.spec import Resources

logger = logging.getLogger("loadmaster.history")

#: ``PRAGMA application_id`` of a loadmaster history: ASCII ``"LMHS"``.
APPLICATION_ID = 0x4C4D4853

#: ``PRAGMA user_version``: the schema version this code writes and reads.
SCHEMA_VERSION = 1

#: The environment variable that overrides the default history path.
HISTORY_ENV = "LOADMASTER_HISTORY"

_SQLITE_MAGIC = b"SQLite format 3\x00"

_T = TypeVar("_T")

_SCHEMA = (
    """
    CREATE TABLE runs (
        run_id          INTEGER PRIMARY KEY AUTOINCREMENT,
        label           TEXT NOT NULL,
        host            TEXT NOT NULL,
        pid             INTEGER NOT NULL,
        started_at      REAL NOT NULL,
        finished_at     REAL,
        cap_cores       REAL,
        cap_memory      INTEGER,
        cap_disk        INTEGER,
        cap_gpus        INTEGER,
        cap_wall_time   REAL
    )
    """,
    """
    CREATE TABLE reports (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id          INTEGER NOT NULL REFERENCES runs(run_id),
        task_id         INTEGER NOT NULL,
        category        TEXT NOT NULL,
        peak_memory     INTEGER NOT NULL,
        cpu_time        REAL,
        wall_time       REAL,
        cores           REAL,
        disk            INTEGER NOT NULL,
        max_processes   INTEGER NOT NULL,
        alloc_cores     REAL,
        alloc_memory    INTEGER,
        alloc_disk      INTEGER,
        alloc_gpus      INTEGER,
        alloc_wall_time REAL,
        attempts        INTEGER NOT NULL,
        exit_status     INTEGER NOT NULL,
        host            TEXT NOT NULL,
        measure_method  TEXT NOT NULL,
        outcome         TEXT NOT NULL,
        exhausted       TEXT,
        started_at      REAL,
        finished_at     REAL,
        input_size      INTEGER,
        error           TEXT NOT NULL,
        extra           TEXT NOT NULL
    )
    """,
    "CREATE INDEX reports_by_category ON reports(category, id)",
    "CREATE INDEX reports_by_run ON reports(run_id, id)",
)

# Columns of `reports` in the order _report_row writes and _row_report reads them.
_REPORT_COLUMNS = (
    "run_id",
    "task_id",
    "category",
    "peak_memory",
    "cpu_time",
    "wall_time",
    "cores",
    "disk",
    "max_processes",
    "alloc_cores",
    "alloc_memory",
    "alloc_disk",
    "alloc_gpus",
    "alloc_wall_time",
    "attempts",
    "exit_status",
    "host",
    "measure_method",
    "outcome",
    "exhausted",
    "started_at",
    "finished_at",
    "input_size",
    "error",
    "extra",
)
_INSERT_REPORT = (
    f"INSERT INTO reports ({', '.join(_REPORT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_REPORT_COLUMNS))})"
)
_REPORT_FIELDS = ", ".join(_REPORT_COLUMNS[1:])

_RUN_COLUMNS = (
    "r.run_id, r.label, r.host, r.started_at, r.finished_at, "
    "r.cap_cores, r.cap_memory, r.cap_disk, r.cap_gpus, r.cap_wall_time, "
    "(SELECT count(*) FROM reports p WHERE p.run_id = r.run_id)"
)


@dataclass(frozen=True)
class RunInfo:
    """One executor session recorded in the history.

    ``started_at``/``finished_at`` are ``time.time()`` values (``finished_at``
    is ``None`` while the run is going on or if it never finished);
    ``capacity`` is what the node granted the run; ``tasks`` counts its stored
    reports.
    """

    run_id: int
    label: str
    host: str
    started_at: float
    finished_at: float | None
    capacity: Resources
    tasks: int


@dataclass(frozen=True)
class CategorySummary:
    """What one category did, over the whole history or one run.

    Attributes:
        category: the category's name.
        tasks: stored reports (one per task).
        failures: tasks whose outcome was not ``ok`` (failed, exhausted, lost).
        retries: extra attempts, ``sum(attempts - 1)``.
        exhausted: tasks whose last attempt ran out of a resource.
        peak_memory_p50: the lower median of ``peak_memory`` in bytes (an
            observed value), over tasks that were not lost; 0 if none.
        peak_memory_max: the largest ``peak_memory`` in bytes, same tasks.
        mean_allocated_memory: mean allocated memory in bytes over the tasks
            that had a memory allocation, or ``None``.
        unused_memory_byte_seconds: allocated but unused memory integrated over
            time, ``sum(max(alloc_memory - peak_memory, 0) * wall_time)`` over
            tasks with a memory allocation: the waste an allocation policy
            should shrink.
        total_wall_time: seconds, summed.
        total_cpu_time: CPU seconds, summed.
    """

    category: str
    tasks: int
    failures: int
    retries: int
    exhausted: int
    peak_memory_p50: int
    peak_memory_max: int
    mean_allocated_memory: float | None
    unused_memory_byte_seconds: float
    total_wall_time: float
    total_cpu_time: float


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

    def _open(self) -> sqlite3.Connection:
        """Check the file, connect, initialise a new file; return the connection."""
        if self._path != ":memory:":
            self._prepare_file()
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

    def _prepare_file(self) -> None:
        """Create the directory; refuse, by reading only, what is not a SQLite file."""
        path = Path(self._path)
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(
                f"history: cannot create the directory {str(directory)!r} for {self._path!r}: "
                f"{exc.strerror or exc}. Pass history= a path in a writable directory or set "
                f"{HISTORY_ENV}.",
                path=self._path,
            ) from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise HistoryError(
                f"history: the directory {str(directory)!r} is not writable, so the history "
                f"{self._path!r} cannot be written (SQLite also needs its -wal and -shm files "
                f"there). Pass history= a path in a writable directory or set {HISTORY_ENV}.",
                path=self._path,
            )
        try:
            with open(path, "rb") as f:
                header = f.read(100)
        except FileNotFoundError:
            return
        except IsADirectoryError as exc:
            raise HistoryError(
                f"history: {self._path!r} is a directory, not a database file. "
                "Pass history= a file path.",
                path=self._path,
            ) from exc
        except OSError as exc:
            raise HistoryError(
                f"history: cannot read {self._path!r}: {exc.strerror or exc}. "
                "Check its permissions or pass history= another file.",
                path=self._path,
            ) from exc
        if not header:
            return  # an empty file: initialised below
        if not header.startswith(_SQLITE_MAGIC):
            raise HistoryError(
                f"history: {self._path!r} is not a SQLite database (it starts with "
                f"{header[:16]!r}, not {_SQLITE_MAGIC!r}); loadmaster will not touch it. "
                "Move it away or pass history= another file.",
                path=self._path,
            )
        if len(header) < 100:
            raise HistoryError(
                f"history: {self._path!r} is not a SQLite database: it has {len(header)} bytes, "
                "shorter than SQLite's 100-byte header; loadmaster will not touch it. "
                "Move it away or pass history= another file.",
                path=self._path,
            )
        app_id = int.from_bytes(header[68:72], "big", signed=True)
        if app_id not in (0, APPLICATION_ID):
            # Refused before SQLite opens it, so not even a hot journal is rolled back.
            self._check_identity(app_id, 0, None)

    def _truncation(self) -> str:
        """Return evidence that the file is shorter than its header says, or ``""``.

        Only used to explain a failure SQLite already reported: while another
        process checkpoints, the header can briefly claim pages not yet
        written, so a size check alone would refuse a healthy file.
        """
        if self._path == ":memory:":
            return ""
        try:
            with open(self._path, "rb") as f:
                header = f.read(100)
            size = os.path.getsize(self._path)
        except OSError:
            return ""
        if len(header) < 100:
            return ""
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        if pages == 0 or header[24:28] != header[92:96] or size >= pages * page_size:
            return ""  # the in-header size is not authoritative, or the file is long enough
        return (
            f"; the file is truncated: its header says {pages} pages of {page_size} bytes "
            f"({pages * page_size} bytes) but it has {size} bytes"
        )

    def _check_and_initialise(self, conn: sqlite3.Connection) -> None:
        """Check application id, schema version and integrity; create the schema if new.

        Every statement before the schema is created only reads.
        """
        try:
            app_id, version, objects = self._retry(lambda: self._identify(conn))
            if app_id == 0 and not objects:
                self._initialise(conn)
                app_id, version, objects = self._retry(lambda: self._identify(conn))
            self._check_identity(app_id, version, objects)
            problems = self._retry(lambda: [r[0] for r in conn.execute("PRAGMA quick_check(5)")])
            if problems != ["ok"]:
                raise HistoryError(
                    f"history: {self._path!r} is damaged (SQLite quick_check: "
                    f"{'; '.join(map(str, problems))}{self._truncation()}). loadmaster will not "
                    "touch it. Restore it "
                    "from a copy, or move it away to start a new history.",
                    path=self._path,
                )
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

    @staticmethod
    def _identify(conn: sqlite3.Connection) -> tuple[int, int, list[str]]:
        # One read transaction: the three reads see one snapshot, never half of
        # another process's schema creation (tables there, application_id not yet).
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")
        try:
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            objects = [
                str(r[0])
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
        finally:
            if own:
                conn.execute("COMMIT")
        return app_id, version, objects

    def _check_identity(self, app_id: int, version: int, objects: list[str] | None) -> None:
        """Refuse another application's database, a newer schema, a half-made one."""
        if app_id != APPLICATION_ID:
            what = (
                f"PRAGMA application_id {app_id:#x}, not loadmaster's {APPLICATION_ID:#x}"
                if app_id
                else "no loadmaster application_id"
            )
            if objects is not None:
                shown = ", ".join(objects[:8]) + (", ..." if len(objects) > 8 else "")
                what += f"; tables: {shown or 'none'}"
            raise HistoryError(
                f"history: {self._path!r} is a SQLite database of another application ({what}). "
                "loadmaster will not touch it. Pass history= "
                f"another file or set {HISTORY_ENV}.",
                path=self._path,
            )
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"history: {self._path!r} was written by a newer loadmaster (schema version "
                f"{version}; this loadmaster reads up to {SCHEMA_VERSION}). Upgrade loadmaster "
                "(pip install -U loadmaster), or pass history= another file.",
                path=self._path,
            )
        if version < 1 or not {"runs", "reports"} <= set(objects or ()):
            raise HistoryError(
                f"history: {self._path!r} carries loadmaster's application_id but schema "
                f"version {version} and tables {', '.join(objects or ()) or 'none'}: it is "
                "damaged. loadmaster will not touch it; move it away to start a new history.",
                path=self._path,
            )

    def _initialise(self, conn: sqlite3.Connection) -> None:
        """Create the schema in one transaction, unless another process just did."""

        def create() -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                app_id, _, objects = self._identify(conn)
                if app_id == 0 and not objects:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    logger.info(
                        "history %s: created (schema version %d)", self._path, SCHEMA_VERSION
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        self._retry(create)

    # ------------------------------------------------------------------ plumbing

    def _error(self, what: str, exc: BaseException) -> HistoryError:
        """Return a HistoryError for SQLite's ``exc`` with evidence and a next step."""
        text = str(exc)
        if "readonly" in text or "unable to open" in text:
            hint = (
                f"Check that {self._path!r} and its directory are writable (SQLite writes -wal "
                f"and -shm files beside it), or pass history= another file / set {HISTORY_ENV}."
            )
        elif "locked" in text or "busy" in text:
            hint = (
                "Another process held the history's write lock for more than "
                f"{self._timeout_s:g} s; check for a hung process using the same file."
            )
        elif "malformed" in text or "not a database" in text or "corrupt" in text:
            what += self._truncation()
            hint = (
                "The file is damaged (or not a SQLite database); loadmaster will not touch it. "
                "Restore it from a copy, or move it away to start a new history."
            )
        elif "full" in text:
            hint = "Free space on its file system, or pass history= a file elsewhere."
        else:
            hint = "The failed transaction was rolled back; nothing was half-written."
        return HistoryError(f"history: {what}. {hint}", path=self._path)

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
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.run_id = ?", (run_id,))
            found = row.fetchone()
        return None if found is None else _row_run(found)

    def runs(self) -> list[RunInfo]:
        """Return every run, oldest first."""
        with self._connection("read the runs") as conn:
            rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs r ORDER BY r.run_id").fetchall()
        return [_row_run(r) for r in rows]

    def latest_run(self) -> RunInfo | None:
        """Return the newest run, or ``None``."""
        with self._connection("read the latest run") as conn:
            found = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs r ORDER BY r.run_id DESC LIMIT 1"
            ).fetchone()
        return None if found is None else _row_run(found)

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
        rows = [_report_row(run_id, r) for r in reports]

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_REPORT, rows)

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
        where, params = _filters(category=category, run_id=run_id)
        sql = f"SELECT {_REPORT_FIELDS} FROM reports{where} ORDER BY id"
        if limit is not None:
            sql = (
                f"SELECT {_REPORT_FIELDS} FROM (SELECT {_REPORT_FIELDS}, id FROM reports{where} "
                "ORDER BY id DESC LIMIT ?) ORDER BY id"
            )
            params.append(max(int(limit), 0))
        with self._connection("read reports") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [_row_report(r) for r in rows]

    def observations(self, category: str, limit: int = 1000) -> list[Observation]:
        """Return the newest ``limit`` attempts of ``category``, oldest first.

        What a sizing strategy reads. Reports of lost tasks (no measurement)
        are left out; failed and exhausted ones are kept (``exhausted`` tells
        the strategy the true need was at least the allocation). Served by the
        ``(category, id)`` index: ~3 ms for 1,000 of 100,000 rows here.
        """
        with self._connection("read observations") as conn:
            rows = conn.execute(
                "SELECT peak_memory, wall_time, cores, disk, alloc_memory, exhausted, input_size "
                "FROM reports WHERE category = ? AND outcome != ? ORDER BY id DESC LIMIT ?",
                (category, Outcome.LOST.value, max(int(limit), 0)),
            ).fetchall()
        rows.reverse()
        return [
            Observation(
                peak_memory=int(r[0]),
                wall_time=_float(r[1]),
                cores=_float(r[2]),
                disk=int(r[3]),
                allocated_memory=r[4],
                exhausted=r[5],
                input_size=r[6],
            )
            for r in rows
        ]

    def categories(self) -> list[str]:
        """Return every category with at least one report, sorted."""
        with self._connection("read categories") as conn:
            rows = conn.execute("SELECT DISTINCT category FROM reports ORDER BY category")
            return [str(r[0]) for r in rows]

    def category_summary(self, run_id: int | None = None) -> list[CategorySummary]:
        """Return one :class:`CategorySummary` per category, sorted by name.

        With ``run_id``, only that run's reports count (served by the
        ``(run_id, id)`` index). The whole of a 100,000-report history takes
        ~0.2 s here.
        """
        where, params = _filters(run_id=run_id)
        lost = Outcome.LOST.value
        ok = Outcome.OK.value
        with self._connection("summarise categories") as conn:
            totals = conn.execute(
                "SELECT category, count(*), sum(outcome != ?), sum(attempts - 1), "
                "sum(exhausted IS NOT NULL), avg(alloc_memory), "
                "total(CASE WHEN alloc_memory IS NOT NULL AND alloc_memory > peak_memory "
                "THEN (alloc_memory - peak_memory) * wall_time ELSE 0 END), "
                f"total(wall_time), total(cpu_time) FROM reports{where} "
                "GROUP BY category ORDER BY category",
                [ok, *params],
            ).fetchall()
            peaks: dict[str, list[int]] = {}
            lost_clause = f"{where} AND outcome != ?" if where else " WHERE outcome != ?"
            # Sorted here rather than by SQLite: 3x faster for 100,000 rows.
            for category, peak in conn.execute(
                f"SELECT category, peak_memory FROM reports{lost_clause}", [*params, lost]
            ):
                peaks.setdefault(category, []).append(int(peak))
        summaries = []
        for cat, n, failures, retries, exhausted, mean_alloc, unused, wall, cpu in totals:
            values = sorted(peaks.get(cat, []))
            summaries.append(
                CategorySummary(
                    category=str(cat),
                    tasks=int(n),
                    failures=int(failures),
                    retries=int(retries),
                    exhausted=int(exhausted),
                    peak_memory_p50=int(statistics.median_low(values)) if values else 0,
                    peak_memory_max=max(values) if values else 0,
                    mean_allocated_memory=None if mean_alloc is None else float(mean_alloc),
                    unused_memory_byte_seconds=float(unused),
                    total_wall_time=float(wall),
                    total_cpu_time=float(cpu),
                )
            )
        return summaries

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


# ---------------------------------------------------------------------- rows


def _filters(*, category: str | None = None, run_id: int | None = None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if category is not None:
        clauses.append("category = ?")
        params.append(category)
    if run_id is not None:
        clauses.append("run_id = ?")
        params.append(run_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _float(value: Any) -> float:
    # SQLite stores NaN as NULL; a NOT NULL float comes back as NaN.
    return math.nan if value is None else float(value)


def _json_default(value: Any) -> str:
    return repr(value)


def _report_row(run_id: int, r: TaskReport) -> tuple[Any, ...]:
    a = r.allocation
    return (
        run_id,
        r.task_id,
        r.category,
        r.peak_memory,
        r.cpu_time,
        r.wall_time,
        r.cores,
        r.disk,
        r.max_processes,
        a.cores,
        a.memory,
        a.disk,
        a.gpus,
        a.wall_time,
        r.attempts,
        r.exit_status,
        r.host,
        MeasureMethod(r.measure_method).value,
        Outcome(r.outcome).value,
        r.exhausted,
        r.started_at,
        r.finished_at,
        r.input_size,
        r.error,
        json.dumps(r.extra, default=_json_default, ensure_ascii=False),
    )


def _row_report(row: Sequence[Any]) -> TaskReport:
    (
        task_id,
        category,
        peak_memory,
        cpu_time,
        wall_time,
        cores,
        disk,
        max_processes,
        a_cores,
        a_memory,
        a_disk,
        a_gpus,
        a_wall_time,
        attempts,
        exit_status,
        host,
        measure_method,
        outcome,
        exhausted,
        started_at,
        finished_at,
        input_size,
        error,
        extra,
    ) = row[:24]
    return TaskReport(
        task_id=task_id,
        category=category,
        peak_memory=peak_memory,
        cpu_time=_float(cpu_time),
        wall_time=_float(wall_time),
        cores=_float(cores),
        disk=disk,
        max_processes=max_processes,
        allocation=_resources(a_cores, a_memory, a_disk, a_gpus, a_wall_time),
        attempts=attempts,
        exit_status=exit_status,
        host=host,
        measure_method=MeasureMethod(measure_method),
        outcome=Outcome(outcome),
        exhausted=exhausted,
        started_at=_float(started_at),
        finished_at=_float(finished_at),
        input_size=input_size,
        error=error,
        extra=json.loads(extra),
    )


@functools.lru_cache(maxsize=4096)
def _resources(
    cores: float | None,
    memory: int | None,
    disk: int | None,
    gpus: int | None,
    wall_time: float | None,
) -> Resources:
    # Cached: Resources is immutable and a history holds few distinct allocations;
    # this halves the time reports() takes for 100,000 rows.
    return Resources(cores=cores, memory=memory, disk=disk, gpus=gpus, wall_time=wall_time)


def _row_run(row: Sequence[Any]) -> RunInfo:
    run_id, label, host, started, finished, cores, memory, disk, gpus, wall, tasks = row
    return RunInfo(
        run_id=int(run_id),
        label=str(label),
        host=str(host),
        started_at=float(started),
        finished_at=None if finished is None else float(finished),
        capacity=_resources(cores, memory, disk, gpus, wall),
        tasks=int(tasks),
    )


__all__ = [
    "APPLICATION_ID",
    "HISTORY_ENV",
    "SCHEMA_VERSION",
    "CategorySummary",
    "History",
    "RunInfo",
    "default_history_path",
]
