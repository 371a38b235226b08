"""The zygote's watch over running tasks: sampling their trees, limits, deadlines, kills.

A mixin of :class:`~loadmaster.node.process.zygote.Zygote`. Each running task's
tree is looked at from ``FIRST_SAMPLE_S`` after its fork, the period doubling
up to the sampling period: high-water marks of its processes (what a memory
cgroup slot does not give), resident memory against its limit without a slot,
bytes written against its disk limit, its wall-time deadline, GPU memory
through NVML for a task holding GPUs. Only the offending task's tree is
killed (SIGTERM, ``KILL_GRACE_S``, SIGKILL for wall time and cancellation).
"""

from __future__ import annotations

import _signal as signal  # signal.py pulls in enum
import errno
import os
import time

from loadmaster.node.measure import procfs
from loadmaster.node.process.running import trim_capture

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

    from loadmaster.node.process.protocol import RunOrder
    from loadmaster.node.process.running import Running

FOLLOW_WAIT_S = 0.1      # an order handed ahead waits this long behind its task, then goes back
KILL_GRACE_S = 2.0       # SIGTERM → SIGKILL delay for wall-time and cancellation


class Sampling:
    """Sampling, limits, deadlines and cancels of running tasks (mixed into ``Zygote``)."""

    if TYPE_CHECKING:  # the Zygote's, used here
        running: dict[int, Running]
        by_task: dict[int, int]
        successors: dict[int, tuple[RunOrder, float, Any]]
        next_due: float
        sample_s: float
        follow_wait_s: float
        cmd_watched: bool
        capture_in_memory: bool

        def _listen(self, read: bool = True) -> None: ...
        def _hand_back(self, now: float) -> None: ...
        def _fail_early(self, order: RunOrder, text: str, cancelled: bool = False) -> None: ...

    def _tick(self) -> None:
        if not self.cmd_watched:
            self._listen()
        now = time.monotonic()
        due = now + 3600.0
        if self.successors:
            self._hand_back(now)
            for _order, since, _fn in self.successors.values():
                due = min(due, since + self.follow_wait_s)
        for r in list(self.running.values()):
            if now >= r.next_sample:
                self._sample(r, now)
                r.period = min(r.period * 2, self.sample_s)
                r.next_sample = now + r.period
            due = min(due, r.next_sample)
        self.next_due = due

    def _sample(self, r: Running, now: float) -> None:
        if r.kill_at is not None and now >= r.kill_at:
            self._kill_tree(r, signal.SIGKILL)
            r.kill_at = None
        if r.deadline is not None and now >= r.deadline and r.exhausted is None:
            r.exhausted, r.limit, r.used = "wall_time", r.order.wall_limit or 0, now - r.start
            self._kill_tree(r, signal.SIGTERM)
            r.kill_at = now + KILL_GRACE_S
        pids = r.slot.procs() if r.slot is not None else procfs.tree(r.pid)
        if not pids:
            return
        r.max_procs = max(r.max_procs, len(pids))
        order = r.order
        if r.capture is not None and self.capture_in_memory:
            trim_capture(r.capture[0])  # output past what is kept is freed as it comes
            trim_capture(r.capture[1])
        if order.gpu_ids:
            from loadmaster.node.measure import gpu  # imported on the first GPU task only

            on_gpu = gpu.used(order.gpu_ids, set(pids))
            if on_gpu is not None:
                r.gpu_peak = max(r.gpu_peak, on_gpu)
        total_hwm = total_rss = 0
        for p in pids:
            if p == r.pid and r.command is not None and not r.execd:
                continue  # still the forked Python child, not yet the command
            hwm, rss = procfs.memory_marks(p)
            if p == r.pid:
                if r.baseline < 0:
                    r.baseline = procfs.self_rss()
                hwm, rss = max(0, hwm - r.baseline), max(0, rss - r.baseline)
            total_hwm += hwm
            total_rss += rss
        r.sampled_peak = max(r.sampled_peak, total_hwm)
        if r.slot is not None:
            r.sampled_own = max(r.sampled_own, r.slot.own_now(self._capture_in_memory(r)))
        elif order.memory_limit is not None and total_rss > order.memory_limit and r.exhausted is None:
            r.exhausted, r.limit, r.used = "memory", order.memory_limit, total_rss
            self._kill_tree(r, signal.SIGKILL)
        if order.disk_limit is not None:
            written = sum(procfs.write_bytes(p) for p in pids)
            r.sampled_disk = max(r.sampled_disk, written)
            if written > order.disk_limit and r.exhausted is None:
                r.exhausted, r.limit, r.used = "disk", order.disk_limit, written
                self._kill_tree(r, signal.SIGKILL)

    def _capture_in_memory(self, r: Running) -> int:
        """Bytes of a task's captured stdout and stderr that the slot holds as shared
        memory (their directory is a tmpfs): loadmaster's files, not the task's memory."""
        if r.capture is not None:
            if not self.capture_in_memory:
                return 0
            return sum(os.fstat(fd).st_blocks * 512 for fd in r.capture)
        cmd = r.command
        if cmd is None or not procfs.in_memory(os.path.dirname(cmd.stdout_path)):
            return 0
        return procfs.allocated(cmd.stdout_path) + procfs.allocated(cmd.stderr_path)

    def _kill_tree(self, r: Running, sig: int) -> None:
        pids = set(r.slot.procs() if r.slot is not None else procfs.tree(r.pid))
        try:
            os.killpg(r.pid, sig)
        except OSError:
            pass
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError as exc:
                if exc.errno not in (errno.ESRCH, errno.EPERM):
                    raise

    def _cancel(self, task_id: int) -> None:
        pid = self.by_task.get(task_id)
        r = self.running.get(pid) if pid is not None else None
        if r is None:
            for after, (order, _since, _fn) in list(self.successors.items()):
                if order.task_id == task_id:  # still waiting behind another: it never starts
                    del self.successors[after]
                    self._fail_early(order, "cancelled before it started", cancelled=True)
            return
        r.extra["cancelled"] = True
        self._kill_tree(r, signal.SIGTERM)
        r.kill_at = time.monotonic() + KILL_GRACE_S
        r.next_sample = min(r.next_sample, r.kill_at)
        self.next_due = min(self.next_due, r.next_sample)
