"""One running task attempt as the zygote tracks it, and the files that hold its output.

Used by the zygote only (``zygote.py``, ``collect.py``, ``sampler.py``): plain
slotted classes and functions, stdlib only (the zygote does not import
``dataclasses``, ~3 MB that every fork would pay for).

A function task's stdout and stderr go to two memfds the zygote makes before
the fork and dups onto the child's fds 1 and 2; when the task has ended the
zygote reads them (``read_capture``: nothing read when empty, at most
``CAPTURE_MAX`` + 1 bytes) and sends them in the task's ``Done`` when they are
small (``CAPTURE_INLINE`` together); larger ones it holds open, names their fds
in the ``Done``, and the node runtime reads them off its own loop through
``/proc`` and says ``release`` (``node/outputs.py``). While the task runs, the
node runtime may read them the same way to stream them. Whatever the task
printed before it died, however it died, is there; nothing is left on the node.

Why memfds: a pair of ``O_TMPFILE`` files on this machine's ext4 cost ~8 µs of
CPU alone and ~40 µs with the two zygotes making them at once (the file
system's orphan list and journal), a pair of memfds ~3.5 µs either way. Their
pages are memory: the sampler keeps them bounded by punching out what lies
past ``CAPTURE_MAX`` (``trim_capture``), so a task that prints gigabytes holds
~16 MiB plus what it writes in one sampling period; with a memory cgroup slot
they are charged to the task and taken off its own memory as captured output.
Where memfds are refused, files made and unlinked in the zygote's directory
serve instead.
"""

from __future__ import annotations

import ctypes
import os
import stat  # already imported by os
import time

from loadmaster.node.process.protocol import CAPTURE_MAX

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

    from loadmaster.node.measure.cgroup_slots import Slot
    from loadmaster.node.process.protocol import CommandSpec, RunOrder


class Running:
    """One running task attempt, as the zygote tracks it."""

    __slots__ = (
        "baseline", "capture", "child_msg", "command", "deadline", "execd", "exhausted", "extra", "gpu_peak", "kill_at",
        "limit", "max_procs", "next_sample", "order", "period", "pid", "pre_exec_hwm", "sampled_disk",
        "sampled_own", "sampled_peak", "sandbox_dirs", "slot", "start", "start_seen", "start_wall", "used",
    )

    def __init__(self, *, order: RunOrder, pid: int, start: float, start_wall: float,
                 slot: Slot | None, baseline: int, next_sample: float, period: float,
                 deadline: float | None, command: CommandSpec | None, sandbox_dirs: Any = None) -> None:
        self.order = order
        self.pid = pid
        self.start = start
        self.start_wall = start_wall
        self.slot = slot
        self.baseline = baseline
        self.next_sample = next_sample
        self.period = period
        self.deadline = deadline
        self.command = command
        self.sandbox_dirs = sandbox_dirs
        self.capture: tuple[int, int] | None = None  # a function's stdout and stderr files
        self.child_msg: tuple[Any, ...] | None = None
        self.pre_exec_hwm = 0
        self.start_seen = False  # the task process's report from before user code has come
        self.execd = False  # a command's process has exec'd (its close-on-exec pipe closed)
        self.sampled_peak = 0
        self.sampled_own = 0
        self.sampled_disk = 0
        self.max_procs = 1
        self.exhausted: str | None = None
        self.limit = 0.0
        self.used = 0.0
        self.kill_at: float | None = None
        self.extra: dict[str, object] = {}
        self.gpu_peak = -1  # GPU memory sampled through NVML (-1: none seen)


class Unusable:
    """A function the zygote cannot run (its bytes did not unpickle), cached as such."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def capture_files(directory: str, task_id: int = 0) -> tuple[tuple[int, int], bool]:
    """Two fds for a function task's stdout and stderr, and whether they are memfds.

    Named ``loadmaster-out-ID`` and ``loadmaster-err-ID`` after the task: the
    node runtime finds a running task's capture by that name among this
    process's fds, to stream it (``node/outputs.py``).
    """
    try:
        out = os.memfd_create(f"loadmaster-out-{task_id}", os.MFD_CLOEXEC)
    except OSError:
        return (_named_then_unlinked(directory, f"out-{task_id}"),
                _named_then_unlinked(directory, f"err-{task_id}")), False
    try:
        return (out, os.memfd_create(f"loadmaster-err-{task_id}", os.MFD_CLOEXEC)), True
    except BaseException:
        os.close(out)
        raise


def _named_then_unlinked(directory: str, what: str) -> int:
    path = os.path.join(directory, f"loadmaster-{what}-{os.getpid()}-{time.monotonic_ns()}")
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(path)
    return fd


FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
TRIM_FROM = (CAPTURE_MAX + 1 + 4095) & ~4095  # the first page past what is read
_fallocate: Any = None


def trim_capture(fd: int) -> None:
    """Free the pages of a capture memfd past ``TRIM_FROM`` (never read); writes go on."""
    global _fallocate
    size = os.lseek(fd, 0, os.SEEK_END)
    if size <= TRIM_FROM:
        return
    if _fallocate is None:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
        fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
        _fallocate = fallocate
    _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, TRIM_FROM, size - TRIM_FROM)


CAPTURE_INLINE = 1 << 20  # bytes of a function's stdout and stderr together sent in its Done


def capture_size(fd: int) -> int:
    """Bytes written to a capture file (0 if it cannot be told)."""
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        return 0


def read_capture(fd: int, size: int = -1) -> bytes:
    """Up to ``CAPTURE_MAX`` + 1 bytes of a capture file of ``size`` bytes (-1: not known yet)."""
    try:
        if size < 0:
            size = os.lseek(fd, 0, os.SEEK_END)  # the size, without an os.stat_result per call
        return os.pread(fd, min(size, CAPTURE_MAX + 1), 0) if size else b""
    except OSError:
        return b""


def read_memfd(fd: int) -> bytes | None:
    """Read the whole of a regular file passed by a task (its large result); None if it is not one.

    Only ``fstat`` and ``pread`` at offsets: a FIFO, socket or device passed
    instead could block or have side effects, so anything but a regular file
    is refused.
    """
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        chunks = []
        pos = 0
        while pos < st.st_size:
            chunk = os.pread(fd, min(st.st_size - pos, 1 << 24), pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
