"""The Dask backend on a real Dask cluster on this machine.

A ``LocalCluster`` (worker processes with nannies), or a scheduler with
``dask worker --no-nanny`` processes this test starts and kills. Each node's
host process and its zygotes are real; kills are ``kill -9``.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

import loadmaster  # noqa: E402
from loadmaster.node.ledger.book import MemoryLedger  # noqa: E402
from loadmaster.results import Outcome  # noqa: E402

pytestmark = pytest.mark.dask

START_S = 120  # a worker process (and its node's host) starting on a busy 2-core machine


# ── user functions (the same set under every backend) ─────────────────────────
def double(x: int) -> int:
    return 2 * x


def fails(msg: str) -> None:
    raise ValueError(msg)


def touch_mib(n: int) -> int:
    buf = bytearray(n << 20)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    return len(buf)


def held(i: int, path: str) -> int:
    """Say "started i" on the test's socket, then wait until the test answers (or hangs up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(f"{i}\n".encode())
        s.recv(1)
    return i


def run_user_script(backend: object) -> dict[str, object]:
    """What a user runs; only ``backend=`` differs between the runs compared."""
    out: dict[str, object] = {}
    with loadmaster.Executor(history=":memory:", sandbox=False, backend=backend) as ex:
        out["double"] = [f.result() for f in [ex.submit(double, i) for i in range(20)]]
        f = ex.submit(fails, "no good")
        with pytest.raises(loadmaster.TaskFailed, match="ValueError: no good"):
            f.result()
        out["fails_report"] = f.report
        t = ex.submit(touch_mib, 100)
        out["touch"] = t.result()
        out["touch_report"] = t.report
        c = ex.submit_command("echo out-line; echo err-line >&2")
        r = c.result()
        out["stdout"], out["stderr"] = r.stdout, r.stderr
        out["command_report"] = c.report
        out["nodes"] = ex.backend.nodes()
    return out


# ── clusters ──────────────────────────────────────────────────────────────────
@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None, death_timeout=START_S)
    try:
        yield c
    finally:
        c.close()


class Workers:
    """``dask worker --no-nanny`` processes of one scheduler: killed, they stay dead."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, **extra_env: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path), **extra_env)
        p = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                              "--no-nanny", "--nthreads", "1", "--memory-limit", "0",
                              "--no-dashboard", "--death-timeout", str(START_S)],
                             env=env, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def bare() -> Iterator[tuple[object, Workers]]:
    """A scheduler with no worker, and a way to start (and kill) worker processes."""
    c = distributed.LocalCluster(n_workers=0, dashboard_address=None)
    w = Workers(c.scheduler_address)
    try:
        yield c, w
    finally:
        w.stop()
        c.close()


def wait_workers(address: str, n: int) -> list[dict[str, object]]:
    with distributed.Client(address, timeout=START_S) as client:
        client.wait_for_workers(n, timeout=START_S)
        return list(client.scheduler_info()["workers"].values())


def exited(pid: int, timeout_s: float = 60.0) -> bool:
    """Whether process ``pid`` ends within ``timeout_s`` (a zombie has ended: nobody reaps orphans here)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        import select

        if select.select([fd], [], [], timeout_s)[0]:
            return True
    finally:
        os.close(fd)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


