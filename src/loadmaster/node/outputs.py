"""Tasks' stdout and stderr off the node runtime's loop: large captures read, running output streamed.

Runs in the node runtime's process (the client's engine thread for the local
backend, the host process beside a Dask worker), on one thread of its own,
started on first use. The runtime's loop hands it work and never waits on it:

* **late reads**: a finished task whose output is large (a command's files
  past ``OUTPUT_INLINE``, a function's capture the zygote held because it was
  past ``running.CAPTURE_INLINE``) or that is streamed: the read runs here
  and its :class:`~loadmaster.node.orders.Done` comes out of :meth:`events`
  (the runtime's ``poll`` is woken);
* **streaming**: for an order with ``stream``, the growing output is read
  every ``STREAM_PERIOD_S`` while the task runs, and each stream's new bytes
  go up as :class:`~loadmaster.node.orders.Output` events, at most
  ``CHUNK_MAX`` bytes each and ``STREAM_MAX`` per stream and attempt; the
  rest of what was captured (from the ``Done``'s capture) follows in events
  marked ``final``, then the ``Done``. A streamed attempt's events thus carry
  exactly what its report keeps, up to ``STREAM_MAX``, in order.

Where the bytes are: a command's output files (paths the runtime chose); a
function's two capture memfds, named ``loadmaster-out-ID``/``loadmaster-err-ID``
by the zygote (``node/process/running.py``), opened here through
``/proc/<zygote pid>/fd`` (only the zygote's own fds are looked at, never a
task's, so a task cannot pass off a file of its own as another's output).

A task's output is hostile: only regular files are opened (``O_NONBLOCK``,
checked with ``fstat``), read with ``pread`` at offsets within the bounds
above, never decoded or interpreted here (the client decodes with
``errors="replace"``). A task that truncates its own capture streams nothing
more; its report keeps what is there at its end.

Does not cover: what the client does with the events (``loadmaster/output.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loadmaster.node.orders import Done, NodeEvent, Output

log = logging.getLogger("loadmaster.node.outputs")

STREAM_PERIOD_S = 0.1   # how often a streamed task's growing output is looked at
CHUNK_MAX = 64 << 10    # bytes of one stream in one Output event
TICK_MAX = 4 * CHUNK_MAX  # bytes of one stream read per look (what is left waits for the next)
STREAM_MAX = 4 << 20    # bytes of one stream of one attempt streamed; its report keeps up to OUTPUT_MAX
STREAMS = ("stdout", "stderr")

Job = Callable[[], tuple[Done, bytes, bytes]]
"""A late read: the task's ``Done`` and the raw bytes of its stdout and stderr (capped)."""


