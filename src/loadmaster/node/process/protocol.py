"""Messages between the client and a zygote, and between a task process and its zygote.

Imported by the client and by the zygote, so it stays tiny (stdlib only).

Client -> zygote (length-prefixed pickles on a pipe), as tuples:
    ("run", fields)          fork a task: ``RunOrder.fields()``
    ("then", after, fields)  fork a task as soon as task ``after`` has ended (at
                             once if it already has): the client hands the next
                             of a stream of short tasks ahead, on what ``after``
                             holds, so the zygote need not wait for a round trip
    ("kill", task_id)        stop a task's whole tree (SIGTERM, grace, SIGKILL)
    ("release", task_id)     close a finished task's large capture files, which
                             the zygote held for the client to read through /proc
                             (its Done's ``extra["capture_fds"]``)
    ("exit",)                finish running tasks, then exit

Zygote -> client (same framing):
    ("ready", ZygoteInfo)    sent once after start-up
    ("done", fields)         one finished task attempt: ``Done.fields()``
    ("back", task_id)        an order handed ahead that waited too long behind its
                             task; it was not started (the client queues it again)

The client never blocks writing to a zygote (orders the pipe does not take wait
in ``ZygoteClient.outbox`` until the engine's select finds it writable): the
zygote writes its reports with blocking writes, and both blocking at once (an
order of megabytes against a report that fills the other pipe) deadlocked.

``RunOrder`` and ``Done``, sent once per task, travel as plain tuples of their
fields in ``__init__`` order and are rebuilt with ``Cls(*fields)``: pickling
the objects themselves ran Python-level ``__getstate__``/``__setstate__`` on
both sides, and in the zygote every page that code touches after a fork is a
copy-on-write fault (~50-130 µs per task here).

Task process -> zygote: one datagram on a SOCK_SEQPACKET socket (atomic, so
many children can share it), built by :func:`child_report` and read by
:func:`read_child_report`. A task process runs user code, so everything in it
is hostile input to the zygote: the datagram is a fixed binary header
(``CHILD_HDR``: numbers only), a few UTF-8 texts (the sandbox's report) and
the result's bytes, which the zygote forwards to the client without looking
inside. Nothing in it is unpickled, evaluated, opened as a path or unlinked
by the zygote. A result too big for a datagram travels as a memfd passed with
``SCM_RIGHTS`` (the zygote only ``pread``s a regular file it is handed); the
zygote takes a datagram only from the task's own process (``SCM_CREDENTIALS``
pid), so a task cannot speak for another task or outlive its own.

The message classes are plain slotted classes rather than dataclasses: this
module is imported by the zygote, and ``dataclasses`` (through ``inspect``)
would add ~3 MB to it, which every fork pays for.
"""

from __future__ import annotations

import _pickle as pickle  # the C pickler alone: pickle.py pulls in re and enum (~0.7 MiB per fork)
import os
import struct

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

_HDR = struct.Struct("!I")

PICKLE_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL of Python 3.8-3.13 (_pickle does not export it)

# What one read() of a pipe between client and zygote asks for: a pipe holds 64 KiB.
# os.read allocates the whole size before it reads; from glibc's mmap threshold
# (128 KiB) up, that is an mmap, an mremap and a munmap per read (~20 µs here).
READ_CHUNK = 1 << 16

# Bytes of a function task's stdout and of its stderr the zygote sends back (each); one
# more is read, so that the node runtime can say the output was cut (orders.OUTPUT_MAX).
CAPTURE_MAX = 16 << 20

# A datagram larger than this goes through a file (unix socket buffers are ~200 KiB).
DATAGRAM_MAX = 96 * 1024

KIND_FUNCTION = 0
KIND_COMMAND = 1

STATUS_OK = 0  # payload: cloudpickled result
STATUS_RAISED = 1  # payload: cloudpickled (exception, formatted traceback) or text
STATUS_EXEC = 2  # command: sent just before exec; peak_self = the process's VmHWM then
STATUS_BROKEN = 3  # payload: text; the task process failed outside user code
STATUS_STARTED = 4  # a sandboxed function task, before user code: its sandbox report

