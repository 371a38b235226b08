"""Is this file a loadmaster history? The checks made before and while a History opens it.

Who runs this code: the client thread that opens a
:class:`~loadmaster.plan.history.History` (``store.py``), and ``store.py`` again
to explain a SQLite failure.

What it reads and writes: it only reads. :func:`prepare_file` creates the
file's directory and reads the first 100 bytes of the file (SQLite's header)
without letting SQLite open it; :func:`identify` reads the application id, the
schema version and the table names in one read transaction. A file that is not
a loadmaster history (random bytes, text, a damaged or truncated SQLite file,
another application's database, a newer schema) raises
:class:`~loadmaster.errors.HistoryError` naming the file, and is never written
to.

This module does *not* cover: creating or migrating the schema (``schema.py``),
SQLite's integrity check (run by ``store.py`` once the file is open).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from loadmaster.errors import HistoryError
from loadmaster.plan.history.schema import APPLICATION_ID, SCHEMA_VERSION

#: The environment variable that overrides the default history path.
HISTORY_ENV = "LOADMASTER_HISTORY"

_SQLITE_MAGIC = b"SQLite format 3\x00"


def prepare_file(path: str) -> None:
    """Create the directory; refuse, by reading only, what is not a SQLite file."""
    directory = Path(path).parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HistoryError(
            f"history: cannot create the directory {str(directory)!r} for {path!r}: "
            f"{exc.strerror or exc}. Pass history= a path in a writable directory or set "
            f"{HISTORY_ENV}.",
            path=path,
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise HistoryError(
            f"history: the directory {str(directory)!r} is not writable, so the history "
            f"{path!r} cannot be written (SQLite also needs its -wal and -shm files "
            f"there). Pass history= a path in a writable directory or set {HISTORY_ENV}.",
            path=path,
        )
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return
    except IsADirectoryError as exc:
        raise HistoryError(
            f"history: {path!r} is a directory, not a database file. "
            "Pass history= a file path.",
            path=path,
        ) from exc
    except OSError as exc:
        raise HistoryError(
            f"history: cannot read {path!r}: {exc.strerror or exc}. "
            "Check its permissions or pass history= another file.",
            path=path,
        ) from exc
    if not header:
        return  # an empty file: initialised below
    if not header.startswith(_SQLITE_MAGIC):
        raise HistoryError(
            f"history: {path!r} is not a SQLite database (it starts with "
            f"{header[:16]!r}, not {_SQLITE_MAGIC!r}); loadmaster will not touch it. "
            "Move it away or pass history= another file.",
            path=path,
        )
    if len(header) < 100:
        raise HistoryError(
            f"history: {path!r} is not a SQLite database: it has {len(header)} bytes, "
            "shorter than SQLite's 100-byte header; loadmaster will not touch it. "
            "Move it away or pass history= another file.",
            path=path,
        )
    app_id = int.from_bytes(header[68:72], "big", signed=True)
    if app_id not in (0, APPLICATION_ID):
        # Refused before SQLite opens it, so not even a hot journal is rolled back.
        check_identity(path, app_id, 0, None)


def truncation(path: str) -> str:
    """Return evidence that the file is shorter than its header says, or ``""``.

    Only used to explain a failure SQLite already reported: while another
    process checkpoints, the header can briefly claim pages not yet
    written, so a size check alone would refuse a healthy file.
    """
    if path == ":memory:":
        return ""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
        size = os.path.getsize(path)
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


def identify(conn: sqlite3.Connection) -> tuple[int, int, list[str]]:
    """Return the file's application id, schema version and table/index names (reads only)."""
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


def check_identity(path: str, app_id: int, version: int, objects: list[str] | None) -> None:
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
            f"history: {path!r} is a SQLite database of another application ({what}). "
            "loadmaster will not touch it. Pass history= "
            f"another file or set {HISTORY_ENV}.",
            path=path,
        )
    if version > SCHEMA_VERSION:
        raise HistoryError(
            f"history: {path!r} was written by a newer loadmaster (schema version "
            f"{version}; this loadmaster reads up to {SCHEMA_VERSION}). Upgrade loadmaster "
            "(pip install -U loadmaster), or pass history= another file; this file was not changed.",
            path=path,
        )
    if version < 1 or not {"runs", "reports"} <= set(objects or ()):
        raise HistoryError(
            f"history: {path!r} carries loadmaster's application_id but schema "
            f"version {version} and tables {', '.join(objects or ()) or 'none'}: it is "
            "damaged. loadmaster will not touch it; move it away to start a new history.",
            path=path,
        )


def sqlite_error(path: str, timeout_s: float, what: str, exc: BaseException) -> HistoryError:
    """Return a HistoryError for SQLite's ``exc`` with evidence and a next step."""
    text = str(exc)
    if "readonly" in text or "unable to open" in text:
        hint = (
            f"Check that {path!r} and its directory are writable (SQLite writes -wal "
            f"and -shm files beside it), or pass history= another file / set {HISTORY_ENV}."
        )
    elif "locked" in text or "busy" in text:
        hint = (
            "Another process held the history's write lock for more than "
            f"{timeout_s:g} s; check for a hung process using the same file."
        )
    elif "malformed" in text or "not a database" in text or "corrupt" in text:
        what += truncation(path)
        hint = (
            "The file is damaged (or not a SQLite database); loadmaster will not touch it. "
            "Restore it from a copy, or move it away to start a new history."
        )
    elif "full" in text:
        hint = "Free space on its file system, or pass history= a file elsewhere."
    else:
        hint = "The failed transaction was rolled back; nothing was half-written."
    return HistoryError(f"history: {what}. {hint}", path=path)
