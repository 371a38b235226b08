"""Declared files through the Executor on emulated nodes with no shared file system.

Each node is a Dask worker in its own network namespace (``tests/cluster/netnodes.py``),
started in a mount namespace of its own in which the submitter's directory is covered
by an empty tmpfs: a node cannot read the submitter's files, so an input reaches it
only through the transfer servers (the submitter's, or another node's) and an output
reaches the submitter only through the producing node's server. The node runtime
(``backends/dask/host.py``) serves its cache; the executor plans a source per input at
dispatch (``data/transfer/client.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")

from loadmaster import Executor, File, Output
from tests.cluster import netnodes

pytestmark = [pytest.mark.netnodes, pytest.mark.dask, pytest.mark.timeout(900)]

MiB = 1 << 20
WAIT_S = 300


@pytest.fixture(scope="module")
def submit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("submitter")


@pytest.fixture(scope="module")
def nodes(submit_dir: Path) -> Iterator[netnodes.EmulatedNodes]:
    reason = netnodes.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        n = netnodes.EmulatedNodes(4, rate_mbit=100, hide=[submit_dir]).__enter__()
    except netnodes.NodesUnavailable as e:
        pytest.skip(str(e))
    try:
        yield n
    finally:
        n.close()


def sees(path: str) -> bool:
    """Run on a node: can it see ``path``?"""
    return os.path.exists(path)


def reverse(src: Any, dst: Any) -> dict[str, Any]:
    """The task: read the input whole, write it reversed to the output."""
    with open(src, "rb") as fh:
        data = fh.read()
    with open(dst, "wb") as fh:
        fh.write(data[::-1])
    return {"read": len(data), "staged": os.fspath(src), "node": os.environ.get("LOADMASTER_NODE_NAME")}


def read_all(src: Any) -> dict[str, Any]:
    """The task: read the input whole."""
    with open(src, "rb") as fh:
        n = len(fh.read())
    return {"read": n, "node": os.environ.get("LOADMASTER_NODE_NAME")}


def host_tx(nodes: netnodes.EmulatedNodes) -> int:
    """Bytes the host (submitter) sent on its link to the switch."""
    return int(Path(f"/sys/class/net/{nodes.host_if}/statistics/tx_bytes").read_text())


def test_a_task_on_a_node_reads_its_file_and_writes_its_output_with_no_shared_file_system(
        nodes: netnodes.EmulatedNodes, submit_dir: Path) -> None:
    src = submit_dir / "in.bin"
    src.write_bytes(os.urandom(2 * MiB + 17))
    out = submit_dir / "out.bin"
    client = nodes.client()
    # The premise: no node can read the submitter's directory.
    assert not any(client.run(sees, str(src)).values())
    with Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address) as ex:
        fut = ex.submit(reverse, File(src), Output(out))
        got = fut.result(timeout=WAIT_S)
        sent = ex._transfers.server.bytes_sent
    assert got["read"] == src.stat().st_size and got["node"] in {nd.name for nd in nodes}
    assert not got["staged"].startswith(str(submit_dir))  # it read its node's cached copy
    assert out.read_bytes() == src.read_bytes()[::-1]  # the output is at the submitter's path
    assert not [p for p in os.listdir(submit_dir) if p.startswith(".out.bin.")]  # no temporary left
    r = fut.report
    assert r is not None and r.data is not None
    assert r.data.fetched_from == {"client": src.stat().st_size}
    assert src.stat().st_size <= sent < src.stat().st_size + 64 * 1024  # through the submitter's server
    assert [(p.kept, p.copied_back) for p in r.data.outputs] == [(False, False)]  # pulled, not copied


def test_four_nodes_read_one_file_the_submitter_sends_it_about_once(
        nodes: netnodes.EmulatedNodes, submit_dir: Path) -> None:
    src = submit_dir / "shared-8m.bin"
    src.write_bytes(os.urandom(8 * MiB))
    size = src.stat().st_size
    with Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address) as ex:
        whole = ex.node.cores  # one task fills a node: each node runs one of them
        rx0 = [nodes.link_counters(i).rx_bytes for i in range(len(nodes))]
        tx0 = host_tx(nodes)
        futs = [ex.options(resources={"cores": whole}).submit(read_all, File(src)) for _ in range(len(nodes))]
        done = [f.result(timeout=WAIT_S) for f in futs]
        sent = ex._transfers.server.bytes_sent
        tx = host_tx(nodes) - tx0
        rx = [nodes.link_counters(i).rx_bytes - r for i, r in enumerate(rx0)]
        log = list(ex._transfers.planner.log)
    assert [d["read"] for d in done] == [size] * len(nodes)
    assert sorted(d["node"] for d in done) == sorted(nd.name for nd in nodes)
    assert sent <= 1.1 * size, f"the submitter's server sent {sent / size:.2f}x the file"
    assert tx <= 1.1 * size, f"the submitter's link carried {tx / size:.2f}x the file"
    reports = [f.report for f in futs]
    assert all(r is not None and r.data is not None and r.data.bytes_fetched == size for r in reports)
    assert all(size <= n < 1.5 * size for n in rx), f"bytes into each node: {rx}"  # each received it once
    assert sum(1 for _d, s, _t, _o in log if s == "client") == 1  # one planned transfer from the submitter
    assert all(o == "done" for *_x, o in log) and len(log) == len(nodes)  # every reservation released, done


def produce(dst: Any, n: int) -> str:
    """The task: write ``n`` random bytes to the output; return the node it ran on."""
    with open(dst, "wb") as fh:
        fh.write(os.urandom(n))
    return str(os.environ.get("LOADMASTER_NODE_NAME"))


def digest_of(src: Any) -> dict[str, Any]:
    """The task: the input's digest, read whole on the node."""
    from loadmaster.data.digest import hash_file

    return {"digest": hash_file(os.fspath(src)), "node": os.environ.get("LOADMASTER_NODE_NAME")}


