"""The local backend: zygotes on this machine, no server.

Runs in the client: constructed by the executor, then used only by the
engine thread. It starts ``count`` zygotes, sends each task to the one with
the fewest orders in hand, and reports a zygote that died.

Does not cover: placement policy (the scheduler decides *whether* a task
starts; this only picks which local zygote forks it).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence

from loadmaster.node.process.protocol import RunOrder
from loadmaster.node.process.zygote_client import ZygoteClient
from loadmaster.spec import TaskSpec

log = logging.getLogger("loadmaster.backends.local")


class LocalBackend:
    """Zygotes on this machine."""

    follows = True  # a zygote takes ("then", after, order): see Engine._hand_ahead

    def __init__(self, *, count: int, workdir: str | None = None, preload: Sequence[str] = (),
                 cgroups: bool = True, fork_method: str = "libc", sample_ms: float = 10.0,
                 sandbox_dir: str = "") -> None:
        self.workdir = workdir or tempfile.mkdtemp(prefix="loadmaster-")
        os.makedirs(self.workdir, exist_ok=True)
        self.zygotes: list[ZygoteClient | None] = []
        self._opts = dict(preload=tuple(preload), cgroups=cgroups, fork_method=fork_method,
                          sample_ms=sample_ms, sandbox_dir=sandbox_dir)
        for i in range(count):
            self.zygotes.append(self._start(i))
        first = self.zygotes[0]
        assert first is not None
        self.info = first.info
        for note in self.info.notes:
            log.warning("%s", note)
        self._by_fd = {z.fileno(): i for i, z in enumerate(self.zygotes) if z is not None}
        # Orders each zygote holds (running, or handed ahead to follow one), counted when
        # prepared: tasks picked together in one dispatch then go to different zygotes
        # (counted at the send, they all went to the same one, and the chains of tasks
        # handed ahead stayed there: one zygote forked for both cores, the other idled).
        self.load = [0] * count

    def _start(self, i: int) -> ZygoteClient:
        d = os.path.join(self.workdir, f"zygote-{i}")
        os.makedirs(d, exist_ok=True)
        return ZygoteClient(workdir=d, index=i, **self._opts)  # type: ignore[arg-type]

    @property
    def method(self) -> str:
        """The measurement method in force (a ``MeasureMethod`` value)."""
        return self.info.method

    def fds(self) -> list[int]:
        """Fds to select on."""
        return list(self._by_fd)

    def writing(self) -> list[int]:
        """Fds to select on for writing: zygotes whose pipe has not taken every order yet."""
        return [z.cmd_fd for z in self.zygotes if z is not None and z.outbox]

    def flush(self, fd: int) -> None:
        """Write what zygote pipe ``fd`` (one :meth:`writing` returned) takes now."""
        for z in self.zygotes:
            if z is not None and z.cmd_fd == fd:
                z.flush()
                return

    def choose(self, task: TaskSpec) -> int:
        """Return the zygote that will fork ``task``: the one holding the fewest orders."""
        best, best_n = 0, None
        for i, z in enumerate(self.zygotes):
            if z is not None and (best_n is None or self.load[i] < best_n):
                best, best_n = i, self.load[i]
        return best

    def prepare(self, where: int, order: RunOrder, fn_bytes: bytes | None) -> None:
        """Count ``order`` against zygote ``where``; attach the function's bytes if it has not seen them yet."""
        z = self.zygotes[where]
        assert z is not None
        self.load[where] += 1
        if order.fn_key and order.fn_key not in z.fn_keys:
            order.fn_bytes = fn_bytes or b""
            z.fn_keys.add(order.fn_key)

    def send(self, where: int, data: bytes) -> None:
        """Send framed orders to zygote ``where``."""
        z = self.zygotes[where]
        assert z is not None
        z.send(data)

    def read(self, fd: int) -> list[object] | None:
        """Messages from the zygote behind ``fd``; ``None`` if it died."""
        z = self.zygotes[self._by_fd[fd]]
        assert z is not None
        return z.read()

    def finished(self, where: int) -> None:
        """Note that a task on zygote ``where`` ended."""
        self.load[where] -= 1

    def cancel(self, task: TaskSpec) -> None:
        """Stop a running task's tree."""
        z = self.zygotes[task.where]
        if z is not None:
            z.kill(task.task_id)

    def lost(self, fd: int) -> int:
        """Replace the zygote behind ``fd`` (it died); return its index."""
        i = self._by_fd.pop(fd)
        old = self.zygotes[i]
        if old is not None:
            code = old.proc.poll()
            log.error("zygote %d (pid %d) died (status %s); its tasks are retried", i, old.proc.pid, code)
            try:
                os.close(old.res_fd)
            except OSError:
                pass
        z = self._start(i)
        self.zygotes[i] = z
        self.load[i] = 0
        self._by_fd[z.fileno()] = i
        return i

    def close(self) -> None:
        """Stop every zygote (after their running tasks)."""
        for z in self.zygotes:
            if z is not None:
                z.close()
