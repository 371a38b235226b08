"""A task's output watched while it runs, and output read off the engine's loop.

Real zygotes, task processes, FIFOs and (for the CLI) a real ``loadmaster
run`` process. A task prints a line, then blocks opening a FIFO the test
holds; the test sees that line arrive before it lets the task go on, so
nothing here waits on a sleep: the line can only have come while the task ran.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import loadmaster
from loadmaster.node import runtime as node_runtime
from loadmaster.node.orders import Done, NodeConfig, Output
from loadmaster.node.outputs import CHUNK_MAX
from loadmaster.node.runtime import NodeRuntime
from loadmaster.output import LinePrinter, printable

WAIT_S = 120  # a deadline for what must come; never a sleep


def say_then_wait(fifo: str) -> str:
    """Print a line, block until the test opens the FIFO, print another."""
    print("first line")
    print("to stderr", file=sys.stderr)
    with open(fifo) as fh:
        fh.read()
    print("second line")
    return "ok"


def big_output(n: int) -> int:
    sys.stdout.write("x" * n)
    return n


def double(x: int) -> int:
    return 2 * x


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "gate")
    os.mkfifo(path)
    yield path


def release(fifo: str) -> None:
    """Let a task blocked opening ``fifo`` for reading go on."""
    fd = os.open(fifo, os.O_WRONLY)  # returns once the task has opened its end
    os.close(fd)


def lines_of(q: queue.Queue[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    return [q.get(timeout=WAIT_S) for _ in range(n)]


def _watch_a_task(ex: loadmaster.Executor, fifo: str, command: bool) -> None:
    got: queue.Queue[tuple[str, str]] = queue.Queue()
    view = ex.options(sandbox=False, on_output=lambda fut, stream, line: got.put((stream, line)))
    if command:
        fut = view.submit_command(f"echo 'first line'; echo 'to stderr' >&2; cat {fifo}; echo 'second line'")
    else:
        fut = view.submit(say_then_wait, fifo)
    first = sorted(lines_of(got, 2))
    assert first == [("stderr", "to stderr\n"), ("stdout", "first line\n")]
    assert not fut.done()  # it is blocked on the FIFO: these came while it ran
    release(fifo)
    fut.result(timeout=WAIT_S)
    assert got.get_nowait() == ("stdout", "second line\n")  # all handed over once result() returned
    assert got.empty()
    assert fut.report is not None
    assert fut.report.stdout == "first line\nsecond line\n"  # the report keeps it all, as before


def test_a_functions_lines_arrive_while_it_runs(fifo: str) -> None:
    with loadmaster.Executor(history=":memory:") as ex:
        _watch_a_task(ex, fifo, command=False)


def test_a_commands_lines_arrive_while_it_runs(fifo: str) -> None:
    with loadmaster.Executor(history=":memory:") as ex:
        _watch_a_task(ex, fifo, command=True)


def test_stream_true_prints_each_line_with_the_tasks_name(fifo: str, capfd: pytest.CaptureFixture[str]) -> None:
    with loadmaster.Executor(history=":memory:") as ex:
        fut = ex.options(sandbox=False, stream=True).submit(say_then_wait, fifo)
        release(fifo)
        assert fut.result(timeout=WAIT_S) == "ok"
        out, err = capfd.readouterr()
    name = f"[say_then_wait #{fut.task_id}] "
    assert f"{name}first line\n{name}second line\n" in out
    assert f"{name}to stderr\n" in err


def test_a_tasks_hostile_bytes_are_bounded_replaced_and_escaped(tmp_path: Path) -> None:
    got: list[tuple[str, str]] = []
    with loadmaster.Executor(history=":memory:") as ex:
        fut = ex.submit_command(
            "printf 'bad \\377 utf8\\n\\033]0;title\\007\\n'; head -c 300000 /dev/zero | tr '\\0' y",
            on_output=lambda f, s, line: got.append((s, line)))
        fut.result(timeout=WAIT_S)
    assert got[0] == ("stdout", "bad \ufffd utf8\n")
    assert printable(got[1][1]) == "\\x1b]0;title\\x07\n"  # what stream=True prints
    rest = "".join(line for _, line in got[2:])
    assert rest == "y" * 300000  # a long line comes in bounded pieces, all of it
    assert max(len(line) for _, line in got) <= 64 << 10
    printed: list[str] = []
    LinePrinter("[t] ", lambda text, file: printed.append(text))(fut, "stdout", got[1][1])
    assert printed == ["[t] \\x1b]0;title\\x07\n"]


def test_the_node_runtime_streams_what_its_report_keeps_in_bounded_chunks(tmp_path: Path) -> None:
    import pickle

    import cloudpickle

    from loadmaster.node.orders import Order, OrderKind
    from loadmaster.spec import Resources

    rt = NodeRuntime(NodeConfig(name="n1", workdir=str(tmp_path / "node"), zygotes=1, ledger=False))
    try:
        n = 3 << 20  # past the zygote's inline limit: held, then read through /proc
        rt.submit([Order(task_id=5, attempt=1, kind=OrderKind.FUNCTION, fn_key=1,
                         fn_bytes=cloudpickle.dumps(big_output), payload=pickle.dumps(((n,), {})),
                         allocation=Resources(cores=1.0, memory=256 << 20), stream=True)])
        outputs: list[Output] = []
        done: Done | None = None
        while done is None:
            for ev in rt.poll(WAIT_S):
                if isinstance(ev, Output):
                    outputs.append(ev)
                else:
                    assert isinstance(ev, Done)
                    done = ev
        assert done.stdout == "x" * n
        streamed = b"".join(o.data for o in outputs if o.stream == "stdout")
        assert streamed == b"x" * n
        assert all(len(o.data) <= CHUNK_MAX for o in outputs)
        assert [o.final for o in outputs if o.stream == "stdout"][-1] is True
        assert sum(o.final for o in outputs) == 2  # one last event per stream
        # the zygote was told to let its copy go: no capture of the task is left open in it
        zpid = rt.zygotes[0].proc.pid
        rt.zygotes[0].stats()  # a round trip: the release, sent before, has been handled
        while not any(m[0] == "stats" for m in (rt.zygotes[0].read() or [])):  # type: ignore[index]
            pass
        links = [os.readlink(f"/proc/{zpid}/fd/{fd}") for fd in os.listdir(f"/proc/{zpid}/fd")]
        assert not [link for link in links if "loadmaster-out-5" in link]
    finally:
        rt.close()


class Gate:
    """Holds the node runtime's late read of a big output until released (a slow disk, made to order)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def wrap(self, fn: Any, big: int) -> Any:
        def held(*args: Any) -> Any:
            out = fn(*args)
            if len(out) >= big:
                self.entered.set()
                assert self.go.wait(WAIT_S)
            return out
        return held


