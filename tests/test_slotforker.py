"""The namespace slot's forker (``node/process/slotforker.py``): out of a task's reach, replaced when killed,
and measuring its tasks as the zygote's own path does.

Real executors, real forkers: the forkers are found as the zygotes' children
that are no task (at rest, the only ones).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

import loadmaster
from loadmaster.node.sandbox.policy import capabilities

pytestmark = pytest.mark.skipif(not capabilities().landlock_abi or bool(capabilities().namespaces_error),
                                reason="no Landlock or no namespaces: no namespace slots, no forkers")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def _zygotes(ex: loadmaster.Executor) -> list[int]:
    runtime = getattr(ex.backend, "runtime", ex.backend)
    return [z.proc.pid for z in runtime.zygotes if z is not None]


def _forkers(ex: loadmaster.Executor) -> list[int]:
    """The zygotes' children at rest: their slots' forkers."""
    return sorted(p for z in _zygotes(ex) for p in _children(z))


def who() -> tuple[int, int]:
    return os.getpid(), os.getppid()


def poke(pid: int) -> dict[str, str]:
    """What this task can do to process ``pid`` (its forker)."""
    out: dict[str, str] = {}
    for name, act in (
        ("signal", lambda: os.kill(pid, 0)),
        ("kill", lambda: os.kill(pid, signal.SIGKILL)),
        ("status", lambda: os.stat(f"/proc/{pid}/status") and os.close(os.open(f"/proc/{pid}/status", os.O_RDONLY))),
        ("fds", lambda: os.listdir(f"/proc/{pid}/fd")),
    ):
        try:
            act()
            out[name] = "ok"
        except OSError as exc:
            out[name] = type(exc).__name__
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    out["sockets"] = str(sockets)
    return out


def hog(mib: int) -> int:
    block = bytearray(mib << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


def spin(n: int) -> int:
    return sum(i * i for i in range(n))


@pytest.fixture
def ex(tmp_path) -> Iterator[loadmaster.Executor]:
    with loadmaster.Executor(history=str(tmp_path / "h.sqlite"), zygotes=1) as e:
        yield e


def test_default_tasks_are_forked_by_a_forker_in_the_slot(ex: loadmaster.Executor) -> None:
    fs = [ex.submit(who) for _ in range(20)]
    pids = [f.result() for f in fs]
    (zygote,) = _zygotes(ex)
    assert {ppid for _, ppid in pids} == {zygote}  # CLONE_PARENT: the zygote reaps and measures them
    forkers = _forkers(ex)
    assert 1 <= len(forkers) <= 2, forkers  # one per namespace slot: two when two tasks overlapped
    for forker in forkers:
        with open(f"/proc/{forker}/status") as fh:
            status = fh.read()
        assert "CapEff:\t0000000000000000" in status  # the forker holds no capability either
    assert all(f.report.extra["sandbox"]["fs_rules"] for f in fs)
    assert all(f.report.extra["sandbox"]["private_tmp"] for f in fs)


def test_a_task_cannot_reach_or_signal_its_forker(ex: loadmaster.Executor) -> None:
    ex.submit(who).result()
    forker = _forkers(ex)[0]
    seen = ex.submit(poke, forker).result()
    assert seen == {"signal": "PermissionError", "kill": "PermissionError", "status": "PermissionError",
                    "fds": "PermissionError", "sockets": "1"}, seen  # its one socket: the report socket
    assert forker in _forkers(ex)  # still there, still the same
    assert ex.submit(who).result()[1] == _zygotes(ex)[0]


def test_a_killed_forker_is_replaced_and_the_next_task_runs(ex: loadmaster.Executor) -> None:
    ex.submit(who).result()
    old = _forkers(ex)
    for forker in old:
        os.kill(forker, signal.SIGKILL)
    fs = [ex.submit(spin, 1000) for _ in range(5)]
    assert [f.result() for f in fs] == [spin(1000)] * 5
    assert all(f.report.attempts == 1 for f in fs)  # the order the dead forker got was sent again, not retried
    assert all(f.report.extra["sandbox"]["fs_rules"] for f in fs)
    new = _forkers(ex)
    assert new and not set(new) & set(old), (old, new)


def test_measurement_through_the_forker_equals_the_zygotes_own_path(tmp_path, monkeypatch) -> None:
    def measure() -> dict[str, list[float]]:
        with loadmaster.Executor(history=str(tmp_path / f"h-{len(os.environ)}.sqlite"), zygotes=1) as e:
            out: dict[str, list[float]] = {"hog": [], "spin": [], "noop": []}
            for _ in range(3):
                f = e.submit(hog, 120)
                f.result()
                out["hog"].append(f.report.peak_memory / (1 << 20))
                g = e.submit(spin, 3_000_000)
                g.result()
                out["spin"].append(g.report.cpu_time)
                h = e.submit(who)
                h.result()
                out["noop"].append(h.report.peak_memory / (1 << 20))
            out["method"] = [f.report.measure_method.value]  # type: ignore[list-item]
            forkers = _forkers(e)
        out["forkers"] = [len(forkers)]
        return out

    fast = measure()
    monkeypatch.setenv("LOADMASTER_SANDBOX_DISABLE", "slotforker")
    slow = measure()
    assert fast["forkers"][0] >= 1 and slow["forkers"] == [0]
    assert fast["method"] == slow["method"]
    for a, b in zip(sorted(fast["hog"]), sorted(slow["hog"]), strict=True):
        assert abs(a - b) < 4, (fast["hog"], slow["hog"])  # MiB: 120 MiB touched, measured alike
        assert 118 < a < 130, fast["hog"]
    assert max(fast["noop"]) < 10 and max(slow["noop"]) < 10
    f_cpu, s_cpu = sorted(fast["spin"])[1], sorted(slow["spin"])[1]
    assert 0.5 < f_cpu / s_cpu < 2, (fast["spin"], slow["spin"])


def test_tasks_with_declared_outputs_or_other_policies_still_run(ex: loadmaster.Executor, tmp_path) -> None:
    out = tmp_path / "out.txt"
    os.chmod(tmp_path, 0o777)

    def write(path: str) -> str:
        with open(path, "w") as fh:
            fh.write("x")
        return "ok"

    assert ex.options(outputs=[str(out)]).submit(write, str(out)).result() == "ok"
    assert out.read_text() == "x"
    netted = ex.options(sandbox=loadmaster.Sandbox(network=True)).submit(who)
    assert netted.result()[1] == _zygotes(ex)[0]
    assert not netted.report.extra["sandbox"]["net_namespace"]
    plain = ex.submit(who)
    plain.result()
    assert plain.report.extra["sandbox"]["net_namespace"]
