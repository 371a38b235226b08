"""A task's priority: among the waiting tasks, a larger priority starts first (as in Work Queue).

One core, held by a task that waits on a FIFO the test opens; a low-priority
batch is queued behind it, then a high-priority batch. Once released, the
order the tasks really started in (their reports' ``started_at``) puts every
high one before the low ones still waiting (the one low task the engine may
already have handed to the node behind the held one aside). Under both orders.
"""

from __future__ import annotations

import os
import pathlib

import pytest

import loadmaster
from loadmaster.errors import InvalidSpec


def hold(started: str, release: str) -> str:
    """Say it started (open ``started`` for writing), then wait until the test opens ``release``."""
    with open(started, "w"):
        pass
    with open(release) as fh:
        return fh.read()


def noop(i: int) -> int:
    return i


@pytest.mark.parametrize("order", ["fifo", "longest-first"])
def test_higher_priority_starts_first_among_the_waiting(tmp_path: pathlib.Path, order: str) -> None:
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    os.mkfifo(started)
    os.mkfifo(release)
    with loadmaster.Executor(cores=1, history=":memory:", sandbox=False, order=order) as ex:
        one = {"cores": 1}
        held = ex.options(resources=one, category="hold").submit(hold, started, release)
        with open(started):  # returns once the held task has opened it: the one core is taken
            pass
        low = [ex.options(resources=one, category="low", priority=1).submit(noop, i) for i in range(5)]
        high = [ex.options(resources=one, category="high", priority=10).submit(noop, i) for i in range(5)]
        with open(release, "w") as fh:
            fh.write("go")
        assert held.result(120) == "go"
        assert [f.result(120) for f in low + high] == list(range(5)) * 2
    starts = sorted((f.report.started_at, name) for name, fs in (("low", low), ("high", high))
                    for f in fs if f.report is not None)
    assert len(starts) == 10
    last_high = max(i for i, (_, name) in enumerate(starts) if name == "high")
    lows_before = [i for i, (_, name) in enumerate(starts) if name == "low" and i < last_high]
    assert len(lows_before) <= 1, f"low tasks started among the high ones: {[n for _, n in starts]}"


def test_priority_is_checked_and_kept_on_the_options() -> None:
    with loadmaster.Executor(cores=1, history=":memory:", sandbox=False) as ex:
        assert ex.options(priority=3).priority == 3.0
        assert ex.options(priority=3).options(category="c").priority == 3.0
        assert ex.options().priority == 0.0
        for bad in (float("nan"), "high", True):
            with pytest.raises(InvalidSpec, match="priority"):
                ex.options(priority=bad)  # type: ignore[arg-type]
