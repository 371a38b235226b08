"""Messages between the client and a zygote, and between a task process and its zygote.

Imported by the client and by the zygote, so it stays tiny (stdlib only).

Client -> zygote (length-prefixed pickles on a pipe), as tuples:
    ("run", RunOrder)        fork a task
    ("kill", task_id)        stop a task's whole tree (SIGTERM, grace, SIGKILL)
    ("exit",)                finish running tasks, then exit

Zygote -> client (same framing):
    ("ready", ZygoteInfo)    sent once after start-up
    ("done", Done)           one finished task (all attempts' facts for this attempt)

Task process -> zygote: one datagram on a SOCK_SEQPACKET socket (atomic, so
many children can share it): ``ChildMessage``. A result too big for a
datagram is written to a file whose path the message carries.
"""

from __future__ import annotations

import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

_HDR = struct.Struct("!I")

# A datagram larger than this goes through a file (unix socket buffers are ~200 KiB).
DATAGRAM_MAX = 96 * 1024

KIND_FUNCTION = 0
KIND_COMMAND = 1

STATUS_OK = 0        # payload: cloudpickled result
STATUS_RAISED = 1    # payload: cloudpickled (exception, formatted traceback) or text
STATUS_EXEC = 2      # command: sent just before exec; peak_self = the process's VmHWM then
STATUS_BROKEN = 3    # payload: text; the task process failed outside user code


@dataclass(slots=True)
class RunOrder:
    """Everything a zygote needs to fork one task attempt."""

    task_id: int
    kind: int
    fn_key: int
    fn_bytes: bytes            # non-empty the first time a zygote sees fn_key
    payload: bytes             # cloudpickled (args, kwargs), or pickled CommandSpec
    memory_limit: int | None   # bytes the task may add to the node
    disk_limit: int | None     # bytes it may write
    wall_limit: float | None   # seconds
    gpu_ids: tuple[str, ...] = ()
    # (Sandbox policy, inputs, outputs) when the task runs sandboxed, else None
    sandbox: tuple[Any, tuple[str, ...], tuple[str, ...]] | None = None


@dataclass(slots=True)
class CommandSpec:
    """A command for a task process to exec."""

    argv: list[str]
    cwd: str | None
    env: dict[str, str] | None
    stdout_path: str
    stderr_path: str


@dataclass(slots=True)
class ZygoteInfo:
    """What a zygote reports once it is ready."""

    pid: int
    method: str            # MeasureMethod value in force
    fork_method: str       # "libc" or "os"
    rss: int               # the zygote's own resident bytes after preloading
    workdir: str
    notes: tuple[str, ...] = ()


@dataclass(slots=True)
class Done:
    """The measured end of one task attempt."""

    task_id: int
    pid: int
    exit_status: int           # exit code, or -signal
    status: int                # STATUS_* of the child's message, or -1 if none came
    payload: bytes             # as the child sent it (or read from its spill file)
    peak_memory: int
    method: str
    cpu_time: float
    wall_time: float
    disk: int
    max_processes: int
    started_at: float
    finished_at: float
    exhausted: str | None      # "memory", "disk", "wall_time" or None
    limit: float = 0
    used: float = 0
    stdout_path: str = ""
    stderr_path: str = ""
    extra: dict[str, object] | None = None


def frame(msg: object) -> bytes:
    """Return ``msg`` pickled with its length prefix."""
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HDR.pack(len(data)) + data


class FrameReader:
    """Splits a byte stream back into messages. Not thread-safe; one per stream."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[object]:
        """Add bytes; return every message now complete."""
        buf = self._buf
        buf += data
        out: list[object] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _HDR.unpack_from(buf, pos)
            if n - pos - 4 < size:
                break
            out.append(pickle.loads(memoryview(buf)[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos:
            del buf[:pos]
        return out


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to a blocking fd."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
