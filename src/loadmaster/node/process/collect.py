"""The zygote's half of a task's end: its process's report taken, its Done built.

A mixin of :class:`~loadmaster.node.process.zygote.Zygote` (the loop and
forking are there): reading the task processes' datagrams (hostile bytes:
numbers, texts, an fd; see ``protocol.py``), and when a task's process has
been reaped, its measurement (peaks, the cgroup slot's charge and OOM kills,
processes it left behind, the sandbox's leftovers, its captured output) as one
``Done`` frame in the outbox.
"""

from __future__ import annotations

import _signal as signal  # signal.py pulls in enum
import _socket
import os
import sys
import time

from loadmaster.node.process.protocol import STATUS_BROKEN, STATUS_EXEC, STATUS_STARTED, Done, frame, read_child_report
from loadmaster.node.process.running import CAPTURE_INLINE, capture_size, read_capture, read_memfd

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

    from loadmaster.node.measure.cgroup_slots import SlotPool
    from loadmaster.node.process.protocol import RunOrder
    from loadmaster.node.process.running import Running

WATCH_DATAGRAMS_FROM = 2  # running tasks from which children's datagrams wake the loop
PEEK_SIZE = _socket.MSG_PEEK | _socket.MSG_TRUNC  # recv_into then returns the datagram's whole size
# Room for the sender's credentials and one passed fd: more fds than that are dropped by the kernel.
ANCILLARY_SIZE = _socket.CMSG_SPACE(12) + _socket.CMSG_SPACE(4)


