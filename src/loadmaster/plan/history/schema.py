"""The history's schema: how a file is made, and the ordered steps that move it forward.

Who runs this code: the client thread that opens a
:class:`~loadmaster.plan.history.History` (through ``store.py``), once per
open, before anything else touches the file.

What it reads and writes: the SQLite file's ``PRAGMA user_version`` (the schema
version) and its tables. A new file is made by :data:`SCHEMA_V1` and then every
step of :data:`MIGRATIONS`, so a new file and a migrated old one are the same
schema by construction (one code path, tested from a real version-1 file).

How the schema moves forward (``docs/history.md``, "Schema versions"):

* :data:`MIGRATIONS` is a list of numbered steps, ``Migration(version=N, ...)``
  turning version ``N - 1`` into ``N``, in order, with no gaps.
  :data:`SCHEMA_VERSION` is the last step's number.
* Each step runs in its own ``BEGIN IMMEDIATE`` transaction together with the
  ``PRAGMA user_version = N`` that marks it done (SQLite keeps ``user_version``
  in the database header, written inside the transaction): a step is applied
  whole or not at all, and a crash, a full disk or a failing statement leaves
  the file at the previous version, untouched.
* Inside the transaction the version is read again: if another process
  migrated the file meanwhile, the step is skipped. Any number of executors
  may open an old file at once.
* A file newer than :data:`SCHEMA_VERSION` is refused (``store.py``), never
  migrated back; steps only add (columns, indexes, tables), so data is kept.

To change the schema: append a ``Migration`` with the next number; never edit a
released step or :data:`SCHEMA_V1`.

This module does *not* cover: deciding whether a file is a loadmaster history
at all (``checks.py``), or reading and writing rows (``rows.py``, ``store.py``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("loadmaster.history")

#: ``PRAGMA application_id`` of a loadmaster history: ASCII ``"LMHS"``.
APPLICATION_ID = 0x4C4D4853

#: Schema version 1 (loadmaster 0.1, before migrations existed). Never edit: new
#: files are made from this and then every migration.
SCHEMA_V1 = (
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


@dataclass(frozen=True)
class Migration:
    """One step of the schema: turns version ``version - 1`` into ``version``.

    Attributes:
        version: the version this step produces.
        summary: what it changes, for the log and ``docs/history.md``.
        apply: runs the step's statements on a connection already inside the
            step's transaction; must not commit.
    """

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    def apply(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)

    return apply


#: Modules kept per category in ``learned_imports`` (the most recently seen; a run reports at most 32).
LEARNED_MAX = 64

#: The ordered steps; ``MIGRATIONS[i].version == i + 2``.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=2,
        summary=(
            "reports gain peak_charged: what the task's memory cgroup was charged at its "
            "highest, page cache included (NULL for older reports and without a cgroup)"
        ),
        apply=_statements("ALTER TABLE reports ADD COLUMN peak_charged INTEGER"),
    ),
    Migration(
        version=3,
        summary=(
            "learned_imports: the top-level modules each category's runs imported (deps/: "
            "dependencies learned from runs, shipped with the next environment)"
        ),
        apply=_statements(
            """
            CREATE TABLE learned_imports (
                category        TEXT NOT NULL,
                module          TEXT NOT NULL,
                runs            INTEGER NOT NULL,
                last_seen       REAL NOT NULL,
                PRIMARY KEY (category, module)
            )
            """,
        ),
    ),
    Migration(
        version=4,
        summary=(
            f"learned_imports: at most {LEARNED_MAX} modules per category, the most recently seen "
            "(older ones dropped; an index on (category, last_seen) keeps the cap cheap)"
        ),
        apply=_statements(
            "CREATE INDEX learned_imports_recent ON learned_imports (category, last_seen)",
            f"""
            DELETE FROM learned_imports WHERE rowid IN (
                SELECT rowid FROM (
                    SELECT rowid, ROW_NUMBER() OVER (
                        PARTITION BY category ORDER BY last_seen DESC, runs DESC, module) AS n
                    FROM learned_imports)
                WHERE n > {LEARNED_MAX})
            """,
        ),
    ),
)

#: ``PRAGMA user_version``: the schema version this code writes and reads.
SCHEMA_VERSION = 1 + len(MIGRATIONS)


class MigrationFailed(Exception):
    """Raised by :func:`migrate` when a step fails; carries the versions.

    ``store.py`` turns it into a :class:`~loadmaster.errors.HistoryError` that
    names the file. Attributes: ``at`` (the version the file stays at),
    ``step`` (the version that failed), ``cause`` (the exception).
    """

    def __init__(self, at: int, step: int, cause: BaseException) -> None:
        super().__init__(at, step, cause)
        self.at, self.step, self.cause = at, step, cause


def create(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
    """Make a new history's tables, inside the caller's transaction: version 1, then every step.

    Sets ``PRAGMA user_version`` to the last step's version; the caller sets
    the application id and commits.
    """
    for statement in SCHEMA_V1:
        conn.execute(statement)
    for step in migrations:
        step.apply(conn)
    conn.execute(f"PRAGMA user_version = {migrations[-1].version if migrations else 1}")


def migrate(
    conn: sqlite3.Connection,
    path: str,
    run: Callable[[Callable[[], int]], int],
    start: int,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> int:
    """Apply every step newer than ``start`` (the version the file was read at), each in one transaction.

    Returns the version the file is at afterwards.

    ``run`` runs a callable, retrying it while another process holds the lock
    (``History._retry``). ``conn`` must be in autocommit mode, outside a
    transaction.

    Raises:
        MigrationFailed: a step failed; it was rolled back, so the file is left
            whole at the version before it.
    """
    version = start
    for step in migrations:
        if step.version <= version:
            continue

        def one(step: Migration = step) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if current < step.version:
                    if current != step.version - 1:  # a gap: MIGRATIONS is misnumbered
                        raise RuntimeError(f"schema step {step.version} found the file at version {current}")
                    step.apply(conn)
                    conn.execute(f"PRAGMA user_version = {step.version}")
                    logger.info(
                        "history %s: schema migrated from version %d to %d: %s",
                        path,
                        current,
                        step.version,
                        step.summary,
                    )
                    current = step.version
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return current

        try:
            version = run(one)
        except Exception as exc:
            raise MigrationFailed(step.version - 1, step.version, exc) from exc
    return version


__all__ = ["APPLICATION_ID", "LEARNED_MAX", "MIGRATIONS", "SCHEMA_V1", "SCHEMA_VERSION", "Migration", "create",
           "migrate"]