def open_regular(path: str) -> int:
    """Open ``path`` for reading if it is a regular file; -1 if not (or not there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return -1
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return -1


def _is_capture(link: str, task_id: int, which: str) -> bool:
    """Whether ``link`` (a ``/proc`` fd's target) names task ``task_id``'s ``which`` capture."""
    if link == f"/memfd:loadmaster-{which}-{task_id} (deleted)":
        return True
    # where memfds are refused: a file made and unlinked in the zygote's directory
    base = os.path.basename(link)
    return base.startswith(f"loadmaster-{which}-{task_id}-") and base.endswith(" (deleted)")


def open_zygote_fd(zygote_pid: int, fd: int, task_id: int, which: str) -> int:
    """Open the zygote's fd ``fd`` through ``/proc`` if it is task ``task_id``'s ``which`` capture; else -1."""
    path = f"/proc/{zygote_pid}/fd/{fd}"
    try:
        link = os.readlink(path)
    except OSError:
        return -1
    if not _is_capture(link, task_id, which):
        return -1
    new = open_regular(path)
    if new >= 0:
        try:
            same = os.readlink(path) == link  # the fd was not closed and reused between the two
        except OSError:
            same = False
        if not same:
            os.close(new)
            return -1
    return new


def find_captures(zygote_pid: int, task_id: int) -> tuple[int, int]:
    """Open a running function task's two capture files among the zygote's fds ((-1, -1): not there)."""
    found = [-1, -1]
    try:
        names = os.listdir(f"/proc/{zygote_pid}/fd")
    except OSError:
        return -1, -1
    for name in names:
        try:
            link = os.readlink(f"/proc/{zygote_pid}/fd/{name}")
        except OSError:
            continue
        for i, which in enumerate(("out", "err")):
            if found[i] < 0 and _is_capture(link, task_id, which):
                found[i] = open_zygote_fd(zygote_pid, int(name), task_id, which)
    return found[0], found[1]


def pread_all(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from the start of ``fd`` (a regular file)."""
    chunks, pos = [], 0
    while pos < size:
        chunk = os.pread(fd, min(size - pos, 1 << 22), pos)
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


@dataclass(slots=True)
class _Stream:
    path: str = ""  # a command's output file ("": a function's capture, found by name)
    fd: int = -1
    offset: int = 0  # bytes streamed so far
    stopped: bool = False  # STREAM_MAX reached


@dataclass(slots=True)
class _Watch:
    task_id: int
    attempt: int
    zygote_pid: int
    streams: tuple[_Stream, _Stream] = field(default_factory=lambda: (_Stream(), _Stream()))

    def close(self) -> None:
        for s in self.streams:
            if s.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(s.fd)
                s.fd = -1


class OutputReader:
    """The node runtime's output thread (see the module's docstring).

    Args:
        node: the node's name (in the events).
        wake: makes the runtime's ``poll`` return (called when events are ready).
    """

    def __init__(self, node: str, wake: Callable[[], None]) -> None:
        self.node = node
        self._wake = wake
        self._cond = threading.Condition()
        self._jobs: list[tuple[int, Job, Done]] = []
        self._watches: dict[int, _Watch] = {}
        self._ready: list[NodeEvent] = []
        self._thread: threading.Thread | None = None
        self._closing = False

    # ── the runtime's thread ──────────────────────────────────────────────────
    def watch(self, task_id: int, attempt: int, zygote_pid: int, paths: tuple[str, str] | None = None) -> None:
        """Stream task ``task_id``'s output while it runs (``paths``: a command's files)."""
        w = _Watch(task_id, attempt, zygote_pid)
        if paths is not None:
            w.streams[0].path, w.streams[1].path = paths
        with self._cond:
            old = self._watches.pop(task_id, None)
            self._watches[task_id] = w
            self._start()
            self._cond.notify()
        if old is not None:
            old.close()

    def watched(self, task_id: int) -> bool:
        """Whether task ``task_id`` is streamed (its ``Done`` must then come through :meth:`later`)."""
        return task_id in self._watches

    def forget(self, task_id: int) -> None:
        """Stop streaming a task that will not end here (lost, handed back, cancelled before it ran)."""
        with self._cond:
            w = self._watches.pop(task_id, None)
        if w is not None:
            w.close()

    def later(self, task_id: int, job: Job, fallback: Done) -> None:
        """Run ``job`` on the output thread; its ``Done`` comes from :meth:`events`.

        A streamed task's last output events come just before it. ``fallback``:
        the ``Done`` sent, without output, should ``job`` fail.
        """
        with self._cond:
            self._jobs.append((task_id, job, fallback))
            self._start()
            self._cond.notify()

    def events(self) -> list[NodeEvent]:
        """The events ready since the last call, in order."""
        if not self._ready:
            return []
        with self._cond:
            out, self._ready = self._ready, []
        return out

    def close(self) -> None:
        """Finish the late reads handed over, then stop the thread. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        for w in self._watches.values():
            w.close()
        self._watches.clear()

    def _start(self) -> None:
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name="loadmaster-output", daemon=True)
            self._thread.start()

    # ── the output thread ─────────────────────────────────────────────────────
    def _run(self) -> None:
        next_tick = 0.0
        cond = self._cond
        while True:
            with cond:
                while not (self._jobs or self._closing):
                    if not self._watches:
                        cond.wait()
                        continue
                    left = next_tick - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
                if self._closing and not self._jobs:
                    return
                jobs, self._jobs = self._jobs, []
                watches = list(self._watches.values())
            out: list[NodeEvent] = []
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + STREAM_PERIOD_S
                for w in watches:
                    self._tick(w, out)
            for task_id, job, fallback in jobs:
                self._finish(task_id, job, fallback, out)
            if out:
                with cond:
                    self._ready.extend(out)
                self._wake()

    def _finish(self, task_id: int, job: Job, fallback: Done, out: list[NodeEvent]) -> None:
        try:
            done, raw_out, raw_err = job()
        except Exception:  # a task's Done must come, even without its output
            log.exception("could not read the output of task %d", task_id)
            done, raw_out, raw_err = fallback, b"", b""
        with self._cond:
            w = self._watches.pop(task_id, None)
        if w is not None:
            if w.attempt == done.attempt or not done.attempt:
                for i, raw in enumerate((raw_out, raw_err)):
                    self._emit(w, i, raw[w.streams[i].offset:], out, final=True)
            w.close()
        out.append(done)

    def _tick(self, w: _Watch, out: list[NodeEvent]) -> None:
        """Stream what task ``w`` wrote since the last look."""
        if w.task_id not in self._watches:
            return
        streams = w.streams
        if streams[0].fd < 0 or streams[1].fd < 0:
            if streams[0].path:
                for s in streams:
                    if s.fd < 0:
                        s.fd = open_regular(s.path)
            else:
                fds = find_captures(w.zygote_pid, w.task_id)
                for s, fd in zip(streams, fds, strict=True):
                    if s.fd < 0:
                        s.fd = fd
                    elif fd >= 0:
                        os.close(fd)
        for i, s in enumerate(streams):
            if s.fd < 0 or s.stopped:
                continue
            try:
                size = os.lseek(s.fd, 0, os.SEEK_END)
                if size <= s.offset:
                    continue
                data = os.pread(s.fd, min(size - s.offset, TICK_MAX, STREAM_MAX - s.offset), s.offset)
            except OSError:
                continue
            self._emit(w, i, data, out)

    def _emit(self, w: _Watch, i: int, data: bytes, out: list[NodeEvent], final: bool = False) -> None:
        """Output events for ``data`` (new bytes of stream ``i``), within ``STREAM_MAX``.

        With ``final``, the stream's last event is marked so (exactly one is).
        """
        s = w.streams[i]
        name = STREAMS[i]
        data = b"" if s.stopped else data[:STREAM_MAX - s.offset]
        s.offset += len(data)
        pieces = [data[k:k + CHUNK_MAX] for k in range(0, len(data), CHUNK_MAX)]
        if s.offset >= STREAM_MAX and not s.stopped:
            s.stopped = True
            pieces.append(f"\n[loadmaster: {name} streamed up to {STREAM_MAX >> 20} MiB; "
                          "the task's report keeps up to 16 MiB]\n".encode())
        if final and not pieces:
            pieces.append(b"")
        for k, piece in enumerate(pieces):
            out.append(Output(self.node, w.task_id, w.attempt, name, piece, final and k == len(pieces) - 1))