def test_a_kept_output_stays_on_its_node_and_tasks_on_other_nodes_fetch_it_from_there(
        nodes: netnodes.EmulatedNodes, submit_dir: Path) -> None:
    mid = submit_dir / "intermediate.bin"
    with Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address) as ex:
        whole = ex.node.cores
        first = ex.submit(produce, Output(mid, keep=True), 3 * MiB)
        producer = first.result(timeout=WAIT_S)
        r0 = first.report
        assert r0 is not None and r0.data is not None
        (made,) = r0.data.outputs
        assert (made.kept, made.copied_back) == (True, False)
        sent0 = ex._transfers.server.bytes_sent
        futs = [ex.options(resources={"cores": whole}).submit(digest_of, File(mid)) for _ in range(len(nodes))]
        done = [f.result(timeout=WAIT_S) for f in futs]
        sent = ex._transfers.server.bytes_sent - sent0
        log = list(ex._transfers.planner.log)
    assert not mid.exists()  # kept: never copied to the submitter
    assert [d["digest"] for d in done] == [made.digest] * len(nodes)  # every node read the producer's bytes
    assert sorted(d["node"] for d in done) == sorted(nd.name for nd in nodes)
    assert sent == 0  # the submitter never held it
    reports = [f.report for f in futs]
    assert all(r is not None and r.data is not None for r in reports)
    fetched = [r.data.fetched_from for r in reports if r is not None and r.data is not None]
    assert sum(1 for f in fetched if not f) == 1  # the producer's own node: a cache hit
    assert all(sum(f.values()) == made.size for f in fetched if f)  # the others: once each, from peers
    planned = [(s, o) for d, s, _t, o in log if d == made.digest]
    assert len(planned) == len(nodes) - 1 and all(s != "client" and o == "done" for s, o in planned)
    assert producer  # ran on a node


