"""Peer transfers of declared files: real sockets, real processes, kill -9 of a source mid-transfer.

What a user relies on: a node pulls a file from the holder the client chose,
straight into its cache, while that holder's own copy may still be arriving
(pipelined); a holder killed mid-transfer is replaced by another one, from
the received offset; a wrong byte, an edited submitter file, an unsigned or
malformed request never gets through; the client's planner forms a chain or
tree from the submitter (never a star) and always releases its limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from loadmaster.data.cache import Cache
from loadmaster.data.digest import hash_file
from loadmaster.data.refs import DataReport, Source, Staged
from loadmaster.data.replicas import CREATING, READY, ReplicaTable
from loadmaster.data.transfer.peer import PeerFetcher
from loadmaster.data.transfer.planner import SUBMITTER, TransferPlanner
from loadmaster.data.transfer.protocol import MAGIC, ProtocolError, mac, new_secret, request
from loadmaster.data.transfer.server import FileCatalog, TransferServer
from loadmaster.errors import DataError

SRC = str(Path(__file__).resolve().parent.parent / "src")
MiB = 1 << 20
SECRET = new_secret()


def payload(path: Path, n: int, seed: int = 1) -> tuple[Path, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(n))
    return path, hash_file(str(path))


def wait_for(cond: object, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)  # a condition on files or sockets another process changes


def src(name: str, server: TransferServer) -> Source:
    return Source(name, "h-" + name, "", server.address)


# ── serving and fetching ──────────────────────────────────────────────────────


def test_a_ready_entry_moves_into_the_other_cache_checked(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", 3 * MiB + 17)
    a, b = Cache(str(tmp_path / "a")), Cache(str(tmp_path / "b"))
    a.put_path(str(f), digest=digest)
    with TransferServer(SECRET, cache=a) as srv:
        got = PeerFetcher(SECRET).fetch(digest, f.stat().st_size, "file", [src("n0", srv)], b, "in.bin")
        assert srv.bytes_sent == f.stat().st_size
    assert Path(got.path).read_bytes() == f.read_bytes()
    assert got.path == b.lookup(digest)
    assert (got.bytes_moved, got.source, got.via) == (f.stat().st_size, "n0", (("n0", f.stat().st_size),))
    # Already there: nothing moves.
    again = PeerFetcher(SECRET).fetch(digest, f.stat().st_size, "file", [Source("x", "h", "", "127.0.0.1:9")], b)
    assert (again.bytes_moved, again.source) == (0, "cache")


def test_a_partial_entry_is_relayed_while_it_arrives(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", 4 * MiB)
    data = f.read_bytes()
    a, b = Cache(str(tmp_path / "a")), Cache(str(tmp_path / "b"))
    w = a.begin(digest, len(data))
    assert w is not None
    w.write(data[: MiB])
    with TransferServer(SECRET, cache=a) as srv:
        out: dict[str, object] = {}
        t = threading.Thread(target=lambda: out.update(
            got=PeerFetcher(SECRET).fetch(digest, len(data), "file", [src("n0", srv)], b)))
        t.start()
        # b holds the first MiB while a's own copy is still arriving.
        wait_for(lambda: (v := b.partial(digest)) is not None and v.received() == MiB, "the relayed first MiB")
        assert a.lookup(digest) is None and b.lookup(digest) is None
        w.write(data[MiB:])
        w.commit()
        t.join(60)
    got = out["got"]
    assert Path(got.path).read_bytes() == data  # type: ignore[attr-defined]


RELAY = """
import sys, time
from loadmaster.data.cache import Cache
from loadmaster.data.transfer.server import TransferServer
root, digest, path, half, secret = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), bytes.fromhex(sys.argv[5])
data = open(path, 'rb').read()
cache = Cache(root)
w = cache.begin(digest, len(data))
w.write(data[:half])       # a holder whose own copy stopped half way (its source is slow)
srv = TransferServer(secret, cache=cache)
print(srv.address, flush=True)
time.sleep(3600)
"""


def test_a_source_killed_mid_transfer_is_replaced_from_the_received_offset(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", 6 * MiB)
    data = f.read_bytes()
    half = 3 * MiB
    relay = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(RELAY), str(tmp_path / "r"), digest, str(f), str(half), SECRET.hex()],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE)
    try:
        assert relay.stdout is not None
        addr = relay.stdout.readline().decode().strip()
        ready = Cache(str(tmp_path / "c"))
        ready.put_path(str(f), digest=digest)
        b = Cache(str(tmp_path / "b"))
        with TransferServer(SECRET, cache=ready) as other:
            out: dict[str, object] = {}
            t = threading.Thread(target=lambda: out.update(got=PeerFetcher(SECRET).fetch(
                digest, len(data), "file", [Source("relay", "h", "", addr), src("n2", other)], b)))
            t.start()
            wait_for(lambda: (v := b.partial(digest)) is not None and v.received() == half, "half from the relay")
            relay.send_signal(signal.SIGKILL)
            t.join(60)
            assert other.bytes_sent == len(data) - half  # resumed at the offset, not from the start
    finally:
        relay.kill()
        relay.wait()
    got = out["got"]
    assert Path(got.path).read_bytes() == data  # type: ignore[attr-defined]
    assert got.via == (("relay", half), ("n2", len(data) - half))  # type: ignore[attr-defined]
    assert got.source == "relay,n2"  # type: ignore[attr-defined]


WRITER = """
import sys, time
from loadmaster.data.cache import Cache
root, digest, path, half = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = open(path, 'rb').read()
w = Cache(root).begin(digest, len(data))
w.write(data[:half])
print("half", flush=True)
time.sleep(3600)
"""


def test_a_relay_whose_own_writer_is_killed_stops_and_the_receiver_resumes_elsewhere(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", 4 * MiB)
    data = f.read_bytes()
    half = 2 * MiB
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path / "a"), digest, str(f),
                               str(half)], env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"half\n"
        a = Cache(str(tmp_path / "a"))  # the node's server runs in another process than its writer
        ready = Cache(str(tmp_path / "c"))
        ready.put_path(str(f), digest=digest)
        b = Cache(str(tmp_path / "b"))
        with TransferServer(SECRET, cache=a, stall_s=3600) as relay, TransferServer(SECRET, cache=ready) as other:
            out: dict[str, object] = {}
            t = threading.Thread(target=lambda: out.update(got=PeerFetcher(SECRET).fetch(
                digest, len(data), "file", [src("a", relay), src("c", other)], b)))
            t.start()
            wait_for(lambda: (v := b.partial(digest)) is not None and v.received() == half, "half from the relay")
            writer.send_signal(signal.SIGKILL)  # its lock is released: the relay stops short, not after stall_s
            t.join(60)
            assert not t.is_alive()
    finally:
        writer.kill()
        writer.wait()
    got = out["got"]
    assert Path(got.path).read_bytes() == data  # type: ignore[attr-defined]
    assert got.via == (("a", half), ("c", len(data) - half))  # type: ignore[attr-defined]


def test_a_wrong_byte_from_a_source_never_becomes_visible(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", 2 * MiB)
    a, b = Cache(str(tmp_path / "a")), Cache(str(tmp_path / "b"))
    path = a.put_path(str(f), digest=digest).path
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:  # the holder's disk flipped a byte
        fh.seek(MiB)
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    with TransferServer(SECRET, cache=a) as srv, pytest.raises(DataError, match="source changed or is corrupt"):
        PeerFetcher(SECRET).fetch(digest, 2 * MiB, "file", [src("n0", srv)], b)
    assert b.lookup(digest) is None and b.partial(digest) is None


def test_the_submitter_serves_its_declared_file_and_refuses_it_once_edited(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", MiB)
    files = FileCatalog()
    files.add(digest, str(f))
    with TransferServer(SECRET, files=files) as srv:
        got = PeerFetcher(SECRET).fetch(digest, MiB, "file", [src(SUBMITTER, srv)], Cache(str(tmp_path / "b")))
        assert Path(got.path).read_bytes() == f.read_bytes()
        f.write_bytes(random.Random(2).randbytes(MiB))  # same size, edited in place
        fetcher = PeerFetcher(SECRET, rounds=1)
        with pytest.raises(DataError, match="changed since it was declared"):
            fetcher.fetch(digest, MiB, "file", [src(SUBMITTER, srv)], Cache(str(tmp_path / "c")))


def _raw(server: TransferServer, body: bytes, good_mac: bool, secret: bytes = SECRET) -> dict[str, object]:
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        hello = s.recv(36, socket.MSG_WAITALL)
        assert hello[:4] == MAGIC
        m = mac(secret, hello[4:], body) if good_mac else bytes(32)
        s.sendall(struct.pack("!I", len(body)) + body + m)
        n = struct.unpack("!I", s.recv(4, socket.MSG_WAITALL))[0]
        return json.loads(s.recv(n, socket.MSG_WAITALL))  # type: ignore[no-any-return]


def test_unsigned_forged_or_malformed_requests_are_refused(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", 1000)
    a = Cache(str(tmp_path / "a"))
    a.put_path(str(f), digest=digest)
    with TransferServer(SECRET, cache=a) as srv:
        with socket.create_connection((srv.host, srv.port)) as s, pytest.raises(ProtocolError, match="not signed"):
            request(s, new_secret(), digest, 0, 0)  # another run's secret
        body = json.dumps({"digest": digest, "offset": 0}).encode()
        assert "not signed" in str(_raw(srv, body, good_mac=False)["error"])
        for bad in (b'{"digest": "../../../etc/passwd"}', b"\x80\x04\x95pickle", b"[1, 2]",
                    json.dumps({"digest": digest, "offset": -1}).encode()):
            ans = _raw(srv, bad, good_mac=True)
            assert ans["ok"] is False
        ans = _raw(srv, json.dumps({"digest": "ab" * 32}).encode(), good_mac=True)
        assert ans == {"ok": False, "error": f"{'ab' * 8} is not held here"}
        assert srv.served == 0 and srv.bytes_sent == 0


def _closed_by_server(s: socket.socket) -> bool:
    """Read until the server closes ``s``: True (a hang guard of 60 s is a failure, not a budget)."""
    s.settimeout(60)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def test_a_flood_of_idle_or_trickling_connections_is_cut_and_a_real_fetch_gets_through(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", 2 * MiB)
    a, b = Cache(str(tmp_path / "a")), Cache(str(tmp_path / "b"))
    a.put_path(str(f), digest=digest)
    with TransferServer(SECRET, cache=a, handshake_s=1.0, max_handshakes=8) as srv:
        idle = [socket.create_connection((srv.host, srv.port)) for _ in range(200)]
        # Past the cap, each new connection cuts the oldest still in its handshake.
        wait_for(lambda: srv.dropped >= 200 - 8, "the flood beyond the cap to be cut")
        assert srv.active <= 8
        trickle = socket.create_connection((srv.host, srv.port))
        got = PeerFetcher(SECRET).fetch(digest, f.stat().st_size, "file", [src("n0", srv)], b)
        assert Path(got.path).read_bytes() == f.read_bytes() and got.source == "n0"
        # One byte of a plausible request at a time: the deadline is over the whole request.
        stopped = threading.Event()

        def trickling() -> None:
            with contextlib.suppress(OSError):
                for byte in struct.pack("!I", 60) + b'{"digest": "' + b"a" * 48:
                    trickle.send(bytes([byte]))
                    if stopped.wait(0.2):
                        return
        t = threading.Thread(target=trickling)
        t.start()
        try:
            assert all(_closed_by_server(s) for s in idle), "an idle connection was held open"
            assert _closed_by_server(trickle), "a trickling connection was held past the handshake deadline"
        finally:
            stopped.set()
            t.join()
            for s in (*idle, trickle):
                s.close()
        wait_for(lambda: srv.active == 0, "the server to let go of every connection")
        assert srv.served == 1 and srv.bytes_sent == f.stat().st_size


def test_past_the_transfer_cap_a_request_is_refused_as_busy_and_the_receiver_goes_elsewhere(
        tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", MiB)
    a, b, c = (Cache(str(tmp_path / n)) for n in "abc")
    a.put_path(str(f), digest=digest)
    w = c.begin(digest, MiB)  # c's copy never grows: a request to c waits there, holding c's one slot
    assert w is not None
    try:
        with TransferServer(SECRET, cache=c, max_transfers=1, stall_s=3600) as busy, \
                TransferServer(SECRET, cache=a) as other, socket.create_connection((busy.host, busy.port)) as holder:
            request(holder, SECRET, digest, 0, 0)  # the answer header came: it holds the slot
            got = PeerFetcher(SECRET).fetch(digest, MiB, "file", [src("busy", busy), src("a", other)], b)
            assert got.source == "a" and Path(got.path).read_bytes() == f.read_bytes()
            assert busy.transferring == 1 and busy.served == 1
    finally:
        w.abort()


def test_a_directory_moves_whole_into_the_other_cache_checked(tmp_path: Path) -> None:
    tree = tmp_path / "atlas"
    (tree / "x" / "y").mkdir(parents=True)
    (tree / "one.bin").write_bytes(os.urandom(MiB + 1))
    (tree / "x" / "two").write_bytes(b"two")
    (tree / "x" / "y" / "empty").write_bytes(b"")
    a, b = Cache(str(tmp_path / "a")), Cache(str(tmp_path / "b"))
    put = a.put_path(str(tree))
    assert put.kind == "dir"
    with TransferServer(SECRET, cache=a) as srv:
        got = PeerFetcher(SECRET).fetch(put.digest, put.size, "dir", [src("n0", srv)], b, str(tree))
        assert srv.bytes_sent == put.size
    assert got.path == b.lookup(put.digest) and (got.bytes_moved, got.source) == (put.size, "n0")
    assert {str(p.relative_to(got.path)): p.read_bytes() for p in Path(got.path).rglob("*") if p.is_file()} == {
        str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()}


def _hostile_tree_server(manifest: bytes, size: int, tail: bytes) -> tuple[socket.socket, threading.Thread]:
    """A fake holder that answers any signed request with this tree header, manifest and bytes."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = lsock.accept()
            with conn:
                conn.sendall(MAGIC + os.urandom(32))
                n = struct.unpack("!I", conn.recv(4, socket.MSG_WAITALL))[0]
                conn.recv(n + 32, socket.MSG_WAITALL)
                head = json.dumps({"ok": True, "size": size, "offset": 0, "state": "tree",
                                   "manifest": len(manifest)}).encode()
                conn.sendall(struct.pack("!I", len(head)) + head + manifest + tail)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock, t


