"""Task history in SQLite: every TaskReport of every run, kept across runs.

CONTRACT STUB — being implemented; the signatures below are fixed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from loadmaster.results import TaskReport
from loadmaster.spec import Resources


@dataclass(frozen=True)
class RunInfo:
    """One executor session recorded in the history."""

    run_id: int
    label: str
    host: str
    started_at: float
    finished_at: float | None
    capacity: Resources
    tasks: int


def default_history_path() -> str:
    """Return the default database path under the user's data directory."""
    raise NotImplementedError


class History:
    """Stored task reports, per category, across runs."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        raise NotImplementedError

    @property
    def path(self) -> str:
        """The database file, or ``":memory:"``."""
        raise NotImplementedError

    def start_run(self, *, label: str, capacity: Resources) -> int:
        """Record the start of a run; return its id."""
        raise NotImplementedError

    def finish_run(self, run_id: int) -> None:
        """Record the end of a run."""
        raise NotImplementedError

    def record(self, run_id: int, reports: Sequence[TaskReport]) -> None:
        """Store reports (one transaction)."""
        raise NotImplementedError

    def reports(
        self, *, category: str | None = None, run_id: int | None = None, limit: int | None = None
    ) -> list[TaskReport]:
        """Return stored reports, oldest first."""
        raise NotImplementedError

    def categories(self) -> list[str]:
        """Return every category with at least one report."""
        raise NotImplementedError

    def runs(self) -> list[RunInfo]:
        """Return every run, oldest first."""
        raise NotImplementedError

    def latest_run(self) -> RunInfo | None:
        """Return the newest run, or ``None``."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection."""
        raise NotImplementedError