class StartLine:
    """The test's end of ``held`` tasks: who started (in order), and a way to let them finish."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.starts: queue.Queue[int] = queue.Queue()
        self.held: list[socket.socket] = []
        self.released = False
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            data = conn.recv(64)
            with self.lock:
                if self.released:
                    self._let_go(conn)
                else:
                    self.held.append(conn)
            if data:
                self.starts.put(int(data.decode().strip()))

    @staticmethod
    def _let_go(conn: socket.socket) -> None:
        try:
            conn.sendall(b"x")
        except OSError:
            pass  # that attempt was killed
        conn.close()

    def next_start(self) -> int:
        return self.starts.get(timeout=START_S)

    def release(self) -> None:
        """Let every held task finish, and every later one at once."""
        with self.lock:
            self.released = True
            held, self.held = self.held, []
        for c in held:
            self._let_go(c)

    def close(self) -> None:
        self.release()
        self.sock.close()


def worker_pid(address: str, worker: str) -> int:
    with distributed.Client(address, timeout=START_S) as client:
        return int(client.run(os.getpid, workers=[worker])[worker])


# ── tests ─────────────────────────────────────────────────────────────────────
def test_same_script_same_results_and_reports_on_local_and_dask(cluster: object) -> None:
    local = run_user_script(None)
    dask = run_user_script(cluster)
    assert dask["double"] == local["double"] == [2 * i for i in range(20)]
    assert dask["touch"] == local["touch"] == 100 << 20
    assert dask["stdout"] == local["stdout"] == "out-line\n"
    assert dask["stderr"] == local["stderr"] == "err-line\n"
    for key in ("touch_report", "command_report", "fails_report"):
        lr, dr = local[key], dask[key]
        assert dr.measure_method == lr.measure_method, key  # type: ignore[attr-defined]
        assert dr.outcome == lr.outcome, key  # type: ignore[attr-defined]
        assert dr.host == socket.gethostname(), key  # type: ignore[attr-defined]
    for out in (local, dask):
        peak = out["touch_report"].peak_memory >> 20  # type: ignore[attr-defined]
        assert 95 <= peak <= 140, f"a 100 MiB toucher measured {peak} MiB"
    assert dask["fails_report"].outcome is Outcome.FAILED  # type: ignore[attr-defined]


def test_two_workers_on_one_host_are_one_node(cluster: object) -> None:
    with loadmaster.Executor(history=":memory:", sandbox=False, backend=cluster) as ex:
        nodes = ex.backend.nodes()
        workers = ex.backend.workers()  # type: ignore[attr-defined]
        assert len(workers) == 2
        assert len(nodes) == 1, f"two workers of one host showed as {len(nodes)} nodes"
        assert nodes[0].capacity.cores == len(os.sched_getaffinity(0))
        assert {w.node for w in workers} == {nodes[0].name}
        assert len({w.host_pid for w in workers}) == 1  # one host process serves both


def test_a_scheduler_address_and_a_client_are_backends(cluster: object) -> None:
    address = cluster.scheduler_address  # type: ignore[attr-defined]
    with loadmaster.Executor(history=":memory:", sandbox=False, backend=address) as ex:
        assert ex.submit(double, 4).result() == 8
    with distributed.Client(address) as client:
        with loadmaster.Executor(history=":memory:", sandbox=False, backend=client) as ex:
            assert ex.submit(double, 5).result() == 10
        assert client.submit(double, 6).result() == 12  # the user's client is left working


def test_a_backend_that_is_no_cluster_is_refused() -> None:
    with pytest.raises(loadmaster.InvalidSpec, match="scheduler address"):
        loadmaster.Executor(history=":memory:", backend=object())


def test_kill_9_of_a_worker_with_its_node_replaces_its_tasks_once_and_leaves_no_orphans(
        bare: tuple[object, Workers], tmp_path: Path) -> None:
    # Two nodes on this machine: a Slurm job id of their own makes each worker's host a node
    # of its own (as two jobs on one machine are). Killing one worker kills its node runtime.
    cluster, workers = bare
    address = cluster.scheduler_address  # type: ignore[attr-defined]
    procs = {p.pid: p for p in (workers.start(SLURM_JOB_ID="lm-test-a"), workers.start(SLURM_JOB_ID="lm-test-b"))}
    wait_workers(address, 2)
    ledger = tmp_path / "ledger"
    line = StartLine(str(tmp_path / "start.sock"))
    done: list[int] = []
    ex = loadmaster.Executor(history=str(tmp_path / "h.sqlite"), sandbox=False, backend=address, ledger=ledger)
    try:
        assert len(ex.backend.nodes()) == 2
        hosts = {w.node: w.host_pid for w in ex.backend.workers()}  # type: ignore[attr-defined]
        # Small stated memory: the two nodes share this machine's ledger, each sized as the machine.
        small = ex.options(resources={"memory": "64MiB"})
        futs = [small.submit(held, i, line.path) for i in range(6)]
        all_called = threading.Event()  # callbacks run on loadmaster's callback thread

        def called(f: object) -> None:
            done.append(f.result())  # type: ignore[attr-defined]
            if len(done) >= 6:
                all_called.set()

        for f in futs:
            f.add_done_callback(called)
        first = line.next_start()  # a task is running: kill -9 the worker of the node running it
        node = next(n for n, ids in ex.backend.node_tasks().items()  # type: ignore[attr-defined]
                    if futs[first].task_id in ids)
        worker = next(w for w in ex.backend.workers() if w.node == node)  # type: ignore[attr-defined]
        kids = descendants(hosts[node])
        assert kids, "the node's host has no zygotes"
        victim = procs[worker_pid(address, worker.address)]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert exited(hosts[node]), "the host of a node whose only worker died did not exit"
        for k in kids:
            assert exited(k), f"process {k} of the dead node's host is an orphan"
        line.release()  # the other node's tasks end, and make room for the lost ones
        assert sorted(f.result(timeout=START_S) for f in futs) == list(range(6))
        assert all_called.wait(START_S)
        assert sorted(done) == list(range(6)), "a result was delivered twice (or not at all)"
        starts = [line.starts.get_nowait() for _ in range(line.starts.qsize())]
        assert first in starts, "the lost task did not start again (placed again, on the other node)"
        report = futs[first].report
        assert report is not None and report.attempts == 2
        lost = report.extra.get("lost")
        assert lost and lost[0]["node"] == node and lost[0]["attempt"] == 1, lost
        assert node in lost[0]["reason"]
        assert [n.name for n in ex.backend.nodes()] != [node]
    finally:
        line.close()
        ex.shutdown()
    # The executor gone, the other node's host exits too; the ledger holds nothing of either.
    for pid in hosts.values():
        assert exited(pid), f"a node's host (pid {pid}) outlived its executor"
    assert not MemoryLedger(ledger).snapshot().holders


def test_kill_9_of_one_of_two_workers_of_a_node_loses_nothing(bare: tuple[object, Workers],
                                                              tmp_path: Path) -> None:
    # Both workers share one node's host; the client reaches that host directly, so a
    # worker's death is one way less to the node, not the loss of what runs there.
    cluster, workers = bare
    address = cluster.scheduler_address  # type: ignore[attr-defined]
    procs = {p.pid: p for p in (workers.start(), workers.start())}
    wait_workers(address, 2)
    line = StartLine(str(tmp_path / "start.sock"))
    ex = loadmaster.Executor(history=":memory:", sandbox=False, backend=address, ledger=False)
    try:
        (host_pid,) = {w.host_pid for w in ex.backend.workers()}  # type: ignore[attr-defined]
        futs = [ex.submit(held, i, line.path) for i in range(4)]
        line.next_start()
        victim = procs[worker_pid(address, ex.backend.workers()[0].address)]  # type: ignore[attr-defined]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        line.release()
        assert sorted(f.result(timeout=START_S) for f in futs) == list(range(4))
        assert all(f.report is not None and f.report.attempts == 1 for f in futs)
        assert len(ex.backend.workers()) == 1 and len(ex.backend.nodes()) == 1  # type: ignore[attr-defined]
        assert not exited(host_pid, timeout_s=0.1)
    finally:
        line.close()
        ex.shutdown()
    assert exited(host_pid)


def test_a_node_whose_workers_all_die_stops_its_host_zygotes_and_tasks(
        bare: tuple[object, Workers], tmp_path: Path) -> None:
    cluster, workers = bare
    address = cluster.scheduler_address  # type: ignore[attr-defined]
    w1 = workers.start()
    wait_workers(address, 1)
    line = StartLine(str(tmp_path / "start.sock"))
    ex = loadmaster.Executor(history=":memory:", sandbox=False, backend=address, ledger=False)
    try:
        (host_pid,) = {w.host_pid for w in ex.backend.workers()}  # type: ignore[attr-defined]
        futs = [ex.submit(held, i, line.path) for i in range(2)]
        line.next_start()
        kids = descendants(host_pid)  # zygotes and the running task
        assert len(kids) >= 2
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        # Its only worker gone, the node's host stops the task and exits, zygotes too.
        assert exited(host_pid), f"the host (pid {host_pid}) of a node with no worker left did not exit"
        for k in kids:
            assert exited(k), f"process {k} of the dead node's host is an orphan"
        assert not ex.backend.nodes()
    finally:
        line.close()
        ex.shutdown(cancel_futures=True)
    assert all(f.done() for f in futs)


def test_the_user_can_keep_submitting_from_threads(cluster: object) -> None:
    with loadmaster.Executor(history=":memory:", sandbox=False, backend=cluster) as ex:
        out: list[int] = []
        lock = threading.Lock()

        def submit_some(k: int) -> None:
            vals = [ex.submit(double, k * 100 + i).result() for i in range(10)]
            with lock:
                out.extend(vals)

        threads = [threading.Thread(target=submit_some, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(out) == sorted(2 * (k * 100 + i) for k in range(4) for i in range(10))


# ── the command line on a cluster ─────────────────────────────────────────────
def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
    return subprocess.run([sys.executable, "-m", "loadmaster.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=START_S * 2)


def test_cli_nodes_shows_one_node_for_two_workers_of_one_host(cluster: object) -> None:
    import json

    p = _cli("nodes", "--scheduler", cluster.scheduler_address, "--json")  # type: ignore[attr-defined]
    assert p.returncode == 0, p.stderr
    nodes = json.loads(p.stdout)
    assert len(nodes) == 1 and len(nodes[0]["workers"]) == 2
    assert nodes[0]["capacity"]["cores"] == len(os.sched_getaffinity(0))
    assert nodes[0]["host"] == socket.gethostname()


def test_cli_run_on_a_scheduler(cluster: object, tmp_path: Path) -> None:
    import json

    tasks = tmp_path / "tasks.txt"
    tasks.write_text("echo from-the-cluster\nsh -c 'exit 3'\n")
    p = _cli("run", "--scheduler", cluster.scheduler_address,  # type: ignore[attr-defined]
             "--history", str(tmp_path / "h.sqlite"), "--json", str(tasks))
    assert p.returncode == 1, p.stderr  # one task failed
    doc = json.loads(p.stdout)
    assert sorted(t["returncode"] for t in doc["tasks"]) == [0, 3], doc["tasks"]
    assert doc["tasks"][0]["stdout"] == "from-the-cluster\n"
    assert doc["tasks"][0]["report"]["host"] == socket.gethostname()


@pytest.mark.parametrize("spec, why", [
    ("mesos:cores=1", "unknown kind"),
    ("slurm:cores", "is not key=value"),
    ("slurm:jobs=0", "must be a whole number"),
    ("local:workers=two", "must be a whole number"),
    ("slurm:=1", "is not key=value"),
])
def test_a_bad_cluster_spec_is_refused_with_the_reason(spec: str, why: str) -> None:
    from loadmaster.backends.dask.targets import parse_cluster_spec

    with pytest.raises(loadmaster.InvalidSpec, match=why):
        parse_cluster_spec(spec)


def test_a_cluster_spec_gives_the_cluster_its_keywords() -> None:
    from loadmaster.backends.dask.targets import parse_cluster_spec

    assert parse_cluster_spec("slurm:cores=1,memory=2GB,jobs=4,queue=debug") == (
        "slurm", {"cores": 1, "memory": "2GB", "queue": "debug"}, 4)
    assert parse_cluster_spec("local:workers=2,threads_per_worker=1") == ("local", {"threads_per_worker": 1}, 2)


# ── the node host's name: squatters and impostors ─────────────────────────────
class _Boom:
    """Unpickled, it leaves a file: proof that someone unpickled what a squatter sent."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_touch, (self.path,))