@pytest.mark.parametrize("manifest", [
    [["../escaped", "file", 3]],
    [["/abs", "file", 3]],
    [["a", "dir", 0], ["a/../../escaped", "file", 3]],
    [["nodir/escaped", "file", 3]],
    [["x", "file", 3], ["x", "file", 0]],
    [["x", "link", 3]],
    [["x", "file", 2]],  # the sizes do not add up to the declared 3
])
def test_a_hostile_tree_manifest_is_refused_and_nothing_is_written_outside(tmp_path: Path,
                                                                            manifest: list[object]) -> None:
    b = Cache(str(tmp_path / "b"))
    lsock, t = _hostile_tree_server(json.dumps(manifest).encode(), 3, b"abc")
    with lsock:
        holder = Source("evil", "h", "", f"127.0.0.1:{lsock.getsockname()[1]}")
        with pytest.raises(DataError, match="no source delivered the directory"):
            PeerFetcher(SECRET, rounds=1).fetch("ab" * 32, 3, "dir", [holder], b, "tree")
    t.join(10)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "b" / "escaped").exists()
    assert not Path("/escaped").exists() and not Path("/abs").exists()
    assert b.lookup("ab" * 32) is None and os.listdir(tmp_path / "b" / "tmp") == []


def test_a_tree_whose_bytes_are_not_its_digest_never_becomes_an_entry(tmp_path: Path) -> None:
    b = Cache(str(tmp_path / "b"))
    lsock, t = _hostile_tree_server(json.dumps([["x", "file", 3]]).encode(), 3, b"abc")
    with lsock:
        holder = Source("evil", "h", "", f"127.0.0.1:{lsock.getsockname()[1]}")
        with pytest.raises(DataError, match="changed since it was submitted"):
            PeerFetcher(SECRET, rounds=1).fetch("ab" * 32, 3, "dir", [holder], b, "tree")
    t.join(10)
    assert b.lookup("ab" * 32) is None and os.listdir(tmp_path / "b" / "tmp") == []


