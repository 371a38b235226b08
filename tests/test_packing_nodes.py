"""Packing on emulated nodes, each its own memory cgroup: no kernel OOM kill, capacity from the cgroup.

A small version of ``bench/packing_nodes.py`` (which measures the makespan
against its oracle; no timing here): 4 emulated nodes, each a network and UTS
namespace and a v1 memory cgroup of 1 GiB, the size-dependent workload scaled
to it, tasks that hold their memory and sleep.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from tests.cluster import netnodes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import packing_nodes

pytestmark = [pytest.mark.netnodes, pytest.mark.dask, pytest.mark.slow, pytest.mark.timeout(900)]

GiB = 1 << 30


def test_four_cgroup_nodes_pack_the_workload_with_no_kernel_oom_kill(tmp_path: Path) -> None:
    reason = netnodes.unavailable_reason()
    if reason:
        pytest.skip(reason)
    limit = 1 * GiB
    tasks = packing_nodes.make_tasks(24, 4, 0.3)  # the largest ~660 MiB: two of them do not fit a node
    try:
        out = packing_nodes.run(tasks, nodes=4, limit=limit, history=str(tmp_path / "h.sqlite"))
    except netnodes.NodesUnavailable as exc:
        pytest.skip(str(exc))
    failed = [r for r in out["records"] if not r["ok"]]
    assert not failed, failed
    assert out["node_oom_kills"] == 0, out["node_counters"]
    assert all(n["oom_kills"] == 0 for n in out["node_counters"]), out["node_counters"]
    assert out["kills_in_slots"] <= out["intended_kills"], "a slot was killed that was no exhausted attempt"
    assert not any(r["lost"] for r in out["records"]), "an attempt was lost (a zygote or host killed)"
    # Each node's capacity is its cgroup's, not the host's.
    assert len(out["nodes"]) == 4
    for n in out["nodes"]:
        assert 0 < n["capacity"]["memory"] <= limit, n
        assert "cgroup" in n["sources"]["memory"], n
    hosts = {r["host"] for r in out["records"]}
    assert hosts <= {f"node-{i}" for i in range(4)} and len(hosts) > 1, hosts
