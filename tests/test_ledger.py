"""Tests of the node-wide memory ledger and of ``loadmaster reserve`` / ``loadmaster ledger``.

Real processes (forked with multiprocessing, or the installed ``loadmaster``
command), real files in ``tmp_path`` and ``/dev/shm``, real SIGKILL. Only a
network file system is faked (by its statfs magic), since none can be mounted here.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loadmaster.errors import InvalidSpec, LedgerError, LedgerTimeout
from loadmaster.node.ledger.book import MemoryLedger
from loadmaster.node.ledger.liveness import process_start_time
from loadmaster.node.ledger.location import (
    ENV_VAR,
    NETWORK_FS_MAGIC,
    TMPFS_MAGIC,
    check_fs_type,
    check_local_fs,
    default_ledger_dir,
    fs_magic,
)
from loadmaster.node.ledger.policy import Blocked, admission_refusal
from loadmaster.node.ledger.record import decode_record, encode_record

CTX = mp.get_context("fork")
LOADMASTER = str(Path(sys.executable).parent / "loadmaster")
MiB = 1024 * 1024
STRESS_S = float(os.environ.get("LOADMASTER_LEDGER_STRESS_S", "60"))


def until(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Return ``cond()`` once truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# ------------------------------------------------------------ child process bodies


def _hold_forever(path: str, cap: int, nbytes: int, label: str, ready: Any) -> None:
    ledger = MemoryLedger(path, capacity_bytes=cap)
    ledger.reserve(nbytes, label=label, timeout_s=30)
    ready.set()
    time.sleep(3600)


def _reserve_and_log(path: str, cap: int, nbytes: int, label: str, log: str, hold_s: float) -> None:
    ledger = MemoryLedger(path, capacity_bytes=cap)
    with ledger.reserve(nbytes, label=label, timeout_s=30):
        Path(log).write_text(f"{time.monotonic_ns()}\n")
        time.sleep(hold_s)


def _stress_worker(path: str, cap: int, seed: int, duration_s: float, log: str) -> None:
    rng = random.Random(seed)
    ledger = MemoryLedger(path, capacity_bytes=cap)
    events: list[str] = []
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        nbytes = rng.randint(1, cap * 2 // 5)
        if rng.random() < 0.3:
            res = ledger.try_reserve(nbytes, label=f"w{seed}")
            if res is None:
                time.sleep(rng.random() * 0.002)
                continue
        else:
            res = ledger.reserve(nbytes, timeout_s=30, label=f"w{seed}")
        events.append(f"A {res.id} {nbytes} {time.monotonic_ns()}")
        time.sleep(rng.random() * 0.01)
        events.append(f"R {res.id} {nbytes} {time.monotonic_ns()}")
        res.release()
    Path(log).write_text("\n".join(events) + "\n")


def _hold_with_tracked_child(path: str, cap: int, nbytes: int, child_pid_file: str) -> None:
    ledger = MemoryLedger(path, capacity_bytes=cap)
    res = ledger.reserve(nbytes, label="parent", timeout_s=30)
    child = subprocess.Popen(["sleep", "600"])
    res.track(child.pid)
    Path(child_pid_file).write_text(str(child.pid))
    time.sleep(3600)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(target: Callable[..., None], *args: Any) -> Any:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _kill(proc: Any) -> None:
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
    proc.join(5)


def _waiting_labels(ledger: MemoryLedger) -> list[str]:
    return [w.label for w in ledger.snapshot().waiters]


# ------------------------------------------------------------ basics and admission


def test_reserve_release_try_reserve(tmp_path: Path) -> None:
    ledger = MemoryLedger(tmp_path / "ledger", capacity_bytes=1000)
    first = ledger.try_reserve(600, label="a")
    assert first is not None and first.nbytes == 600
    assert ledger.try_reserve(401) is None
    with ledger.reserve(400, label="b") as second:
        snap = ledger.snapshot()
        assert [(h.label, h.nbytes, h.pid) for h in snap.holders] == [
            ("a", 600, os.getpid()),
            ("b", 400, os.getpid()),
        ]
        assert snap.held_bytes == 1000 and snap.free_bytes == 0
        assert second.id != first.id
    first.release()
    first.release()  # idempotent
    assert ledger.snapshot().holders == ()
    with pytest.raises(InvalidSpec):
        ledger.try_reserve(-1)


def test_request_beyond_capacity_fails_at_once(tmp_path: Path) -> None:
    ledger = MemoryLedger(tmp_path / "ledger", capacity_bytes=1000)
    t0 = time.monotonic()
    with pytest.raises(LedgerError, match="could never fit"):
        ledger.reserve(1001, timeout_s=10)
    assert time.monotonic() - t0 < 1


def test_admission_rule() -> None:
    assert admission_refusal(40, held=60, capacity=100, available=1000, unused=0) is None
    refused = admission_refusal(41, held=60, capacity=100, available=1000, unused=0)
    assert refused is not None and refused[0] is Blocked.CAPACITY
    # Fits the ledger but not the node: reserved-but-untouched memory is not available.
    refused = admission_refusal(40, held=60, capacity=100, available=70, unused=40)
    assert refused is not None and refused[0] is Blocked.MEMORY
    assert admission_refusal(40, held=60, capacity=100, available=70, unused=30) is None


def test_available_memory_and_tracked_usage(tmp_path: Path) -> None:
    """MemAvailable counts; a tracked tree's memory in use is not counted twice."""
    ledger = MemoryLedger(
        tmp_path / "ledger", capacity_bytes=64 * 1024 * MiB, memory_available=lambda: 200 * MiB
    )
    assert ledger.try_reserve(201 * MiB) is None  # fits the capacity, not the node
    held = ledger.try_reserve(150 * MiB, label="hog")
    assert held is not None
    # Untracked, the 150 MiB may still be touched: 100 + 150 > 200.
    assert ledger.try_reserve(100 * MiB) is None
    hog = subprocess.Popen(
        [sys.executable, "-c", "import sys; b = bytearray(160 << 20); print(1, flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline() == b"1\n"
        held.track(hog.pid)
        # Now the 150 MiB are in use (outside MemAvailable): 100 + 0 <= 200.
        extra = ledger.try_reserve(100 * MiB)
        assert extra is not None
        extra.release()
    finally:
        hog.kill()
        hog.wait()


# ------------------------------------------------------------ waiting, FIFO, timeout


def test_timeout_message_names_the_numbers(tmp_path: Path) -> None:
    ledger = MemoryLedger(tmp_path / "ledger", capacity_bytes=1000)
    holder = ledger.try_reserve(900, label="the-holder")
    assert holder is not None
    t0 = time.monotonic()
    with pytest.raises(LedgerTimeout) as info:
        ledger.reserve(500, timeout_s=0.3, label="too-big")
    assert 0.3 <= time.monotonic() - t0 < 2
    msg = str(info.value)
    for text in ("500 bytes", "'too-big'", "free 100 bytes of 1000 bytes", "MemAvailable",
                 f"pid {os.getpid()} holds 900 bytes for 'the-holder'", "0.3 s"):
        assert text in msg
    assert isinstance(info.value, TimeoutError)
    snap = ledger.snapshot()
    assert snap.waiters == () and [h.label for h in snap.holders] == ["the-holder"]
    assert list((tmp_path / "ledger" / "wake").iterdir()) == []


def test_fifo_big_waiter_served_before_later_small_ones(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger")
    ledger = MemoryLedger(path, capacity_bytes=100)
    holder = ledger.try_reserve(80, label="holder")
    assert holder is not None
    big = _start(_reserve_and_log, path, 100, 95, "big", str(tmp_path / "big.log"), 0.3)
    until(lambda: _waiting_labels(ledger) == ["big"], what="big to queue")
    small = _start(_reserve_and_log, path, 100, 10, "small", str(tmp_path / "small.log"), 0.3)
    until(lambda: _waiting_labels(ledger) == ["big", "small"], what="small to queue")
    try:
        # 80 + 10 fits, but an older waiter is ahead: neither small nor we may jump it.
        # Once big holds 95, small no longer fits: it must come after big's release.
        assert ledger.try_reserve(10) is None
        time.sleep(0.3)
        assert not (tmp_path / "small.log").exists()
        holder.release()
        big.join(10)
        small.join(10)
        assert big.exitcode == 0 and small.exitcode == 0
        big_t = int((tmp_path / "big.log").read_text())
        small_t = int((tmp_path / "small.log").read_text())
        assert small_t - big_t > 0.25e9
        assert ledger.snapshot().holders == ()
    finally:
        _kill(big)
        _kill(small)


def test_waiter_is_woken_by_release_without_polling_delay(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger")
    ledger = MemoryLedger(path, capacity_bytes=100)
    holder = ledger.try_reserve(100)
    assert holder is not None
    waiter = _start(_reserve_and_log, path, 100, 50, "w", str(tmp_path / "w.log"), 0)
    try:
        until(lambda: _waiting_labels(ledger) == ["w"], what="waiter to queue")
        released = time.monotonic_ns()
        holder.release()
        waiter.join(10)
        woke = int((tmp_path / "w.log").read_text())
        # The safety re-check is 1 s; the wake-up pipe must be much faster.
        assert (woke - released) / 1e9 < 0.5
    finally:
        _kill(waiter)


# ------------------------------------------------------------ crashes


def test_kill9_holder_is_reclaimed_and_waiter_served(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger")
    ledger = MemoryLedger(path, capacity_bytes=100)
    ready = CTX.Event()
    holder = _start(_hold_forever, path, 100, 100, "doomed", ready)
    assert ready.wait(10)
    waiter = _start(_reserve_and_log, path, 100, 60, "heir", str(tmp_path / "heir.log"), 30)
    try:
        until(lambda: _waiting_labels(ledger) == ["heir"], what="heir to queue")
        killed = time.monotonic_ns()
        os.kill(holder.pid, signal.SIGKILL)  # not reaped yet: a zombie holds nothing
        until(lambda: (tmp_path / "heir.log").exists(), what="heir to be served")
        latency_s = (int((tmp_path / "heir.log").read_text()) - killed) / 1e9
        assert latency_s < 0.9, f"reclaim took {latency_s:.2f} s; pidfd wake-up not working?"
        snap = ledger.snapshot()
        assert [(h.pid, h.label, h.nbytes) for h in snap.holders] == [(waiter.pid, "heir", 60)]
        assert not (tmp_path / "ledger" / "holders" / f"{holder.pid}-").exists()
        assert all(not p.name.startswith(f"{holder.pid}-")
                   for p in (tmp_path / "ledger" / "holders").iterdir())
    finally:
        _kill(holder)
        _kill(waiter)


def test_kill9_waiter_is_dropped_from_the_queue(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger")
    ledger = MemoryLedger(path, capacity_bytes=100)
    holder = ledger.try_reserve(80)
    assert holder is not None
    big = _start(_reserve_and_log, path, 100, 60, "big", str(tmp_path / "big.log"), 30)
    until(lambda: _waiting_labels(ledger) == ["big"], what="big to queue")
    small = _start(_reserve_and_log, path, 100, 10, "small", str(tmp_path / "small.log"), 30)
    try:
        until(lambda: _waiting_labels(ledger) == ["big", "small"], what="small to queue")
        os.kill(big.pid, signal.SIGKILL)
        until(lambda: (tmp_path / "small.log").exists(), what="small to be served")
        snap = ledger.snapshot()
        assert snap.waiters == ()
        assert sorted(h.nbytes for h in snap.holders) == [10, 80]
    finally:
        _kill(big)
        _kill(small)
        holder.release()


def test_tracked_task_keeps_reservation_after_its_holder_dies(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger")
    ledger = MemoryLedger(path, capacity_bytes=100)
    pid_file = tmp_path / "child.pid"
    holder = _start(_hold_with_tracked_child, path, 100, 100, str(pid_file))
    child_pid = int(until(lambda: pid_file.exists() and pid_file.read_text(), what="child"))
    waiter = _start(_reserve_and_log, path, 100, 50, "next", str(tmp_path / "next.log"), 30)
    try:
        until(lambda: _waiting_labels(ledger) == ["next"], what="waiter to queue")
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(5)
        cpu_before = _cpu_s(waiter.pid)
        time.sleep(1.0)
        # The task still runs, so its memory stays reserved; the waiter sleeps, not spins.
        assert [h.label for h in ledger.snapshot().holders] == ["parent"]
        assert not (tmp_path / "next.log").exists()
        assert _cpu_s(waiter.pid) - cpu_before < 0.2
        os.kill(child_pid, signal.SIGKILL)  # orphaned: stays a zombie here, which counts as dead
        until(lambda: (tmp_path / "next.log").exists(), timeout_s=5, what="waiter served")
        assert [h.label for h in ledger.snapshot().holders] == ["next"]
    finally:
        _kill(holder)
        _kill(waiter)
        try:
            os.kill(child_pid, signal.SIGKILL)
        except (ProcessLookupError, UnboundLocalError):
            pass


def test_reused_pid_with_other_start_time_keeps_nothing(tmp_path: Path) -> None:
    ledger = MemoryLedger(tmp_path / "ledger", capacity_bytes=100)
    live = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start_time(live.pid)
        assert start is not None

        def entry(i: int, start_time: int, label: str) -> dict[str, Any]:
            return {"id": i, "pid": live.pid, "start_time": start_time, "nbytes": 40,
                    "label": label, "since": time.time(), "track_pid": 0,
                    "track_start_time": 0}

        record = {
            "next_id": 10,
            "holds": [entry(1, start + 7, "impostor"), entry(2, start, "genuine")],
            "waits": [entry(3, start - 1, "impostor-waiter")],
        }
        (tmp_path / "ledger" / "record").write_bytes(encode_record(record))
        snap = ledger.snapshot()
        assert [h.label for h in snap.holders] == ["genuine"]  # the check can tell them apart
        assert snap.waiters == ()
        full = ledger.try_reserve(60)
        assert full is not None
    finally:
        live.kill()
        live.wait()
    assert [h.nbytes for h in ledger.snapshot().holders] == [60]  # "genuine" died with sleep


@pytest.mark.parametrize(
    "damage",
    ["flip-a-byte", "torn", "garbage", "empty", "other-version"],
)
def test_corrupt_record_is_rebuilt_from_live_holders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = str(tmp_path / "ledger")
    ledger = MemoryLedger(path, capacity_bytes=100)
    ready = CTX.Event()
    survivor = _start(_hold_forever, path, 100, 30, "survivor", ready)
    try:
        assert ready.wait(10)
        # A holder file left by a process that died with the record unwritten.
        dead = subprocess.Popen(["true"])
        dead.wait()
        ghost = {"next_id": 0, "holds": [{"id": 99, "pid": dead.pid, "start_time": 1,
                 "nbytes": 50, "label": "ghost", "since": 0.0, "track_pid": 0,
                 "track_start_time": 0}], "waits": []}
        holders = tmp_path / "ledger" / "holders"
        (holders / f"{dead.pid}-1.json").write_bytes(encode_record(ghost))
        (holders / "123-456.json").write_bytes(b"LOADMASTER-LEDGER 1 5 00\nhello")

        record = tmp_path / "ledger" / "record"
        data = record.read_bytes()
        damaged = {
            "flip-a-byte": data[:-3] + bytes([data[-3] ^ 0x01]) + data[-2:],
            "torn": data[: len(data) // 2],
            "garbage": os.urandom(200),
            "empty": b"",
            "other-version": data.replace(b"LOADMASTER-LEDGER 1 ", b"LOADMASTER-LEDGER 9 ", 1),
        }[damage]
        record.write_bytes(damaged)
        with pytest.raises(ValueError):
            decode_record(damaged)

        caplog.set_level(logging.WARNING, logger="loadmaster.node.ledger.store")
        snap = ledger.snapshot()
        assert [(h.pid, h.label, h.nbytes) for h in snap.holders] == [
            (survivor.pid, "survivor", 30)
        ]
        assert any("not trusted" in r.getMessage() and "rebuilt" in r.getMessage()
                   for r in caplog.records)
        assert any("123-456.json is unreadable" in r.getMessage() for r in caplog.records)
        decode_record(record.read_bytes())  # a valid record again
        assert not (holders / f"{dead.pid}-1.json").exists()
        assert ledger.try_reserve(71) is None
        fits = ledger.try_reserve(70)
        assert fits is not None
    finally:
        _kill(survivor)


# ------------------------------------------------------------ where the ledger may live


def test_directory_mode_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    MemoryLedger(path, capacity_bytes=10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((path / "holders").stat().st_mode) == 0o700

    wide = tmp_path / "wide"
    wide.mkdir()
    wide.chmod(0o777)
    with pytest.raises(LedgerError, match=r"writable by others \(mode 0777\)"):
        MemoryLedger(wide, capacity_bytes=10)

    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(LedgerError, match="symbolic link"):
        MemoryLedger(link, capacity_bytes=10)

    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 12345, 12345)
    with pytest.raises(LedgerError, match=r"owned by uid 12345.*LOADMASTER_LEDGER"):
        MemoryLedger(foreign, capacity_bytes=10)


@pytest.mark.parametrize("name", ["nfs", "cifs", "smb2", "lustre", "gpfs", "beegfs", "9p", "fuse"])
def test_network_file_systems_are_refused(name: str) -> None:
    magic = {v: k for k, v in NETWORK_FS_MAGIC.items()}[name]
    with pytest.raises(LedgerError) as info:
        check_fs_type("/home/me/ledger", magic)
    msg = str(info.value)
    assert f"on a {name} file system" in msg and "locks" in msg and ENV_VAR in msg


def test_local_file_systems_are_accepted(tmp_path: Path) -> None:
    assert fs_magic("/dev/shm") == TMPFS_MAGIC
    check_fs_type("/dev/shm/x", TMPFS_MAGIC)
    check_fs_type("/x", 0xEF53)  # ext4
    check_local_fs(tmp_path / "not" / "yet" / "there")  # the nearest existing ancestor counts
    shm = Path(f"/dev/shm/loadmaster-test-{os.getpid()}")
    try:
        ledger = MemoryLedger(shm, capacity_bytes=10)
        assert ledger.try_reserve(10) is not None
    finally:
        subprocess.run(["rm", "-rf", str(shm)], check=True)


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from-env"))
    assert default_ledger_dir() == tmp_path / "from-env"
    assert MemoryLedger(capacity_bytes=10).path == tmp_path / "from-env"
    monkeypatch.delenv(ENV_VAR)
    assert default_ledger_dir() == Path(f"/dev/shm/loadmaster-{os.geteuid()}")


# ------------------------------------------------------------ stress


@pytest.mark.slow
@pytest.mark.timeout(STRESS_S + 120)
def test_stress_eight_processes_never_exceed_capacity(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger")
    cap = 100
    ledger = MemoryLedger(path, capacity_bytes=cap)
    logs = [str(tmp_path / f"worker{i}.log") for i in range(8)]
    workers = [_start(_stress_worker, path, cap, i, STRESS_S, logs[i]) for i in range(8)]
    for w in workers:
        w.join(STRESS_S + 60)
    assert [w.exitcode for w in workers] == [0] * 8

    events: list[tuple[int, int, int, int]] = []  # (time, 0=acquire 1=release, id, bytes)
    ids: set[int] = set()
    for log in logs:
        per_worker = 0
        for line in Path(log).read_text().splitlines():
            kind, rid, nbytes, t = line.split()
            events.append((int(t), 0 if kind == "A" else 1, int(rid), int(nbytes)))
            if kind == "A":
                assert int(rid) not in ids, f"reservation id {rid} given twice: a lost update"
                ids.add(int(rid))
                per_worker += 1
        assert per_worker > 0, f"{log}: no reservation in {STRESS_S} s"
    acquires = sum(1 for e in events if e[1] == 0)
    assert acquires * 2 == len(events)
    # Acquires are logged after admission and releases before release, so the logged
    # intervals lie inside the true ones; at equal times count the acquire first.
    held = peak = 0
    for _t, kind, _rid, nbytes in sorted(events):
        held += nbytes if kind == 0 else -nbytes
        peak = max(peak, held)
        assert held <= cap, f"{held} bytes held at once, capacity {cap}"
    assert held == 0
    snap = ledger.snapshot()
    assert snap.holders == () and snap.waiters == ()
    assert list((tmp_path / "ledger" / "holders").glob("*.json")) == []
    assert peak > cap // 2  # the workers really competed
    print(f"stress: {acquires} reservations in {STRESS_S:g} s, peak {peak}/{cap}")


# ------------------------------------------------------------ the command line


def _cli(*args: str, env_dir: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV_VAR: str(env_dir)}
    return subprocess.run([LOADMASTER, *args], env=env, text=True, capture_output=True,
                          timeout=60, **kw)


def test_cli_reserve_exit_status_propagates(tmp_path: Path) -> None:
    d = tmp_path / "ledger"
    status = _cli("reserve", "--memory", "1MiB", "--", "sh", "-c", "exit 7", env_dir=d).returncode
    assert status == 7
    assert _cli("reserve", "-m", "1MiB", "--", "true", env_dir=d).returncode == 0
    killed = _cli("reserve", "-m", "1MiB", "--", "sh", "-c", "kill -TERM $$", env_dir=d)
    assert killed.returncode == 128 + signal.SIGTERM
    missing = _cli("reserve", "-m", "1MiB", "--", "no-such-program-xyz", env_dir=d)
    assert missing.returncode == 127 and "not found" in missing.stderr
    huge = _cli("reserve", "-m", "1PiB", "--", "true", env_dir=d)
    assert huge.returncode == 78 and "could never fit" in huge.stderr
    bad = _cli("reserve", "-m", "lots", "--", "true", env_dir=d)
    assert bad.returncode == 2 and "--memory" in bad.stderr
    assert MemoryLedger(d, capacity_bytes=10).snapshot().holders == ()


def test_cli_reservation_visible_in_ledger_while_command_runs(tmp_path: Path) -> None:
    d = tmp_path / "ledger"
    env = {**os.environ, ENV_VAR: str(d)}
    proc = subprocess.Popen(
        [LOADMASTER, "reserve", "--memory", "5MiB", "--label", "probe λ 'x'", "--",
         "head", "-c", "1"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        def holders() -> list[dict[str, Any]]:
            out = _cli("ledger", "--json", env_dir=d)
            assert out.returncode == 0, out.stderr
            held: list[dict[str, Any]] = json.loads(out.stdout)["holders"]
            return held

        held = until(lambda: [h for h in holders() if h["track_pid"]], what="the reservation")
        assert [(h["label"], h["nbytes"], h["pid"]) for h in held] == [
            ("probe λ 'x'", 5 * MiB, proc.pid)
        ]
        assert held[0]["track_pid"] not in (0, proc.pid)  # the command itself is tracked
        table = _cli("ledger", env_dir=d)
        assert "holds" in table.stdout and "probe λ 'x'" in table.stdout
        assert "5 MiB" in table.stdout
        assert proc.stdin is not None
        proc.stdin.write(b"x")
        proc.stdin.close()
        assert proc.wait(30) == 0
        assert holders() == []
        assert "nobody holds" in _cli("ledger", env_dir=d).stdout
    finally:
        proc.kill()
        proc.wait()


def test_cli_reserve_timeout_exit_75(tmp_path: Path) -> None:
    d = tmp_path / "ledger"
    ledger = MemoryLedger(d, capacity_bytes=1000)
    holder = ledger.try_reserve(900)
    assert holder is not None
    outcome: list[object] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(ledger.reserve(500, timeout_s=60, label="ahead"))
    )
    waiter.start()
    try:
        until(lambda: _waiting_labels(ledger) == ["ahead"], what="the waiter to queue")
        out = _cli("reserve", "-m", "1KiB", "--timeout", "0.5s", "--", "true", env_dir=d)
        assert out.returncode == 75
        assert "could not reserve 1 KiB" in out.stderr
        assert "older request(s) wait ahead" in out.stderr and "'ahead'" in out.stderr
    finally:
        holder.release()
        waiter.join(10)
    assert outcome and ledger.snapshot().waiters == ()


def test_cli_refuses_unsafe_directory(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    out = _cli("reserve", "-m", "1MiB", "--", "true", env_dir=d)
    assert out.returncode == 78 and "writable by others" in out.stderr
    out = _cli("ledger", env_dir=d)
    assert out.returncode == 78