# The task process's report header: task id, status, its own peak, sandbox flags
# (BOX_*; 0 = no sandbox report), Landlock ABI, notes count, texts length, and
# whether the payload is in the memfd passed along rather than in the datagram,
# the sandbox's process-count limit and /tmp size limit (-1: none), and how many of
# the texts are the top-level modules the function's run imported (deps/: learned
# dependencies).
CHILD_HDR = struct.Struct("=qiqIiIIBqqI")
IMPORTED_MAX = 32  # names of imported modules kept per report (more are dropped)
IMPORTED_NAME_MAX = 100  # characters of one name
_CHILD_HDR_PACK = CHILD_HDR.pack
BOX_ENABLED = 1
BOX_PRIVATE_TMP = 2
BOX_FS_RULES = 4
BOX_NETWORK_RULES = 8
BOX_SCOPED = 16
BOX_PRESENT = 32
BOX_CAPS_DROPPED = 64
BOX_NET_NAMESPACE = 128
BOX_READ_ONLY_VIEW = 256
BOX_UNIX_SOCKETS = 512
_BOX_FLAGS = (("enabled", BOX_ENABLED), ("private_tmp", BOX_PRIVATE_TMP), ("fs_rules", BOX_FS_RULES),
              ("network_rules", BOX_NETWORK_RULES), ("scoped", BOX_SCOPED), ("caps_dropped", BOX_CAPS_DROPPED),
              ("net_namespace", BOX_NET_NAMESPACE), ("read_only_view", BOX_READ_ONLY_VIEW),
              ("unix_sockets", BOX_UNIX_SOCKETS))


class _Message:
    """Base of the slotted message classes: pickled as a tuple of their fields, shown with them."""

    __slots__: tuple[str, ...] = ()

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for n, v in zip(self.__slots__, state, strict=True):
            setattr(self, n, v)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"