# ── the planner ───────────────────────────────────────────────────────────────


def planner(n: int, **kw: object) -> TransferPlanner:
    p = TransferPlanner(rng=random.Random(0), **kw)  # type: ignore[arg-type]
    p.add_submitter("submit-host", "10.0.0.1:1")
    for i in range(n):
        p.add_node(f"n{i}", f"host{i}", f"10.0.0.{i + 2}:1")
    p.declare("d" * 64)
    return p


def test_eight_nodes_at_once_form_a_chain_from_the_submitter_not_a_star() -> None:
    p = planner(8, submitter_limit=1, source_limit=1)
    rs = [p.plan("d" * 64, 100, f"n{i}") for i in range(8)]
    assert [r.source.node for r in rs if r] == [SUBMITTER] + [f"n{i}" for i in range(7)]
    assert p.outgoing(SUBMITTER) == 1
    assert p.replicas.states("d" * 64)["n7"] == CREATING
    # n7's alternates: the submitter (ready) first, then the other creating holders.
    assert rs[7] is not None and rs[7].alternates[0].node == SUBMITTER


def test_limits_hold_and_a_full_planner_waits_for_a_release() -> None:
    p = planner(4, submitter_limit=2, source_limit=2, dest_limit=1)
    rs = [p.plan("d" * 64, 1, f"n{i}") for i in range(4)]
    # Fewest outgoing first: each new creating holder (fed already) beats the busier ones.
    assert [r.source.node if r else None for r in rs] == [SUBMITTER, "n0", "n1", "n2"]
    assert p.plan("d" * 64, 1, "n0") is None  # n0 is at its incoming limit (1)
    assert max(p.outgoing(n) for n in (SUBMITTER, "n0", "n1", "n2")) == 1
    p2 = planner(2, submitter_limit=1, source_limit=0)  # nodes may not send: only the submitter, one at a time
    first = p2.plan("d" * 64, 1, "n0")
    assert first is not None and p2.plan("d" * 64, 1, "n1") is None
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(p2.wait_plan("d" * 64, 1, "n1", timeout_s=60)))
    t.start()
    t.join(0.05)
    assert not got  # waiting, not exceeding the submitter's limit
    p2.remove_node("n0")  # n0 died mid-transfer: its reservation is released, the waiter wakes
    t.join(60)
    assert first.outcome == "dead" and not p2.release(first, "done")  # released once, by the death
    assert got and got[0].source.node == SUBMITTER  # type: ignore[attr-defined]