def hold_first_time(src: Any, flag: str) -> dict[str, Any]:
    """The task: read the input; on its first attempt anywhere, then wait (its node is killed meanwhile)."""
    import time

    with open(src, "rb") as fh:
        n = len(fh.read())
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return {"read": n, "node": os.environ.get("LOADMASTER_NODE_NAME")}
    os.write(fd, str(os.environ.get("LOADMASTER_NODE_NAME")).encode())
    os.close(fd)
    time.sleep(600)  # killed with its node before this ends
    return {"read": n, "node": "never"}


def test_a_node_killed_while_its_task_runs_releases_its_transfers_and_the_task_reruns_elsewhere(
        nodes: netnodes.EmulatedNodes, submit_dir: Path) -> None:
    """Last in this module: it kills one of the module's nodes."""
    import time

    src = submit_dir / "for-the-killed.bin"
    src.write_bytes(os.urandom(MiB))
    flag = nodes.base_dir / "first-attempt"  # on a path the nodes share (not the submitter's)
    with Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address) as ex:
        fut = ex.submit(hold_first_time, File(src), str(flag))
        deadline = time.monotonic() + WAIT_S
        while not flag.exists() or not flag.read_text():
            assert time.monotonic() < deadline, "the first attempt never started"
            time.sleep(0.05)  # the task is running on its node once it wrote its name
        first = flag.read_text()
        (victim,) = [i for i, nd in enumerate(nodes) if nd.name == first]
        live = ex._transfers.planner.live()
        assert [(r.source.node, r.dest) for r in live] and all(r.dest != "client" for r in live)
        nodes.kill_worker(victim)  # SIGKILL: the node's worker, its host and its task go
        got = fut.result(timeout=WAIT_S)
        log = list(ex._transfers.planner.log)
        left = ex._transfers.planner.live()
    assert got["read"] == MiB and got["node"] != first
    r = fut.report
    assert r is not None and r.extra.get("lost") and r.data is not None and r.data.bytes_fetched == MiB
    assert left == []  # every reservation released
    assert [o for *_x, o in log].count("dead") == 1  # the killed node's, released when it left
    assert [o for *_x, o in log].count("done") == 1  # the rerun's


def tree_digest_task(src: Any, dst: Any) -> dict[str, Any]:
    """The task: read every file of the input tree; write an output tree of their reversed bytes."""
    read = {}
    for dirpath, _dirs, files in os.walk(src):
        for f in files:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, src)
            with open(p, "rb") as fh:
                read[rel] = fh.read()
    os.makedirs(os.path.join(dst, "sub"))
    for rel, data in read.items():
        with open(os.path.join(dst, "sub" if "/" in rel else "", os.path.basename(rel)), "wb") as fh:
            fh.write(data[::-1])
    return {"files": sorted(read), "node": os.environ.get("LOADMASTER_NODE_NAME"), "staged": os.fspath(src)}


def test_a_directory_moves_to_a_node_and_a_directory_output_comes_back(
        nodes: netnodes.EmulatedNodes, submit_dir: Path) -> None:
    tree = submit_dir / "atlas"
    (tree / "sub" / "deeper").mkdir(parents=True)
    files = {"a.bin": os.urandom(MiB + 3), "sub/b.bin": os.urandom(1000), "sub/deeper/c.bin": b"",
             "sub/deeper/d.txt": b"hello"}
    for rel, data in files.items():
        (tree / rel).write_bytes(data)
    out = submit_dir / "results"
    client = nodes.client()
    assert not any(client.run(sees, str(tree)).values())
    with Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address) as ex:
        fut = ex.submit(tree_digest_task, File(tree), Output(out))
        got = fut.result(timeout=WAIT_S)
    assert got["files"] == sorted(files) and not got["staged"].startswith(str(submit_dir))
    r = fut.report
    assert r is not None and r.data is not None
    assert r.data.fetched_from == {"client": sum(len(d) for d in files.values())}
    assert [(p.kind, p.kept, p.copied_back) for p in r.data.outputs] == [("dir", False, False)]  # pulled
    back = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert back == {("sub/" if "/" in rel else "") + os.path.basename(rel): data[::-1]
                    for rel, data in files.items()}
    assert not [p for p in os.listdir(submit_dir) if p.startswith(".results.")]  # no temporary left
