"""A Parsl workflow through ``LoadmasterExecutor(backend=...)`` on a real 2-worker Dask ``LocalCluster``.

The same apps as under the local engine: results by value, an app that raised
comes back as Parsl's ``RemoteExceptionWrapper`` (re-raised by Parsl) and is a
failure in loadmaster's history, every try has a report naming the node it ran
on (the cluster's two workers share this host: one node, carried by both), and
Parsl's monitoring database gets each try's figures with that host.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

parsl = pytest.importorskip("parsl")
distributed = pytest.importorskip("distributed")
pytest.importorskip("sqlalchemy", reason="Parsl's monitoring database needs the parsl[monitoring] extra")

from parsl import python_app  # noqa: E402
from parsl.config import Config  # noqa: E402

from loadmaster.parsl import LoadmasterExecutor  # noqa: E402
from loadmaster.plan.history import History  # noqa: E402
from loadmaster.results import Outcome  # noqa: E402

pytestmark = pytest.mark.dask

START_S = 120  # a worker process (and its node's host) starting on a busy 2-core machine


@python_app
def square(x: int, parsl_resource_specification: dict[str, Any] = {}) -> int:  # noqa: B006 (Parsl's idiom)
    return x * x


@python_app
def fails(msg: str) -> None:
    raise ValueError(msg)


@python_app
def local_class() -> Any:
    class Point:  # defined in the task: comes back by value
        def __init__(self, x: int) -> None:
            self.x = x

    return Point(7)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None, death_timeout=START_S)
    try:
        yield c
    finally:
        c.close()


def test_a_parsl_workflow_runs_on_a_dask_cluster(cluster: Any, tmp_path: Any) -> None:
    history = str(tmp_path / "history.sqlite")
    # Every loadmaster.Executor option is available next to backend=: caps, history, sandbox, order.
    ex = LoadmasterExecutor(label="lmdask", backend=cluster, history=history, memory="1GiB",
                            order="fifo")
    monitoring_db = str(tmp_path / "monitoring.db")
    from parsl.monitoring import MonitoringHub

    dfk = parsl.load(Config(executors=[ex], retries=1, run_dir=str(tmp_path / "runinfo"),
                            monitoring=MonitoringHub(logging_endpoint=f"sqlite:///{monitoring_db}")))
    run_id = dfk.run_id
    try:
        assert [f.result(START_S) for f in [square(i) for i in range(8)]] == [i * i for i in range(8)]
        assert local_class().result(START_S).x == 7
        with pytest.raises(ValueError, match="bad input"):
            fails("bad input").result(START_S)
        assert ex.executor is not None
        nodes = ex.executor.backend.nodes()
        workers = ex.executor.backend.workers()  # type: ignore[attr-defined]
    finally:
        dfk.cleanup()
        parsl.clear()

    assert len(nodes) == 1 and len(workers) == 2 and nodes[0].host == socket.gethostname()
    with History(history) as h:
        squares = h.reports(category="square")
        failed = h.reports(category="fails")
    assert len(squares) == 8 and {r.outcome for r in squares} == {Outcome.OK}
    # The app raised in both of its tries: failures in the history, with the app's error.
    assert [r.outcome for r in failed] == [Outcome.FAILED] * 2
    assert [r.error for r in failed] == ["ValueError: bad input"] * 2
    # Each report names the host it ran on: the cluster's node, not the workflow's process.
    assert {r.host for r in squares + failed} == {nodes[0].host}
    assert all(r.started_at > 0 and r.finished_at >= r.started_at for r in squares)
    # Parsl's monitoring database has each try's measured figures and the host of its node.
    with sqlite3.connect(monitoring_db) as db:
        rows = db.execute(
            "SELECT t.task_func_name, y.hostname, r.psutil_process_memory_resident FROM resource r "
            "JOIN task t ON r.task_id = t.task_id AND r.run_id = t.run_id "
            "JOIN try y ON r.task_id = y.task_id AND r.try_id = y.try_id AND r.run_id = y.run_id "
            "WHERE r.run_id = ?", (run_id,)).fetchall()
    assert sorted(name for name, _, _ in rows if name == "square") == ["square"] * 8
    assert {host for _, host, _ in rows} == {nodes[0].host}
    assert all(mem > 0 for _, _, mem in rows)