def _touch(path: str) -> None:
    Path(path).write_text("unpickled")


class Squatter:
    """A process of the same user that binds the node host's name first and answers workers."""

    def __init__(self, name: bytes, answer: str, marker: Path) -> None:
        from loadmaster.backends.dask import wire

        self.wire = wire
        self.answer = answer
        self.marker = marker
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(name)
        self.sock.listen(16)
        self.received = bytearray()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import pickle

        wire = self.wire
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(10)
                try:
                    self.received += conn.recv(1 << 16)
                    if self.answer == "welcome":  # what the old protocol believed at once
                        evil = pickle.dumps({"info": _Boom(str(self.marker)), "runtime": "x", "pid": 1})
                        conn.sendall(wire.frame(wire.WELCOME, evil))
                    else:  # a challenge it cannot sign
                        conn.sendall(wire.frame(wire.CHALLENGE, os.urandom(64)))
                    while chunk := conn.recv(1 << 16):
                        self.received += chunk
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("answer", ["welcome", "challenge"])
def test_a_squatter_on_the_host_name_is_refused_and_the_worker_gets_a_real_node(
        cluster: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    from loadmaster.backends.dask import carrier, wire

    token = "squat" + os.urandom(4).hex()
    monkeypatch.setattr(carrier, "new_token", lambda: token)
    marker = tmp_path / "unpickled"
    squatter = Squatter(wire.socket_name(token), answer, marker)
    try:
        with loadmaster.Executor(history=":memory:", sandbox=False, backend=cluster) as ex:
            assert ex.submit(double, 21).result() == 42
            (node,) = ex.backend.nodes()
            assert node.capacity.cores == len(os.sched_getaffinity(0))
            secret = ex.backend.secret  # type: ignore[attr-defined]
        assert squatter.connections >= 1, "no worker tried the squatted name: the test proves nothing"
        assert not marker.exists(), "a worker unpickled what the squatter sent"
        assert secret not in bytes(squatter.received), "a worker sent the run's secret to the squatter"
    finally:
        squatter.close()


def test_a_peer_that_cannot_prove_the_secret_gets_no_welcome_from_the_host(
        cluster: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from loadmaster.backends.dask import carrier, wire

    token = "probe" + os.urandom(4).hex()
    monkeypatch.setattr(carrier, "new_token", lambda: token)
    with loadmaster.Executor(history=":memory:", sandbox=False, backend=cluster) as ex:
        assert ex.submit(double, 1).result() == 2
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(wire.socket_name(token))  # the real host, same user
            s.sendall(wire.frame(wire.HELLO, os.urandom(wire.NONCE_BYTES) + b"impostor"))
            head = s.recv(wire.HEADER.size, socket.MSG_WAITALL)
            size, kind = wire.HEADER.unpack(head)
            assert kind == wire.CHALLENGE and size == wire.NONCE_BYTES + wire.MAC_BYTES
            s.recv(size, socket.MSG_WAITALL)
            s.sendall(wire.frame(wire.PROOF, os.urandom(wire.MAC_BYTES)))
            rest = b""
            while chunk := s.recv(1 << 16):
                rest += chunk
            assert rest == b"", "the host answered a peer that did not prove the secret"
        # The same on the host's TCP listener, where the client connects to it directly.
        (node,) = ex.backend._nodes.values()  # type: ignore[attr-defined]
        assert node.direct is not None, "the client has no direct connection to the host"
        ip, port = node.direct.writer.get_extra_info("peername")[:2]
        with socket.create_connection((ip, port), timeout=30) as s:
            s.sendall(wire.frame(wire.HELLO, os.urandom(wire.NONCE_BYTES) + b"impostor"))
            size, kind = wire.HEADER.unpack(s.recv(wire.HEADER.size, socket.MSG_WAITALL))
            assert kind == wire.CHALLENGE and size == wire.NONCE_BYTES + wire.MAC_BYTES
            s.recv(size, socket.MSG_WAITALL)
            s.sendall(wire.frame(wire.PROOF, os.urandom(wire.MAC_BYTES)))
            rest = b""
            while chunk := s.recv(1 << 16):
                rest += chunk
            assert rest == b"", "the host answered a TCP peer that did not prove the secret"
        assert ex.submit(double, 2).result() == 4  # the real workers are still served


def test_on_an_adaptive_cluster_a_task_bigger_than_every_node_waits_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as c:
        c.adapt(minimum=1, maximum=1)
        with caplog.at_level(logging.WARNING, logger="loadmaster.engine"):
            ex = loadmaster.Executor(history=":memory:", sandbox=False, backend=c)
            try:
                assert ex.backend.grows()
                cores = len(os.sched_getaffinity(0)) + 1
                big = ex.options(resources={"cores": cores}).submit(double, 1)  # accepted: it may grow
                assert ex.submit(double, 2).result() == 4  # the engine has taken both
                assert not big.done()
                assert any("waits for a bigger node" in r.getMessage() for r in caplog.records)
            finally:
                ex.shutdown(cancel_futures=True)
        assert big.cancelled()  # shut down with cancel_futures: it never ran


def say_then_wait(fifo: str) -> str:
    """Print a line, block until the test opens the FIFO, print another (as in test_streaming.py)."""
    print("first line")
    print("to stderr", file=sys.stderr)
    with open(fifo) as fh:
        fh.read()
    print("second line")
    return "ok"


def release(fifo: str) -> None:
    os.close(os.open(fifo, os.O_WRONLY))  # returns once the task has opened its end


def test_a_tasks_lines_stream_from_a_dask_node_while_it_runs(cluster: object, tmp_path: Path) -> None:
    fifo = str(tmp_path / "gate")
    os.mkfifo(fifo)
    got: queue.Queue[tuple[str, str]] = queue.Queue()
    with loadmaster.Executor(backend=cluster, history=":memory:", sandbox=False) as ex:
        view = ex.options(on_output=lambda fut, stream, line: got.put((stream, line)))
        fut = view.submit(say_then_wait, fifo)
        first = sorted(got.get(timeout=START_S) for _ in range(2))
        assert first == [("stderr", "to stderr\n"), ("stdout", "first line\n")]
        assert not fut.done()  # blocked on the FIFO: these came while it ran, through the Dask worker
        release(fifo)
        assert fut.result(timeout=START_S) == "ok"
        assert got.get_nowait() == ("stdout", "second line\n")
        assert fut.report is not None and fut.report.stdout == "first line\nsecond line\n"