class RunOrder(_Message):
    """Everything a zygote needs to fork one task attempt."""

    __slots__ = (
        "disk_limit",
        "fn_bytes",
        "fn_key",
        "gpu_ids",
        "kind",
        "memory_limit",
        "payload",
        "sandbox",
        "task_id",
        "threads",
        "wall_limit",
    )

    task_id: int
    kind: int
    fn_key: int
    fn_bytes: bytes
    payload: bytes
    memory_limit: int | None
    disk_limit: int | None
    wall_limit: float | None
    gpu_ids: tuple[str, ...]
    sandbox: tuple[Any, tuple[str, ...], tuple[str, ...]] | None
    threads: int  # the thread-count variables' value for the task: its cores, rounded up

    def fields(self) -> tuple[Any, ...]:
        """The wire form: the fields in ``__init__`` order (``RunOrder(*fields)`` rebuilds it)."""
        return (self.task_id, self.kind, self.fn_key, self.fn_bytes, self.payload, self.memory_limit,
                self.disk_limit, self.wall_limit, self.gpu_ids, self.sandbox, self.threads)

    def __init__(
        self,
        task_id: int,
        kind: int,
        fn_key: int,
        fn_bytes: bytes,
        payload: bytes,
        memory_limit: int | None,
        disk_limit: int | None,
        wall_limit: float | None,
        gpu_ids: tuple[str, ...] = (),
        sandbox: tuple[Any, tuple[str, ...], tuple[str, ...]] | None = None,
        threads: int = 1,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.fn_key = fn_key
        self.fn_bytes = fn_bytes
        self.payload = payload
        self.memory_limit = memory_limit
        self.disk_limit = disk_limit
        self.wall_limit = wall_limit
        self.gpu_ids = gpu_ids
        self.sandbox = sandbox
        self.threads = threads


class CommandSpec(_Message):
    """A command for a task process to exec."""

    __slots__ = ("argv", "cwd", "env", "stderr_path", "stdout_path")

    argv: list[str]
    cwd: str | None
    env: dict[str, str] | None
    stdout_path: str
    stderr_path: str

    def __init__(
        self, argv: list[str], cwd: str | None, env: dict[str, str] | None, stdout_path: str, stderr_path: str
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path


class ZygoteInfo(_Message):
    """What a zygote reports once it is ready."""

    __slots__ = ("fork_method", "method", "notes", "pid", "rss", "workdir")

    pid: int
    method: str
    fork_method: str
    rss: int
    workdir: str
    notes: tuple[str, ...]

    def __init__(
        self, pid: int, method: str, fork_method: str, rss: int, workdir: str, notes: tuple[str, ...] = ()
    ) -> None:
        self.pid = pid
        self.method = method
        self.fork_method = fork_method
        self.rss = rss
        self.workdir = workdir
        self.notes = notes


class Done(_Message):
    """The measured end of one task attempt."""

    __slots__ = (
        "cpu_time",
        "disk",
        "exhausted",
        "exit_status",
        "extra",
        "finished_at",
        "limit",
        "max_processes",
        "method",
        "payload",
        "peak_memory",
        "pid",
        "started_at",
        "status",
        "stderr",
        "stderr_path",
        "stdout",
        "stdout_path",
        "task_id",
        "used",
        "wall_time",
    )

    task_id: int
    pid: int
    exit_status: int
    status: int
    payload: bytes
    peak_memory: int
    method: str
    cpu_time: float
    wall_time: float
    disk: int
    max_processes: int
    started_at: float
    finished_at: float
    exhausted: str | None
    limit: float
    used: float
    stdout_path: str
    stderr_path: str
    extra: dict[str, Any] | None
    stdout: bytes  # a function task's captured output (a command's is in its files)
    stderr: bytes

    def fields(self) -> tuple[Any, ...]:
        """The wire form: the fields in ``__init__`` order (``Done(*fields)`` rebuilds it)."""
        return (self.task_id, self.pid, self.exit_status, self.status, self.payload, self.peak_memory,
                self.method, self.cpu_time, self.wall_time, self.disk, self.max_processes, self.started_at,
                self.finished_at, self.exhausted, self.limit, self.used, self.stdout_path, self.stderr_path,
                self.extra, self.stdout, self.stderr)

    def __init__(
        self,
        task_id: int,
        pid: int,
        exit_status: int,
        status: int,
        payload: bytes,
        peak_memory: int,
        method: str,
        cpu_time: float,
        wall_time: float,
        disk: int,
        max_processes: int,
        started_at: float,
        finished_at: float,
        exhausted: str | None,
        limit: float = 0,
        used: float = 0,
        stdout_path: str = "",
        stderr_path: str = "",
        extra: dict[str, Any] | None = None,
        stdout: bytes = b"",
        stderr: bytes = b"",
    ) -> None:
        self.task_id = task_id
        self.pid = pid
        self.exit_status = exit_status
        self.status = status
        self.payload = payload
        self.peak_memory = peak_memory
        self.method = method
        self.cpu_time = cpu_time
        self.wall_time = wall_time
        self.disk = disk
        self.max_processes = max_processes
        self.started_at = started_at
        self.finished_at = finished_at
        self.exhausted = exhausted
        self.limit = limit
        self.used = used
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.extra = extra
        self.stdout = stdout
        self.stderr = stderr


def child_report(task_id: int, status: int, peak: int, payload: bytes, box: dict[str, Any] | None = None,
                 denied: list[str] | tuple[str, ...] = (), in_fd: bool = False,
                 imported: list[str] | tuple[str, ...] = ()) -> bytes:
    """Encode a task process's report (see the module docstring): no pickle, numbers and texts.

    ``box`` is ``SandboxState.as_dict()`` (or None); ``denied`` the paths a
    sandbox refused; ``in_fd``: the payload travels in a passed memfd instead;
    ``imported``: top-level modules the run imported (at most ``IMPORTED_MAX``).
    """
    if box is None and not denied and not in_fd and not imported:
        # The unsandboxed result (most reports): the same bytes as _encode_report's,
        # built with the least code. It runs in the task process, where each page the
        # code touches is a copy-on-write fault (~7 faults, ~25 µs per task less).
        return _CHILD_HDR_PACK(task_id, status, peak, *_PLAIN_TAIL) + payload
    return _encode_report(task_id, status, peak, payload, box, denied, in_fd, imported)


def _encode_report(task_id: int, status: int, peak: int, payload: bytes, box: dict[str, Any] | None,
                   denied: list[str] | tuple[str, ...], in_fd: bool, imported: list[str] | tuple[str, ...]
                   ) -> bytes:
    """:func:`child_report`'s general encoder."""
    flags = abi = 0
    texts: list[str] = []
    notes: list[str] = []
    if box is not None:
        flags = BOX_PRESENT
        for name, bit in _BOX_FLAGS:
            if box.get(name):
                flags |= bit
        abi = int(box.get("landlock_abi") or 0)
        notes = [str(n) for n in box.get("notes") or ()]
        texts = [str(box.get("namespaces") or ""), str(box.get("workdir") or ""), str(box.get("tmpdir") or "")]
    texts += notes
    imported = imported[:IMPORTED_MAX]
    texts += imported
    texts += [str(d) for d in denied]
    text = "\0".join(texts).encode("utf-8", "replace") if texts else b""
    nproc = box.get("max_processes") if box is not None else None
    tmp_size = box.get("tmp_size") if box is not None else None
    head = CHILD_HDR.pack(task_id, status, peak, flags, abi, len(notes), len(text), 1 if in_fd else 0,
                          -1 if nproc is None else int(nproc), -1 if tmp_size is None else int(tmp_size),
                          len(imported))
    return head + text + (b"" if in_fd else payload)


# The header fields after task id, status and peak of a report with no sandbox part,
# no texts and the payload inline (child_report's plain form), as the encoder makes them.
_PLAIN_TAIL = CHILD_HDR.unpack_from(_encode_report(0, 0, 0, b"", None, (), False, ()))[3:]


def read_child_report(data: bytes) -> tuple[int, int, int, bytes, dict[str, Any] | None, bool]:
    """Decode a task process's datagram: ``(task_id, status, peak, payload, extra, payload_in_fd)``.

    Runs in the zygote on hostile bytes: only ``struct`` and UTF-8 decoding.

    Raises:
        ValueError: the datagram is shorter than its header says (a forged or broken report).
    """
    if len(data) < CHILD_HDR.size:
        raise ValueError(f"a task report of {len(data)} bytes (the header alone is {CHILD_HDR.size})")
    task_id, status, peak, flags, abi, n_notes, n_text, in_fd, nproc, tmp_size, n_imported = \
        CHILD_HDR.unpack_from(data)
    start = CHILD_HDR.size
    if n_text > len(data) - start:
        raise ValueError("a task report whose texts run past its end")
    raw = bytes(data[start:start + n_text])
    payload = bytes(data[start + n_text:])
    texts = raw.decode("utf-8", "replace").split("\0") if n_text else []
    extra: dict[str, Any] | None = None
    at = 0
    if flags & BOX_PRESENT:
        if len(texts) < 3 + n_notes:
            raise ValueError("a task report with fewer texts than its sandbox part needs")
        box: dict[str, Any] = {name: bool(flags & bit) for name, bit in _BOX_FLAGS}
        box.update(namespaces=texts[0], workdir=texts[1], tmpdir=texts[2], landlock_abi=abi,
                   notes=texts[3:3 + n_notes], max_processes=None if nproc < 0 else nproc,
                   tmp_size=None if tmp_size < 0 else tmp_size)
        extra = {"sandbox": box}
        at = 3 + n_notes
    if n_imported:
        if n_imported > IMPORTED_MAX or len(texts) < at + n_imported:
            raise ValueError("a task report with more imported modules than it may carry")
        # Names only (hostile input): an identifier of bounded length, or it is dropped.
        names = [t for t in texts[at:at + n_imported] if len(t) <= IMPORTED_NAME_MAX and t.isidentifier()]
        at += n_imported
        if names:
            extra = extra if extra is not None else {}
            extra["imported"] = names
    if flags & BOX_PRESENT:
        denied = texts[at:]
        if denied:
            assert extra is not None
            extra["sandbox_denied"] = denied
    return task_id, status, max(0, peak), payload, extra, bool(in_fd)


def frame(msg: object) -> bytes:
    """Return ``msg`` pickled with its length prefix."""
    data = pickle.dumps(msg, protocol=PICKLE_PROTOCOL)
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