class Collecting:
    """Taking task processes' reports and building each task's ``Done`` (mixed into ``Zygote``)."""

    if TYPE_CHECKING:  # the Zygote's, used here
        running: dict[int, Running]
        by_task: dict[int, int]
        outbox: list[bytes]
        sock_r: Any
        peek: bytearray
        pool: SlotPool | None
        ns_pool: Any
        method: str
        subreaper: bool
        datagrams_watched: bool
        forkers: dict[int, Any]
        held: dict[int, tuple[int, int]]

        def _watch_datagrams(self, on: bool) -> None: ...
        def _sandbox(self) -> Any: ...
        def _capture_in_memory(self, r: Running) -> int: ...

    def _read_children(self, drain: bool = False) -> None:
        """Take one datagram (the loop's wake-up), or every queued one with ``drain``.

        Each datagram's size is peeked first and exactly that much received:
        ``recv`` allocates the size it is given before it reads, and a buffer
        as big as the largest datagram (megabytes) is, unless glibc's heap
        happens to have grown that far, an mmap, an mremap and a munmap per
        call (~20 µs here, against ~3 µs for the two calls).
        """
        sock = self.sock_r
        while True:
            try:
                size = sock.recv_into(self.peek, 1, PEEK_SIZE)
            except BlockingIOError:
                return
            data, anc, _flags, _addr = sock.recvmsg(max(size, 1), ANCILLARY_SIZE)
            self._child_message(data, anc)
            if not drain:
                return

    def _child_message(self, data: bytes, anc: list[tuple[int, int, bytes]]) -> None:
        """Take one task process's report; hostile bytes (see protocol.py): numbers, texts, an fd.

        Dropped unless the kernel says it came from the running task's own
        process: a task's children, a daemon it left behind or another task
        cannot speak for it. Every fd passed along is closed here.
        """
        sender = 0
        fds: list[int] = []
        for level, kind, blob in anc:
            if level != _socket.SOL_SOCKET:
                continue
            if kind == _socket.SCM_CREDENTIALS and len(blob) >= 4:
                sender = int.from_bytes(blob[:4], sys.byteorder, signed=True)
            elif kind == _socket.SCM_RIGHTS:
                fds.extend(int.from_bytes(blob[i:i + 4], sys.byteorder, signed=True)
                           for i in range(0, len(blob) - 3, 4))
        try:
            try:
                task_id, status, peak, payload, extra, in_fd = read_child_report(data)
            except ValueError:
                return
            pid = self.by_task.get(task_id)
            r = self.running.get(pid) if pid is not None else None
            if r is None or sender != r.pid:
                return
            if status in (STATUS_EXEC, STATUS_STARTED):
                # Sent once by the task process before any user code runs (before the
                # exec, or before the function is called when sandboxed): the sandbox
                # report is taken from it alone, so user code cannot rewrite it.
                if not r.start_seen and (r.command is not None or r.sandbox_dirs is not None):
                    r.start_seen = True
                    r.pre_exec_hwm = peak
                    if extra and "sandbox" in extra:
                        r.extra["sandbox"] = extra["sandbox"]
                return
            if r.child_msg is not None:
                return  # the first result counts; user code may send more, they are its own data
            if in_fd:
                passed = read_memfd(fds[0]) if fds else None
                if passed is None:
                    status, passed = STATUS_BROKEN, b"the task's large result came without a readable memfd"
                payload = passed
            if extra and extra.get("sandbox_denied"):
                r.extra["sandbox_denied"] = extra["sandbox_denied"]
            if extra and extra.get("imported"):
                r.extra["imported"] = extra["imported"]  # deps/: what the run imported
            r.child_msg = (status, payload, peak)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _finish(self, r: Running, status: int, ru: Any) -> None:
        if r.child_msg is None:
            self._read_children(drain=True)  # a child sends its datagram before it exits
        del self.running[r.pid]
        if self.datagrams_watched and len(self.running) < WATCH_DATAGRAMS_FROM:
            self._watch_datagrams(False)
        self.by_task.pop(r.order.task_id, None)
        now = time.monotonic()
        exit_status = os.waitstatus_to_exitcode(status)
        cpu = ru.ru_utime + ru.ru_stime
        disk = max(ru.ru_oublock * 512, r.sampled_disk)
        msg = r.child_msg
        # The task's own memory: high-water marks of its processes (kernel counters,
        # spikes included), sampled for descendants, and wait4's for the tree.
        peak = r.sampled_peak
        if msg is not None:
            peak = max(peak, msg[2])
        maxrss = ru.ru_maxrss * 1024
        if r.command is not None and maxrss > r.pre_exec_hwm + (1 << 20):
            peak = max(peak, maxrss)
        if r.slot is not None:
            # What the cgroup charged, page cache of files read and written included.
            # It bounds the task's own memory from above (pages that were charged before,
            # such as the zygote's, are not in it; the sum of marks can count pages shared
            # by several processes more than once), so the peak is the smaller.
            charged = r.slot.peak()
            if charged > peak + (1 << 20):
                # Shared memory (tmpfs files) is in no process's marks: what the slot holds
                # at the end, or held when sampled, counts.
                peak = max(peak, r.sampled_own, r.slot.own_now(self._capture_in_memory(r)))
            peak = min(peak, charged)
            r.extra["peak_charged"] = charged
            if r.slot.new_oom_kills():
                # The kernel kills only once it could reclaim nothing more: the charge
                # then is the task's own memory, and a task killed between two samples
                # (before it could report its marks) would otherwise show less.
                peak = charged
                if r.exhausted is None:
                    r.exhausted, r.limit, r.used = "memory", r.order.memory_limit or 0, charged
            leftovers = r.slot.procs()
            assert self.pool is not None
            if leftovers:
                if not r.slot.kill():  # cgroup.kill (v2) takes the whole tree at once
                    for p in leftovers:
                        try:
                            os.kill(p, signal.SIGKILL)
                        except OSError:
                            pass
                r.extra["stray_processes_killed"] = len(leftovers)
                if not self.pool.reuse:
                    self.pool.release(r.slot)  # removed once they are gone (sweep retries)
            else:
                self.pool.release(r.slot)
        elif self.subreaper:
            strays = self._orphans(r)
            if strays:
                r.extra["stray_processes_killed"] = strays
        if r.sandbox_dirs is not None:
            left = self._sandbox().collect(r.sandbox_dirs)
            if r.sandbox_dirs.slot is not None and self.ns_pool is not None:
                self.ns_pool.release(r.sandbox_dirs.slot)
            box = r.extra.setdefault("sandbox", {})
            if isinstance(box, dict):
                box["leftovers"] = left.as_dict()
            if left.forks_refused and left.peak_processes is not None and left.peak_processes > r.max_procs:
                r.max_procs = left.peak_processes  # it reached the pids cgroup's limit: sampling saw fewer
        if msg is None:
            status_code, payload = -1, b""
        else:
            status_code, payload = msg[0], msg[1]
        if r.gpu_peak >= 0:
            r.extra["peak_gpu_memory"] = r.gpu_peak
        out = err = b""
        if r.capture is not None:
            out_fd, err_fd = r.capture
            sizes = (capture_size(out_fd), capture_size(err_fd))
            if sizes[0] + sizes[1] > CAPTURE_INLINE:
                # Megabytes are not written down the pipe (the zygote would wait on the
                # client's loop to read them): the node runtime reads them through /proc
                # off its loop, then says "release" (node/outputs.py).
                old = self.held.pop(r.order.task_id, None)
                if old is not None:
                    os.close(old[0])
                    os.close(old[1])
                self.held[r.order.task_id] = (out_fd, err_fd)
                r.extra["capture_fds"] = [out_fd, err_fd, sizes[0], sizes[1]]
            else:
                out, err = read_capture(out_fd, sizes[0]), read_capture(err_fd, sizes[1])
                os.close(out_fd)
                os.close(err_fd)
        self.outbox.append(frame(("done", Done(
            task_id=r.order.task_id, pid=r.pid, exit_status=exit_status, status=status_code,
            payload=payload, peak_memory=peak, method=self.method, cpu_time=cpu,
            wall_time=now - r.start, disk=disk, max_processes=r.max_procs,
            started_at=r.start_wall, finished_at=r.start_wall + (now - r.start),
            exhausted=r.exhausted, limit=r.limit, used=r.used,
            stdout_path=r.command.stdout_path if r.command else "",
            stderr_path=r.command.stderr_path if r.command else "",
            extra=r.extra or None, stdout=out, stderr=err,
        ).fields())))

    def _orphans(self, r: Running) -> int:
        """Kill and reap the processes a finished task left that were reparented to us; return how many.

        They are the zygote's children that are no running task's process.
        While other tasks run, only those in ``r``'s namespace slot are known to
        be its own (the rest go when they are known: when no task runs).
        """
        try:
            with open(f"/proc/self/task/{os.getpid()}/children") as fh:
                kids = [int(p) for p in fh.read().split()]
        except OSError:
            return 0
        kids = [p for p in kids if p not in self.running and p not in self.forkers]  # forkers: slotforker.py
        if not kids:
            return 0
        if self.running:
            slot = r.sandbox_dirs.slot if r.sandbox_dirs is not None else None
            if slot is None:
                return 0
            ino = os.fstat(slot.mnt_fd).st_ino
            mine = []
            for p in kids:
                try:
                    if os.stat(f"/proc/{p}/ns/mnt").st_ino == ino:
                        mine.append(p)
                except OSError:
                    continue
            kids = mine
        for p in kids:
            try:
                os.kill(p, signal.SIGKILL)
                os.waitpid(p, 0)
            except OSError:
                pass
        return len(kids)

    def _fail_early(self, order: RunOrder, text: str, cancelled: bool = False) -> None:
        now = time.time()
        self.outbox.append(frame(("done", Done(
            task_id=order.task_id, pid=0, exit_status=0, status=STATUS_BROKEN,
            payload=text.encode(), peak_memory=0, method=self.method, cpu_time=0.0, wall_time=0.0,
            disk=0, max_processes=0, started_at=now, finished_at=now, exhausted=None,
            extra={"cancelled": True} if cancelled else None,
        ).fields())))
