"""Issue 4: executors in separate processes share the node's memory through the ledger.

Both executors run inside one real memory cgroup limited to 2 GiB, so each
detects 2 GiB as the node's memory; together they ask for more than that.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from loadmaster.node.ledger.book import MemoryLedger
from loadmaster.node.measure import cgroupfs

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scenarios", "two_executors.py")
GiB = 1 << 30


@pytest.fixture
def cgroup_2gib():
    parent = cgroupfs.own_dir("memory")
    if os.geteuid() != 0 or parent is None or not cgroupfs.can_create_child("memory"):
        pytest.skip("needs root and a writable v1 memory cgroup to build a 2 GiB node")
    path = os.path.join(parent, f"lm-admission-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    with open(os.path.join(path, "memory.limit_in_bytes"), "w") as fh:
        fh.write(str(2 * GiB))
    yield path
    for _ in range(100):
        try:
            with open(os.path.join(path, "cgroup.procs")) as fh:
                pids = [int(p) for p in fh.read().split()]
        except OSError:
            pids = []
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.1)


def _start(cgroup: str, ledger: str, out: str, n: int, hold_s: float) -> subprocess.Popen[str]:
    procs = os.path.join(cgroup, "cgroup.procs")

    def enter() -> None:
        with open(procs, "w") as fh:
            fh.write("0")

    env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(HERE), "src")}
    return subprocess.Popen([sys.executable, SCRIPT, ledger, out, str(n), str(hold_s)], preexec_fn=enter,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _max_overlap(rows: list[dict]) -> int:
    events = sorted([(r["start"], r["alloc"]) for r in rows] + [(r["end"], -r["alloc"]) for r in rows],
                    key=lambda e: (e[0], e[1]))
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def _oom_kills(cgroup: str) -> int:
    with open(os.path.join(cgroup, "memory.oom_control")) as fh:
        for line in fh:
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return 0


def test_two_executors_share_the_node_without_oversubscribing(cgroup_2gib: str, tmp_path) -> None:
    ledger = str(tmp_path / "ledger")
    outs = [str(tmp_path / f"out{i}.json") for i in range(2)]
    procs = [_start(cgroup_2gib, ledger, out, 5, 0.4) for out in outs]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    rows = []
    for out in outs:
        with open(out) as fh:
            rows.extend(json.load(fh))
    assert len(rows) == 10
    # Alone, each executor would run 3 tasks of 600 MiB at once (1.8 GiB of 2 GiB).
    assert _max_overlap(rows) <= 2 * GiB
    assert _oom_kills(cgroup_2gib) == 0
    assert MemoryLedger(ledger, capacity_bytes=2 * GiB).snapshot().holders == ()


def test_kill_9_of_an_executor_leaves_no_reservation(cgroup_2gib: str, tmp_path) -> None:
    ledger = str(tmp_path / "ledger")
    p = _start(cgroup_2gib, ledger, str(tmp_path / "out.json"), 20, 2.0)
    assert p.stdout is not None
    info = json.loads(p.stdout.readline())
    book = MemoryLedger(ledger, capacity_bytes=2 * GiB)
    deadline = time.monotonic() + 60
    while not any(h.pid == info["pid"] for h in book.snapshot().holders):
        assert time.monotonic() < deadline, "the executor never reserved memory"
        time.sleep(0.1)
    os.kill(info["pid"], signal.SIGKILL)
    p.wait(30)
    deadline = time.monotonic() + 30
    while any(h.pid == info["pid"] for h in book.snapshot().holders):
        assert time.monotonic() < deadline, "the killed executor's reservations were not reclaimed"
        time.sleep(0.2)
