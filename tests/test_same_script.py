"""One user script (``examples/same_script.py``), changed only in ``backend=``, on every backend.

The local engine's run is the reference; a Dask ``LocalCluster``, 4 emulated
nodes (each a network and UTS namespace with its own host name and
directories) and a ``SLURMCluster`` on the real local Slurm must give the same
results and the same per-task reports, less what differs by design (the host,
times, and the allocation the planner sized to the node a task ran on).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from examples import same_script  # noqa: E402

from tests.cluster import netnodes, slurm  # noqa: E402

START_S = 180
PEAK_MARGIN_MIB = 24  # interpreters differ by a few MiB between nodes; 100 MiB must stay 100


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return same_script.run(None)


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON-like values differ, as ``path: a != b`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += differences(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}.{k}")
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def check_same(got: dict[str, Any], reference: dict[str, Any], hosts: set[str]) -> None:
    """Same results and reports as the local run; each report's host is one of ``hosts``, where the task ran."""
    diff = differences(same_script.comparable(got), same_script.comparable(reference))
    assert not diff, "differs from the local run:\n" + "\n".join(diff)
    assert got["results"]["squares"] == [i * i for i in range(10)]
    mine, ref = same_script.peaks(got), same_script.peaks(reference)
    for name in ref:
        assert abs(mine[name] - ref[name]) <= PEAK_MARGIN_MIB, (name, mine[name], ref[name])
    assert 95 <= mine["touch-100MiB"] <= 140, mine
    seen = {r["host"] for r in got["reports"].values()}
    assert seen <= hosts, f"reports name hosts {seen - hosts} that are none of the nodes {hosts}"
    where = got["reports"]["where"]["host"]
    assert got["results"]["where"] == where, "the report names another host than the one the task ran on"


def test_the_local_run_is_what_the_script_says(reference: dict[str, Any]) -> None:
    r = reference["results"]
    assert r["squares"] == [i * i for i in range(10)] and r["square-3"] == 9
    assert r["fails"] == {"raised": "TaskFailed", "message": r["fails"]["message"]}
    assert "ValueError: no good" in r["fails"]["message"]
    assert r["touch-100MiB"] == 100 << 20 and r["sized"] == 50 << 20
    assert r["too-small"]["raised"] == "ResourceExhausted"
    assert r["command"] == {"returncode": 0, "stdout": "out-line\n", "stderr": "err-line\n"}
    assert r["command-fails"]["raised"] == "CommandFailed"
    rep = reference["reports"]
    assert rep["too-small"]["outcome"] == "exhausted" and rep["too-small"]["exhausted"] == "memory"
    assert rep["sized"]["allocation"]["memory"] == 300 << 20
    assert rep["where"]["host"] == socket.gethostname()


@pytest.mark.dask
def test_on_a_local_cluster(reference: dict[str, Any]) -> None:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                                  death_timeout=START_S) as cluster:
        got = same_script.run(cluster)
    assert len(got["nodes"]) == 1  # two workers of one host: one node
    check_same(got, reference, {socket.gethostname()})


@pytest.fixture
def four_nodes() -> Iterator[netnodes.EmulatedNodes]:
    reason = netnodes.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with netnodes.EmulatedNodes(4, rate_mbit=200) as nodes:
        yield nodes


@pytest.mark.netnodes
@pytest.mark.dask
def test_on_four_emulated_nodes(reference: dict[str, Any], four_nodes: netnodes.EmulatedNodes) -> None:
    got = same_script.run(four_nodes.scheduler_address)
    names = {n.name for n in four_nodes}
    assert set(got["nodes"]) == names, got["nodes"]  # each namespace is a node of its own
    check_same(got, reference, names)


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_on_a_slurmcluster_on_the_real_local_slurm(reference: dict[str, Any], tmp_path: Path) -> None:
    info = slurm.require()
    with slurm.dask_cluster(info, tmp_path, jobs=2, cores=1, memory="2GB") as (cluster, _client):
        got = same_script.run(cluster)
    assert len(got["nodes"]) == 2  # two jobs on one machine: two nodes, each its allocation
    check_same(got, reference, {socket.gethostname(), info.node})
