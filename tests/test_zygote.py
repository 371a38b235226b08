"""The zygote's wire format and its per-task bookkeeping shortcuts, checked through real processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from loadmaster import Executor, MeasureMethod
from loadmaster.node.process.protocol import Done, RunOrder


def test_run_order_and_done_travel_as_tuples_of_every_field() -> None:
    order = RunOrder(task_id=7, kind=0, fn_key=11, fn_bytes=b"f", payload=b"p", memory_limit=1 << 30,
                     disk_limit=2 << 30, wall_limit=3.5, gpu_ids=("0",), sandbox=None)
    done = Done(task_id=7, pid=123, exit_status=0, status=1, payload=b"x", peak_memory=5, method="m",
                cpu_time=0.25, wall_time=0.5, disk=6, max_processes=2, started_at=1.0, finished_at=1.5,
                exhausted="memory", limit=9.0, used=10.0, stdout_path="o", stderr_path="e", extra={"k": 1})
    for msg, cls in ((order, RunOrder), (done, Done)):
        fields = msg.fields()
        assert isinstance(fields, tuple) and len(fields) == len(cls.__slots__)
        again = cls(*fields)
        for name in cls.__slots__:
            assert getattr(again, name) == getattr(msg, name), name



def test_a_plain_task_report_is_its_header_and_payload_and_decodes_as_every_report_does() -> None:
    from loadmaster.node.process.protocol import CHILD_HDR, _encode_report, child_report, read_child_report

    plain = child_report(7, 1, 4096, b"result")
    assert plain == _encode_report(7, 1, 4096, b"result", None, (), False, ())
    assert plain[CHILD_HDR.size:] == b"result"
    assert read_child_report(plain) == (7, 1, 4096, b"result", None, False)
    # The other forms still carry what they carry.
    denied = read_child_report(child_report(7, 1, 4096, b"r", {"enabled": True}, denied=["/etc/x"]))
    assert denied[3] == b"r" and denied[4] is not None
    assert denied[4]["sandbox"]["enabled"] and denied[4]["sandbox_denied"] == ["/etc/x"]
    in_fd = read_child_report(child_report(7, 1, 4096, b"ignored", in_fd=True))
    assert in_fd[3] == b"" and in_fd[5] is True

def leave_a_daemon(pid_file: str) -> int:
    """Start a grandchild in a session of its own (out of the task's process group) and return."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(pid_file + ".tmp", "w") as fh:
                fh.write(str(os.getpid()))
            os.rename(pid_file + ".tmp", pid_file)
            time.sleep(60)
        os._exit(0)
    os.wait()
    deadline = time.monotonic() + 10
    while not os.path.exists(pid_file) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_process_left_in_the_tasks_cgroup_is_killed_and_reported(tmp_path: Path) -> None:
    with Executor(history=":memory:", sandbox=False) as ex:
        if ex.measure_method is not MeasureMethod.CGROUP_V1:
            pytest.skip(f"needs a memory cgroup per task (this node measures with {ex.measure_method.value})")
        pid_file = str(tmp_path / "daemon.pid")
        fut = ex.submit(leave_a_daemon, pid_file)
        assert fut.result(timeout=60) == 1
        daemon = int(Path(pid_file).read_text())
        assert fut.report is not None
        assert fut.report.extra.get("stray_processes_killed") == 1
        deadline = time.monotonic() + 10
        while _alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(daemon), "the escaped grandchild outlived its task"
        # The next tasks still run and are measured.
        assert [f.result(timeout=60) for f in [ex.submit(abs, -i) for i in range(5)]] == list(range(5))


THREADED_MODULE = '''
import threading, time

def _spin():
    while True:
        time.sleep(0.05)

threading.Thread(target=_spin, daemon=True).start()

def triple(x):
    return 3 * x
'''


def test_a_module_that_starts_a_thread_in_the_zygote_does_not_break_forking(tmp_path: Path) -> None:
    (tmp_path / "lm_threaded_mod.py").write_text(THREADED_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import lm_threaded_mod

        with Executor(history=":memory:", sandbox=False, zygotes=1) as ex:
            assert ex.submit(abs, -1).result(timeout=60) == 1  # a warm zygote, libc fork so far
            futs = [ex.submit(lm_threaded_mod.triple, i) for i in range(20)]
            assert [f.result(timeout=60) for f in futs] == [3 * i for i in range(20)]
            zygote = ex.backend.runtime.zygotes[0]  # type: ignore[attr-defined]
            assert zygote is not None
            threads = len(os.listdir(f"/proc/{zygote.proc.pid}/task"))
            assert threads > 1, "the module was expected to start a thread in the zygote"
            assert [f.result(timeout=60) for f in [ex.submit(abs, -i) for i in range(5)]] == list(range(5))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lm_threaded_mod", None)


def test_slots_left_by_a_dead_zygote_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import subprocess

    from loadmaster.node.measure import procfs

    dead = subprocess.Popen(["true"])
    dead.wait()
    names = [f"loadmaster-{dead.pid}-0", f"loadmaster-{dead.pid}-12", f"loadmaster-{os.getpid()}-0",
             f"loadmaster-{dead.pid}", "loadmaster-x-1", f"other-{dead.pid}-0", f"slots-{dead.pid}"]
    for name in names:
        (tmp_path / name).mkdir()
    procfs.remove_if_owner_dead(str(tmp_path), "loadmaster-", os.rmdir, numbered=True)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(set(names) - {f"loadmaster-{dead.pid}-0", f"loadmaster-{dead.pid}-12"})
    procfs.remove_if_owner_dead(str(tmp_path), "slots-", os.rmdir, numbered=False)
    assert not (tmp_path / f"slots-{dead.pid}").exists()
    assert (tmp_path / f"loadmaster-{os.getpid()}-0").exists()


def test_the_zygote_imports_neither_pickle_py_nor_re_nor_enum() -> None:
    import subprocess

    code = ("import sys, loadmaster.node.process.zygote; "
            "print(sorted(m for m in ('pickle', 're', 'enum', 'signal', 'typing', 'cloudpickle') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "[]", "each of these adds to every fork's cost: " + out.stdout


def big_result(i: int, kib: int, hold_s: float) -> bytes:
    time.sleep(hold_s)
    return bytes([i % 256]) * (kib * 1024)


def test_results_of_many_tasks_running_at_once_on_one_zygote_all_come_back() -> None:
    # 64 tasks at once on one zygote, each sending a ~90 KiB datagram (just under the
    # size that goes through a file): 5.6 MiB, more than the socket buffer holds even
    # for root (4 MiB), so some children wait in send() until the zygote reads.
    from loadmaster import Resources

    with Executor(history=":memory:", sandbox=False, zygotes=1) as ex:
        cores = (ex.node.cores or 2) / 64
        futs = [ex.options(resources=Resources(cores=cores)).submit(big_result, i, 90, 0.5) for i in range(128)]
        out = [f.result(timeout=120) for f in futs]
    assert [len(b) for b in out] == [90 * 1024] * 128
    assert [b[0] for b in out] == [i % 256 for i in range(128)]


def test_a_lone_task_with_a_large_result_comes_back() -> None:
    with Executor(history=":memory:", sandbox=False, zygotes=1) as ex:
        for kib in (1, 90, 200):  # 200 KiB goes through a memfd
            assert len(ex.submit(big_result, 1, kib, 0.0).result(timeout=60)) == kib * 1024


def test_orders_and_reports_larger_than_a_pipe_read_arrive_whole() -> None:
    """Arguments of megabytes span many reads of the order pipe; results just under the
    datagram limit, many reads of the report pipe; both beside small ones, in order."""
    blobs = [bytes([i]) * ((3 << 20) + i) for i in range(3)]
    with Executor(history=":memory:", sandbox=False, zygotes=1) as ex:
        futs = [ex.submit(len, b) for b in blobs] + [ex.submit(big_result, 7, 90, 0.0) for _ in range(3)]
        assert [f.result(timeout=60) for f in futs[:3]] == [len(b) for b in blobs]
        assert [f.result(timeout=60) for f in futs[3:]] == [bytes([7]) * (90 * 1024)] * 3


def test_an_order_the_pipe_has_not_taken_waits_and_closing_then_ends_the_zygote(tmp_path: Path) -> None:
    """An order bigger than the pipe is only partly written; the rest waits in the client
    (nothing blocks). Closed then, the client sends no "exit" behind half an order: the
    zygote sees the pipe's end and exits at once, with status 0."""
    import cloudpickle

    from loadmaster.node.process.protocol import frame
    from loadmaster.node.process.zygote_client import ZygoteClient

    z = ZygoteClient(workdir=str(tmp_path))
    big = _order(1, cloudpickle.dumps(len), b"x" * (8 << 20))
    t0 = time.monotonic()
    z.send(frame(("run", big.fields())))
    assert time.monotonic() - t0 < 1.0
    assert 0 < len(z.outbox) < (8 << 20) + 1024  # the pipe took some, not all
    z.close(timeout_s=20)
    assert time.monotonic() - t0 < 10.0
    assert z.proc.returncode == 0


def _order(task_id: int, fn_bytes: bytes, *args: object) -> RunOrder:
    import pickle

    return RunOrder(task_id=task_id, kind=0, fn_key=1, fn_bytes=fn_bytes,
                    payload=pickle.dumps((args, {}), 5), memory_limit=1 << 30, disk_limit=None, wall_limit=None)


def _messages(z: object, want: int, timeout: float = 30.0) -> list[tuple[str, object]]:
    import select

    out: list[tuple[str, object]] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        select.select([z.res_fd], [], [], 0.1)  # type: ignore[attr-defined]
        got = z.read()  # type: ignore[attr-defined]
        assert got is not None, "the zygote died"
        out.extend(got)
    return out


def test_an_order_handed_ahead_starts_when_the_task_ahead_ends_or_goes_back(tmp_path: Path) -> None:
    """("then", after, order): forked once ``after`` has ended (its report first), at once
    when ``after`` is not running, and given back when it waited FOLLOW_WAIT_S."""
    import cloudpickle

    from loadmaster.node.process.protocol import frame
    from loadmaster.node.process.zygote import FOLLOW_WAIT_S
    from loadmaster.node.process.zygote_client import ZygoteClient

    fn = cloudpickle.dumps(time.sleep)
    # A follow wait far longer than task 1, so a loaded machine cannot turn "starts after
    # 1 ends" into "given back"; the second zygote below keeps the default wait.
    for sub in ("wide", "default"):
        (tmp_path / sub).mkdir()
    wide = ZygoteClient(workdir=str(tmp_path / "wide"), follow_ms=30_000)
    try:
        z = wide
        z.send(frame(("run", _order(1, fn, 0.05).fields())))
        z.send(frame(("then", 1, _order(2, b"", 0.0).fields())))
        z.send(frame(("then", 99, _order(3, b"", 0.0).fields())))  # 99 never ran: at once
        msgs = _messages(z, 3)
        ids = [d.task_id for _, d in msgs]  # type: ignore[attr-defined]
        assert [k for k, _ in msgs] == ["done"] * 3
        assert ids.index(3) < ids.index(1) < ids.index(2)
        done = {d.task_id: d for _, d in msgs}  # type: ignore[attr-defined]
        assert all(d.status == 0 for d in done.values())
        assert done[2].started_at >= done[1].finished_at - 0.005  # its process forked after 1 ended
        assert done[3].started_at < done[1].finished_at
    finally:
        wide.close()

    z = ZygoteClient(workdir=str(tmp_path / "default"))
    try:
        # The task ahead runs long: the follower comes back unstarted after FOLLOW_WAIT_S,
        # before the task ahead ends.
        t0 = time.monotonic()
        z.send(frame(("run", _order(4, fn, 5.0).fields())))
        z.send(frame(("then", 4, _order(5, b"", 0.0).fields())))
        back = _messages(z, 1)
        assert back == [("back", 5)]
        assert time.monotonic() - t0 >= FOLLOW_WAIT_S
        z.kill(4)
        rest = _messages(z, 1)
        assert [(k, d.task_id) for k, d in rest] == [("done", 4)]  # type: ignore[attr-defined]

        # A follower cancelled before it started ends at once, marked cancelled, never run.
        z.send(frame(("run", _order(6, b"", 1.0).fields())))
        z.send(frame(("then", 6, _order(7, b"", 0.0).fields())))
        z.kill(7)
        first = _messages(z, 1)
        d7 = first[0][1]
        assert first[0][0] == "done" and d7.task_id == 7 and d7.extra == {"cancelled": True}  # type: ignore[attr-defined]
        assert [d.task_id for _, d in _messages(z, 1)] == [6]  # type: ignore[attr-defined]
    finally:
        z.close()


def test_a_function_sent_with_an_order_handed_ahead_serves_orders_that_start_first(tmp_path: Path) -> None:
    """The client sends a function's bytes once per zygote, with the first order that
    uses it. When that order is handed ahead (it waits, or comes back unstarted),
    later orders of the same function that start first must find the function."""
    import cloudpickle

    from loadmaster.node.process.protocol import frame
    from loadmaster.node.process.zygote_client import ZygoteClient

    sleep_bytes, abs_bytes, max_bytes = (cloudpickle.dumps(f) for f in (time.sleep, abs, max))

    def order(task_id: int, key: int, fn: bytes, *args: object) -> RunOrder:
        o = _order(task_id, fn, *args)
        o.fn_key = key
        return o

    def results(msgs: list[tuple[str, object]]) -> dict[int, object]:
        done = {d.task_id: d for k, d in msgs if k == "done"}  # type: ignore[attr-defined]
        failed = {i: d.payload[:200] for i, d in done.items() if d.status != 0}  # type: ignore[attr-defined]
        assert not failed, failed
        return {i: pickle_loads(d.payload) for i, d in done.items()}  # type: ignore[attr-defined]

    # abs's bytes ride on an order waiting behind task 1 (a follow wait far longer than
    # task 1, so a loaded machine cannot give it back); abs again, without bytes, starts first.
    for sub in ("waits", "back"):
        (tmp_path / sub).mkdir()
    z = ZygoteClient(workdir=str(tmp_path / "waits"), follow_ms=30_000)
    try:
        z.send(frame(("run", order(1, 1, sleep_bytes, 0.05).fields())))
        z.send(frame(("then", 1, order(2, 2, abs_bytes, -2).fields())))
        z.send(frame(("run", order(3, 2, b"", -3).fields())))
        got = results(_messages(z, 3))
        assert sorted(got) == [1, 2, 3] and (got[2], got[3]) == (2, 3)
    finally:
        z.close()

    # max's bytes ride on an order that waits behind a long task and comes back unstarted;
    # max again, without bytes, still finds them.
    z = ZygoteClient(workdir=str(tmp_path / "back"))
    try:
        z.send(frame(("run", order(4, 1, sleep_bytes, 5.0).fields())))
        z.send(frame(("then", 4, order(5, 3, max_bytes, 1, 5).fields())))
        assert _messages(z, 1) == [("back", 5)]
        z.send(frame(("run", order(6, 3, b"", 6, 1).fields())))
        got = results(_messages(z, 1))
        assert got == {6: 6}
        z.kill(4)
        assert [d.task_id for _, d in _messages(z, 1)] == [4]  # type: ignore[attr-defined]
    finally:
        z.close()


def pickle_loads(data: bytes) -> object:
    """A task's result as the client reads it."""
    import cloudpickle

    return cloudpickle.loads(data)


def _touch(mib: int) -> None:
    import mmap

    m = mmap.mmap(-1, mib << 20)
    for i in range(0, mib << 20, 4096):
        m[i] = 1
    m.close()


def test_a_forked_process_starts_its_high_water_mark_at_its_own_size_not_its_parents_peak() -> None:
    # What the task process relies on instead of a clear_refs reset (taskproc.py).
    from loadmaster.node.measure import procfs

    _touch(300)  # this process's mark is now at least 300 MiB above what it holds
    parent = procfs.self_hwm()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            start = procfs.self_hwm()
            _touch(64)
            os.write(w, f"{start} {procfs.self_hwm()} {procfs.self_rss()}".encode())
        finally:
            os._exit(0)
    os.close(w)
    start, end, rss = (int(x) for x in os.read(r, 200).split())
    os.close(r)
    os.waitpid(pid, 0)
    assert parent - start > 250 << 20, (parent, start)
    assert start <= rss + (4 << 20)
    assert 63 << 20 <= end - start <= 70 << 20, end - start


PEAKY_MODULE = '''
import mmap

_m = mmap.mmap(-1, 300 << 20)
for _i in range(0, 300 << 20, 4096):
    _m[_i] = 1
_m.close()  # the zygote that imports this has a past peak 300 MiB above what it holds


def touch(mib):
    m = mmap.mmap(-1, mib << 20)
    for i in range(0, mib << 20, 4096):
        m[i] = 1
    m.close()
    return mib
'''


@pytest.mark.parametrize("measure", ["auto", "sampling"])
def test_a_zygotes_past_peak_is_not_in_its_tasks_peaks(tmp_path: Path, measure: str) -> None:
    (tmp_path / "lm_peaky_mod.py").write_text(PEAKY_MODULE)
    sys.path.insert(0, str(tmp_path))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), old) if p)
    try:
        import lm_peaky_mod

        with Executor(history=":memory:", sandbox=False, zygotes=1, preload=["lm_peaky_mod"],
                      measure=measure) as ex:
            noop = ex.submit(abs, -1)
            big = ex.submit(lm_peaky_mod.touch, 100)
            assert (noop.result(timeout=60), big.result(timeout=60)) == (1, 100)
        assert noop.report is not None and big.report is not None
        assert noop.report.peak_memory < 10 << 20, noop.report.peak_memory
        assert 99 << 20 <= big.report.peak_memory <= 110 << 20, big.report.peak_memory
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lm_peaky_mod", None)
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
