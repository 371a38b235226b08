"""Task history in SQLite: every TaskReport of every run, kept across runs.

The package, by job:

* ``store.py``: :class:`History`, the connection, its lock, retries and writes;
* ``checks.py``: is a file a loadmaster history (read-only checks, refusals);
* ``schema.py``: the version-1 schema and the ordered migrations after it;
* ``rows.py``: the columns and the row <-> report conversions;
* ``queries.py``: the reads (reports, observations, summaries).

Import the public names from here (``from loadmaster.plan.history import History``).
"""

from __future__ import annotations

from loadmaster.plan.history.checks import HISTORY_ENV
from loadmaster.plan.history.rows import CategorySummary, RunInfo
from loadmaster.plan.history.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, Migration
from loadmaster.plan.history.store import History, default_history_path

__all__ = [
    "APPLICATION_ID",
    "HISTORY_ENV",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "CategorySummary",
    "History",
    "Migration",
    "RunInfo",
    "default_history_path",
]