@pytest.mark.parametrize("kind", ["function", "command"])
def test_a_16_mib_output_being_read_does_not_stall_another_tasks_dispatch(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = Gate()
    n = 16 << 20
    if kind == "function":
        monkeypatch.setattr(node_runtime, "pread_all", gate.wrap(node_runtime.pread_all, n))
    else:
        monkeypatch.setattr(node_runtime, "_read_bytes", gate.wrap(node_runtime._read_bytes, n))
    with loadmaster.Executor(history=":memory:", sandbox=False) as ex:
        if kind == "function":
            big = ex.submit(big_output, n)
        else:
            big = ex.submit_command(f"head -c {n} /dev/zero | tr '\\0' x")
        try:
            assert gate.entered.wait(WAIT_S), "the big output was never read"
            # Its read is held; the engine's loop goes on: another task starts and ends.
            assert ex.submit(double, 21).result(timeout=WAIT_S) == 42
            assert not big.done()
        finally:
            gate.go.set()
        big.result(timeout=WAIT_S)
        assert big.report is not None and len(big.report.stdout) == n


def test_the_cli_shows_streamed_lines_live(fifo: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.txt"
    # Relative to the run's directory, which the command's sandbox lets it use.
    tasks.write_text(f"echo 'first line'; cat {os.path.basename(fifo)}; echo 'second line'\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadmaster.cli", "run", "--stream", "--history", str(tmp_path / "h.sqlite"),
         str(tasks)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=os.path.dirname(fifo))
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the run is blocked on the FIFO until the line is seen
            seen.append(line)
            if "first line" in line:
                break
        assert seen and seen[-1] == "[line 1 echo] first line\n", seen
        release(fifo)
        rest = proc.stdout.read()
        assert proc.wait(WAIT_S) == 0, proc.stderr.read() if proc.stderr else ""
        assert "[line 1 echo] second line\n" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