@pytest.mark.parametrize("outcome", ["done", "failed", "timeout", "dead"])
def test_every_outcome_releases_both_limits_once(outcome: str) -> None:
    now = [0.0]
    p = TransferPlanner(timeout_s=10, clock=lambda: now[0])
    p.add_submitter("h", "1.1.1.1:1")
    p.add_node("n0", "h0", "1.1.1.2:1")
    p.add_node("n1", "h1", "1.1.1.3:1")
    p.declare("e" * 64)
    r = p.plan("e" * 64, 5, "n0")
    assert r is not None and (p.outgoing(SUBMITTER), p.incoming("n0")) == (1, 1)
    if outcome == "timeout":
        now[0] = 9.9
        assert p.expire() == []
        now[0] = 10.0
        assert p.expire() == [r]
    elif outcome == "dead":
        assert p.remove_node("n0") == [r]
    else:
        assert p.release(r, outcome)
    assert r.outcome == outcome and not p.release(r, "done") and p.live() == []
    assert (p.outgoing(SUBMITTER), p.incoming("n0")) == (0, 0)
    state = p.replicas.states("e" * 64).get("n0")
    assert state == (READY if outcome == "done" else None)  # a failed copy is nobody's source
    assert p.plan("e" * 64, 5, "n1") is not None


