"""Nodes killed under a workflow running through the Executor, on emulated nodes with no shared file system.

Each node is a Dask worker in its own network namespace and memory cgroup
(``tests/cluster/netnodes.py``), the submitter's directory hidden from it: a
file reaches a node only through the transfer servers. Killing a node empties
its cgroup: its Dask worker, the node runtime's host process (which serves the
node's cache) and its tasks all die at once, as when a machine goes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")

from loadmaster import Executor, File, Output
from loadmaster.data.digest import hash_file
from loadmaster.data.transfer.planner import SUBMITTER
from tests.cluster import netnodes

pytestmark = [pytest.mark.netnodes, pytest.mark.dask, pytest.mark.timeout(900)]

MiB = 1 << 20
WAIT_S = 300


@pytest.fixture
def submit_dir(tmp_path: Path) -> Path:
    d = tmp_path / "submitter"
    d.mkdir()
    return d


@pytest.fixture
def nodes(submit_dir: Path) -> Iterator[netnodes.EmulatedNodes]:
    reason = netnodes.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        n = netnodes.EmulatedNodes(4, rate_mbit=100, memory_limit="2GiB", worker_memory_limit="0",
                                   hide=[submit_dir]).__enter__()
    except netnodes.NodesUnavailable as e:
        pytest.skip(str(e))
    try:
        yield n
    finally:
        n.close()


def digest_once(src: Any, done_dir: str, token: str) -> dict[str, Any]:
    """The task: the input's digest; a marker per token, made exclusively (a second completion fails)."""
    from loadmaster.data.digest import hash_file

    digest = hash_file(os.fspath(src))
    os.close(os.open(os.path.join(done_dir, token), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    return {"digest": digest, "node": os.environ.get("LOADMASTER_NODE_NAME"), "token": token}


def wait_until(cond: Any, what: str, timeout_s: float = WAIT_S) -> Any:
    """Poll ``cond()`` until it is truthy (a condition on files or the planner's table); return it."""
    end = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


def partial_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_the_node_relaying_a_file_killed_mid_transfer_every_task_finishes_once_and_none_is_charged(
        nodes: netnodes.EmulatedNodes, submit_dir: Path) -> None:
    src = submit_dir / "shared.bin"
    src.write_bytes(os.urandom(24 * MiB))
    size, digest = src.stat().st_size, hash_file(str(src))
    done_dir = nodes.base_dir / "done"  # on a path the nodes share (not the submitter's)
    done_dir.mkdir()
    names = [nd.name for nd in nodes]
    rx0 = [nodes.link_counters(i).rx_bytes for i in range(len(nodes))]
    with Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address) as ex:
        whole = ex.node.cores  # one task fills a node: the four tasks run on the four nodes
        planner = ex._transfers.planner
        futs = [ex.options(resources={"cores": whole}).submit(digest_once, File(src), str(done_dir), f"t{k}")
                for k in range(len(nodes))]
        # The node the submitter sends to: the first of the chain, relaying to the next as it receives.
        victim = wait_until(lambda: next((r.dest for r in planner.live()
                                          if r.digest == digest and r.source.node == SUBMITTER), ""),
                            "the planner's transfer from the submitter")
        part = nodes[names.index(victim)].dirs.cache / "partial" / digest
        wait_until(lambda: partial_size(part) >= size // 2, f"half the file on {victim}")
        relaying = any(r.source.node == victim for r in planner.live())
        nodes.kill_worker(names.index(victim))  # its worker, its host process (the server), its task
        got = [f.result(timeout=WAIT_S) for f in futs]
        reports = [f.report for f in futs]
        left = planner.live()
    rx = [nodes.link_counters(i).rx_bytes - r for i, r in enumerate(rx0)]
    assert relaying, f"{victim} was serving no transfer when it was killed"
    assert [g["digest"] for g in got] == [digest] * len(nodes)  # every task read the whole, right file
    assert sorted(os.listdir(done_dir)) == sorted(g["token"] for g in got)  # each finished exactly once
    assert victim not in {g["node"] for g in got}
    assert all(r is not None for r in reports)
    lost = [r for r in reports if r is not None and r.extra.get("lost")]
    # Only the task on the killed node lost an attempt (with its node); no task was charged a failure,
    # and no task's staging failed: the node behind the killed one resumed from another holder.
    assert len(lost) <= 1 and all(x["node"] == victim for r in lost for x in r.extra["lost"])
    assert all(not r.extra.get("restaged") for r in reports if r is not None)
    assert all(r.attempts == 1 for r in reports if r is not None and r not in lost)
    resumed = [r.data.fetched_from for r in reports if r is not None and r.data is not None
               and victim in r.data.fetched_from]
    assert resumed and all(len(f) == 2 and sum(f.values()) == size for f in resumed), resumed  # from the offset
    assert left == []  # every reservation released
    # At most one file's worth of extra bytes: the survivors received it once each, the killed node part of it.
    assert sum(rx) <= (len(nodes) - 1) * size * 1.1 + size, f"bytes into the nodes: {rx}"


def make_intermediates(src: Any, same: Any, fresh: Any, log_dir: str) -> str:
    """The producer: ``same`` = the input reversed (the same bytes each run), ``fresh`` = new random bytes."""
    with open(src, "rb") as fh:
        data = fh.read()
    with open(same, "wb") as fh:
        fh.write(data[::-1])
    with open(fresh, "wb") as fh:
        fh.write(os.urandom(MiB))
    node = str(os.environ.get("LOADMASTER_NODE_NAME"))
    with open(os.path.join(log_dir, "producer-runs"), "a") as fh:
        fh.write(node + "\n")
    return node


def digests_of(*files: Any) -> dict[str, Any]:
    """The consumer: the digest of each input as read on its node."""
    from loadmaster.data.digest import hash_file

    return {"digests": [hash_file(os.fspath(f)) for f in files], "node": os.environ.get("LOADMASTER_NODE_NAME")}


def test_a_kept_output_lost_with_its_node_is_rebuilt_by_re_running_its_producer(
        nodes: netnodes.EmulatedNodes, submit_dir: Path) -> None:
    src = submit_dir / "raw.bin"
    src.write_bytes(os.urandom(2 * MiB + 5))
    same, fresh = submit_dir / "reversed.bin", submit_dir / "noise.bin"
    log_dir = nodes.base_dir  # the nodes share it (not the submitter's directory)
    names = [nd.name for nd in nodes]
    with Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address) as ex:
        first = ex.submit(make_intermediates, File(src), Output(same, keep=True), Output(fresh, keep=True),
                          str(log_dir))
        producer_node = first.result(timeout=WAIT_S)
        r0 = first.report
        assert r0 is not None and r0.data is not None
        old = {p.key: p.digest for p in r0.data.outputs}
        nodes.kill_worker(names.index(producer_node))  # the only copies go with it
        wait_until(lambda: not ex.replicas.states(old[str(same)]) and not ex.replicas.states(old[str(fresh)]),
                   "the executor to see the producer's node leave")
        fut = ex.submit(digests_of, File(same), File(fresh))
        got = fut.result(timeout=WAIT_S)
        r = fut.report
    runs = (log_dir / "producer-runs").read_text().split()
    assert len(runs) == 2 and runs[0] == producer_node and runs[1] != producer_node  # re-run on another node
    assert not same.exists() and not fresh.exists()  # kept: never copied to the submitter
    want_same = hashlib.blake2b(src.read_bytes()[::-1], digest_size=32).hexdigest()
    assert got["digests"][0] == want_same == old[str(same)]  # the consumer read the right bytes
    assert r is not None and r.data is not None
    read = {s.key: s.digest for s in r.data.inputs}
    assert got["digests"][1] == read[str(fresh)] != old[str(fresh)]  # what the re-run wrote, not the lost copy
    rebuilt = r.extra.get("rebuilt")
    assert rebuilt and {x["path"] for x in rebuilt} == {str(same), str(fresh)}
    assert {x["producer"] for x in rebuilt} == {first.task_id} and len({x["rerun"] for x in rebuilt}) == 1
    assert r.attempts == 1 and not r.extra.get("restaged")  # waiting for the rebuild cost the consumer nothing
