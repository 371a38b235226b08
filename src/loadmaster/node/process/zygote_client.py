"""The client's handle on one zygote process: start it, send orders, read what is done.

Runs in the client. ``start`` is called from the executor's constructor; after
that only the executor's engine thread calls ``send``/``read``.

Does not cover: deciding what to run where (``schedule/``), or what happens
inside the zygote (``node/process/zygote.py``).
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence

import cloudpickle

from loadmaster.errors import WorkerLost
from loadmaster.node.measure.cgroup_slots import slot_parent
from loadmaster.node.process import bytecode, taskenv
from loadmaster.node.process.fncache import FnCache
from loadmaster.node.process.protocol import READ_CHUNK, Done, FrameReader, ZygoteInfo, frame, write_all

START_TIMEOUT_S = 60.0
ZYGOTE_BOOT = "from loadmaster.node.process.zygote import main; main()"


def boot_code(path: Sequence[str]) -> str:
    """The zygote's ``-c`` program: the client's ``sys.path``, then the zygote's ``main``.

    The path travels in the program text (a literal), not in ``PYTHONPATH``:
    the tasks keep the user's own ``PYTHONPATH``, so a Python a command starts
    does not get this interpreter's standard library. ``-c``, not ``-m``: runpy
    would import importlib.util, contextlib and more (~160 KiB that every fork copies).
    """
    return f"import sys; sys.path[:] = {list(path)!r}; {ZYGOTE_BOOT}"


class ZygoteClient:
    """One zygote process and the two pipes to it."""

    def __init__(self, *, workdir: str, preload: Sequence[str] = (), cgroups: bool = True,
                 fork_method: str = "libc", sample_ms: float = 10.0, index: int = 0,
                 sandbox_dir: str = "", path: Sequence[str] = (), follow_ms: float | None = None) -> None:
        self.index = index
        self.workdir = workdir
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        env, pinned = taskenv.zygote_env(os.environ)
        if path:
            # ``path``: an environment's site directory (deps/build.py), ahead of the node's
            # own; its tasks' own Pythons (a subprocess, a command) find it there too.
            env["PYTHONPATH"] = os.pathsep.join([*path, *filter(None, [os.environ.get("PYTHONPATH")])])
        bytecode.ensure_fresh()  # a zygote that compiled its modules would cost ~12 % more per task
        argv = [
            sys.executable, "-c", boot_code([*path, *(p or os.getcwd() for p in sys.path)]),
            # Told here, not in the environment, so no task inherits them: the thread
            # variables set for the zygote alone, and that the executor warns about a
            # degraded sandbox itself.
            "--pinned", ",".join(pinned), "--quiet-sandbox", "1",
            "--cmd-fd", str(cmd_r), "--res-fd", str(res_w), "--workdir", workdir,
            "--preload", ",".join(preload), "--sample-ms", str(sample_ms),
            "--cgroup-parent", (slot_parent() or "") if cgroups else "", "--fork", fork_method,
            "--sandbox-dir", sandbox_dir, "--cloudpickle", cloudpickle.__version__,
        ]
        if follow_ms is not None:  # how long an order handed ahead waits (tests widen it)
            argv += ["--follow-ms", str(follow_ms)]
        try:
            self.proc = subprocess.Popen(argv, pass_fds=(cmd_r, res_w), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(cmd_r)
            os.close(res_w)
        self.cmd_fd = cmd_w
        self.res_fd = res_r
        # Orders the zygote's pipe has not taken yet. The engine never blocks writing:
        # a zygote blocked writing its reports to us would never read, and we would
        # never read its reports (an order of megabytes fills the pipe).
        self.outbox = bytearray()
        self.reader = FrameReader()
        self.fns = FnCache()  # a mirror of the zygote's function cache (fncache.py)
        self.info = self._await_ready()
        os.set_blocking(self.res_fd, False)
        os.set_blocking(self.cmd_fd, False)

    def _await_ready(self) -> ZygoteInfo:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                raise WorkerLost(f"the zygote did not start within {START_TIMEOUT_S:.0f} s")
            ready, _, _ = select.select([self.res_fd], [], [], left)
            if not ready:
                continue
            data = os.read(self.res_fd, 1 << 16)
            if not data:
                code = self.proc.wait()
                raise WorkerLost(
                    f"the zygote exited during start-up with status {code}; its error is above "
                    "(is loadmaster importable by sys.executable?)"
                )
            for msg in self.reader.feed(data):
                if msg[0] == "ready":  # type: ignore[index]
                    return msg[1]  # type: ignore[index]

    def fileno(self) -> int:
        """The fd to select on for results."""
        return self.res_fd

    def stats(self) -> None:
        """Ask the zygote for its numbers; it answers ``("stats", dict)`` (tests, diagnosis)."""
        self.send(frame(("stats",)))

    def kill(self, task_id: int) -> None:
        """Ask the zygote to stop one task's tree."""
        self.send(frame(("kill", task_id)))

    def send(self, data: bytes) -> None:
        """Send already framed orders (what the pipe does not take waits in ``outbox``)."""
        if self.outbox:
            self.outbox += data
            return
        try:
            n = os.write(self.cmd_fd, data)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:
            return  # the zygote is gone: the end of its report pipe tells the engine
        if n < len(data):
            self.outbox += memoryview(data)[n:]

    def flush(self) -> None:
        """Write what the pipe takes of ``outbox`` (when the engine's select finds it writable)."""
        try:
            n = os.write(self.cmd_fd, self.outbox)
        except BlockingIOError:
            return
        except BrokenPipeError:
            self.outbox.clear()
            return
        del self.outbox[:n]

    def read(self) -> list[object] | None:
        """Return finished messages, or ``None`` when the zygote is gone.

        Reads until the pipe holds no more than one read took (the engine's select
        is level-triggered, so what is left wakes it again): the usual call makes
        one ``read`` and raises no ``BlockingIOError``.
        """
        out: list[object] = []
        while True:
            try:
                data = os.read(self.res_fd, READ_CHUNK)
            except BlockingIOError:
                return out
            if not data:
                return out if out else None
            for msg in self.reader.feed(data):
                if msg[0] == "done":  # type: ignore[index]
                    msg = ("done", Done(*msg[1]))  # type: ignore[index]
                out.append(msg)
            if len(data) < READ_CHUNK:
                return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the zygote to exit after its running tasks, then wait (kill after ``timeout_s``)."""
        # Orders still waiting mean the engine stopped with tasks in flight (it failed):
        # "exit" behind half an order would be garbage, so the pipe just closes, and the
        # zygote, seeing its end, stops its tasks and exits. So it does when the pipe is
        # too full to take "exit" (a few bytes: written whole or not at all).
        if not self.outbox:
            with contextlib.suppress(OSError):
                write_all(self.cmd_fd, frame(("exit",)))
        with contextlib.suppress(OSError):
            os.close(self.cmd_fd)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            os.close(self.res_fd)
        except OSError:
            pass