def test_same_host_breaks_a_tie_and_creating_holders_without_a_feeder_are_not_sources() -> None:
    table = ReplicaTable()
    p = TransferPlanner(table, rng=random.Random(3))
    for name, host in (("a", "x"), ("b", "y"), ("c", "y"), ("d", "z")):
        p.add_node(name, host, f"{name}:1")
    p.declare("f" * 64, "a")
    p.declare("f" * 64, "b")
    table.mark("d", "f" * 64, CREATING)  # an order went there, no transfer feeds it yet
    r = p.plan("f" * 64, 1, "c")
    assert r is not None and r.source.node == "b"  # same host as c
    assert [s.node for s in r.alternates] == ["a"]


# ── planner, servers and fetchers together ────────────────────────────────────


def test_four_nodes_get_the_file_through_a_chain_the_submitter_sends_it_once(tmp_path: Path) -> None:
    f, digest = payload(tmp_path / "in.bin", 8 * MiB)
    size = f.stat().st_size
    files = FileCatalog()
    files.add(digest, str(f))
    p = TransferPlanner(submitter_limit=1, source_limit=1)
    caches = [Cache(str(tmp_path / f"n{i}")) for i in range(4)]
    with TransferServer(SECRET, files=files) as sub:
        servers = [TransferServer(SECRET, cache=c) for c in caches]
        try:
            p.add_submitter("h", sub.address)
            for i, s in enumerate(servers):
                p.add_node(f"n{i}", f"h{i}", s.address)
            p.declare(digest)
            plans = [p.wait_plan(digest, size, f"n{i}", timeout_s=60) for i in range(4)]
            reports: list[DataReport] = []

            def node(i: int) -> None:
                r = plans[i]
                try:
                    got = PeerFetcher(SECRET).fetch(digest, size, "file", r.sources, caches[i], str(f))
                    p.release(r, "done")
                except BaseException:
                    p.release(r, "failed")
                    raise
                reports.append(DataReport(f"n{i}", f"h{i}", caches[i].root, (Staged(
                    str(f), digest, size, False, got.bytes_moved, got.source, got.seconds, got.via),)))

            ts = [threading.Thread(target=node, args=(i,)) for i in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
            assert sub.bytes_sent == size  # the submitter sent the file once
            assert sorted(s.bytes_sent for s in servers) == [0, size, size, size]
        finally:
            for s in servers:
                s.close()
    assert all(Path(c.lookup(digest) or "").read_bytes() == f.read_bytes() for c in caches)
    assert sorted((r.fetched_from for r in reports), key=str) == sorted(
        [{SUBMITTER: size}] + [{f"n{i}": size} for i in range(3)], key=str)
    assert all(r.as_dict()["transfer_time"] == r.transfer_time > 0 for r in reports)
    assert (p.live(), sorted(x[3] for x in p.log)) == ([], ["done"] * 4)



# ── on emulated nodes: network namespaces, shaped links, a node killed ────────


@pytest.mark.netnodes
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_on_emulated_nodes_a_chain_survives_its_source_node_killed(tmp_path: Path) -> None:
    from tests.cluster import netnodes
    from tests.cluster.transfers import node_start, node_task

    reason = netnodes.unavailable_reason()
    if reason:
        pytest.skip(reason)
    f, digest = payload(tmp_path / "in.bin", 16 * MiB)
    size = f.stat().st_size
    try:
        nodes = netnodes.EmulatedNodes(3, rate_mbit=100).__enter__()
    except netnodes.NodesUnavailable as e:
        pytest.skip(str(e))
    try:
        client = nodes.client()
        files = FileCatalog()
        files.add(digest, str(f))
        with TransferServer(SECRET, files=files, host=nodes.host_address) as sub:
            addrs = client.run(node_start, "t", SECRET.hex())
            p = TransferPlanner(submitter_limit=1, source_limit=1)
            p.add_submitter("submitter", sub.address)
            names = {nd.worker_address: nd.name for nd in nodes}
            for w, a in addrs.items():
                p.add_node(names[w], names[w], a)
            p.declare(digest)
            plans = [p.plan(digest, size, nd.name) for nd in nodes]
            assert [r.source.node if r else None for r in plans] == [SUBMITTER, "node-0", "node-1"]
            futs = [client.submit(node_task, "t", SECRET.hex(), digest, size,
                                  [(s.node, s.host, s.address) for s in r.sources], str(f),  # type: ignore[union-attr]
                                  workers=[nd.worker_address], pure=False) for r, nd in zip(plans, nodes, strict=True)]
            part = nodes[0].dirs.cache / "t" / "partial" / digest
            wait_for(lambda: part.exists() and part.stat().st_size >= size // 2, "node-0 holding half", 300)
            nodes.kill_worker(0)  # SIGKILL: node-0's worker and its transfer server die mid-transfer
            assert [x.outcome for x in p.remove_node("node-0")] == ["dead", "dead"]
            done = [fut.result(timeout=300) for fut in futs[1:]]
            received = [nodes.link_counters(i).rx_bytes for i in (1, 2)]
        assert [d["digest"] for d in done] == [digest, digest]  # both read the submitted bytes
        assert all(d["bytes_moved"] == size for d in done)
        assert done[0]["via"][0][0] == "node-0" and len(done[0]["via"]) == 2  # resumed from another holder
        assert all(size <= r < 2 * size for r in received)  # each link carried it about once
    finally:
        nodes.close()


def test_a_directory_asked_for_as_a_file_is_refused_and_nothing_is_cached(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    payload(tree / "x.bin", 1000)
    a, b = Cache(str(tmp_path / "a")), Cache(str(tmp_path / "b"))
    put = a.put_path(str(tree))
    with TransferServer(SECRET, cache=a) as srv, pytest.raises(DataError, match="a directory, asked for a file"):
        PeerFetcher(SECRET, rounds=1).fetch(put.digest, put.size, "file", [src("n0", srv)], b)
    assert b.lookup(put.digest) is None and b.partial(put.digest) is None


def test_eight_nodes_fetching_two_files_form_a_tree_for_both() -> None:
    p = planner(8, submitter_limit=1, source_limit=2)
    p.declare("e" * 64)  # a dataset of two files, "d"... and "e"...; each node stages both, one after the other
    rs = [p.plan(digest, 100, f"n{i}") for i in range(8) for digest in ("d" * 64, "e" * 64)]
    assert all(r is not None for r in rs)  # none left to go unreserved (from the submitter, to all at once)
    for digest in ("d" * 64, "e" * 64):
        sources = [r.source.node for r in rs if r is not None and r.digest == digest]
        assert sources.count(SUBMITTER) == 1  # the submitter sends each file once
    assert p.outgoing(SUBMITTER) == 1 and max(p.incoming(f"n{i}") for i in range(8)) <= 2
    assert all(p.release(r, "done") for r in rs if r is not None)
    assert p.outgoing(SUBMITTER) == 0 and p.live() == [] and not p._pairs
