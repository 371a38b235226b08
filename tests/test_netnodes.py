"""Emulated nodes: 4 Dask workers, each its own network namespace, link, dirs and cgroup.

Root only (network namespaces, veth, tc, memory cgroups); elsewhere the tests skip with
the reason. Marker ``netnodes``; part of the default suite (one module-wide set of
nodes, ~20-40 s here). Rate numbers beyond these generous bounds: bench/netnodes_links.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.cluster import netnodes
from tests.cluster.netnodes import EmulatedNodes

pytestmark = [pytest.mark.netnodes, pytest.mark.timeout(600)]

RATE_MBIT = 50
NODE_MEMORY = 2 << 30


@pytest.fixture(scope="module")
def nodes() -> Iterator[EmulatedNodes]:
    reason = netnodes.unavailable_reason()
    if reason:
        pytest.skip(reason)
    # Three shaped nodes and one unshaped, to compare a shaped link against a free one.
    try:
        n = EmulatedNodes(4, rate_mbit=[RATE_MBIT, RATE_MBIT, RATE_MBIT, None], memory_limit=NODE_MEMORY).__enter__()
    except netnodes.NodesUnavailable as e:
        pytest.skip(str(e))
    try:
        yield n
    finally:
        n.close()


def _identity() -> dict[str, object]:
    """Run on a node: what makes it a node of its own."""
    cgroup = ""
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        if "memory" in ctrl.split(","):
            cgroup = path
    addrs = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True).stdout
    return {
        "netns_inode": os.stat("/proc/self/ns/net").st_ino,
        "eth0": addrs.split()[3].split("/")[0] if addrs.strip() else "",
        "ledger": os.environ.get("LOADMASTER_LEDGER"),
        "history": os.environ.get("LOADMASTER_HISTORY"),
        "tmp": os.environ.get("TMPDIR"),
        "node": os.environ.get("LOADMASTER_NODE_NAME"),
        "memory_cgroup": cgroup,
        "pid": os.getpid(),
    }


def test_each_node_has_its_own_namespace_dirs_and_cgroup(nodes: EmulatedNodes) -> None:
    client = nodes.client()
    ids = [client.submit(_identity, workers=[nd.worker_address], pure=False).result(timeout=60) for nd in nodes]
    host_ns = os.stat("/proc/self/ns/net").st_ino
    assert len({i["netns_inode"] for i in ids}) == 4
    assert host_ns not in {i["netns_inode"] for i in ids}
    for nd, ident in zip(nodes, ids, strict=True):
        assert ident["node"] == nd.name
        assert ident["eth0"] == nd.address
        assert ident["ledger"] == str(nd.dirs.ledger)
        assert ident["history"] == str(nd.dirs.history)
        assert ident["tmp"] == str(nd.dirs.tmp)
        assert nd.dirs.ledger.is_dir() and nd.dirs.tmp.is_dir()
        assert nd.cgroup is not None
        assert str(ident["memory_cgroup"]).endswith(nd.cgroup.name)
        assert int((nd.cgroup / "memory.limit_in_bytes").read_text()) == NODE_MEMORY
        assert int(str(ident["pid"])) in [int(p) for p in (nd.cgroup / "cgroup.procs").read_text().split()]
    assert len({i["ledger"] for i in ids}) == 4


def test_links_are_shaped_and_counted(nodes: EmulatedNodes) -> None:
    client = nodes.client()
    nbytes = 3 << 20  # 0.5 s at 50 Mbit/s
    up = netnodes.transfer(nodes, client, 0, nbytes, "up")
    down = netnodes.transfer(nodes, client, 1, nbytes, "down")
    free = netnodes.transfer(nodes, client, 3, 8 * nbytes, "up")
    # Counted on the links: at least the payload went through the node's interface.
    for t in (up, down, free):
        assert nbytes <= t.link_bytes - (t.payload_bytes - nbytes) <= t.payload_bytes * 1.2 + (1 << 20), t
    # Generous bounds (a loaded shared machine): near the set rate, never above it by much,
    # and far below the unshaped link.
    for t in (up, down):
        assert 0.4 * RATE_MBIT < t.mbit_s < 1.3 * RATE_MBIT, t
    assert free.mbit_s > 4 * max(up.mbit_s, down.mbit_s), (free, up, down)


def test_kill_9_of_a_worker_is_seen_by_the_client(nodes: EmulatedNodes) -> None:
    client = nodes.client()
    victim = nodes[2]
    assert victim.worker_address in client.scheduler_info(n_workers=-1)["workers"]
    nodes.kill_worker(2)
    assert victim.proc is not None and victim.proc.returncode == -9
    deadline = time.monotonic() + 120
    while victim.worker_address in client.scheduler_info(n_workers=-1)["workers"]:
        assert time.monotonic() < deadline, "the scheduler still lists the killed worker after 120 s"
        time.sleep(0.1)  # waiting for the scheduler to notice the closed connection
    assert len(client.scheduler_info(n_workers=-1)["workers"]) == 3
    # The others still run tasks.
    assert client.submit(os.getpid, workers=[nodes[0].worker_address], pure=False).result(timeout=60) > 0
