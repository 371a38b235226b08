"""The engine: one thread that moves tasks from submission to a finished future.

Runs in the client, in a single daemon thread owned by the :class:`Executor`;
every structure below is touched by that thread only, except the submission
deque (appended by user threads, drained here) and the wake pipe.

Per loop turn: drain new submissions into the :class:`Scheduler`; read
finished attempts from the backend; for each, build the
:class:`TaskReport`, feed the planner, retry bigger or settle the future;
start whatever now fits; write reports to the history in batches.

Per-task work here is kept small: this thread shares two cores with the
zygotes and the tasks. Measured with ``bench/throughput.py`` (no-op tasks,
sandbox off, 2 zygotes), this thread costs 95-120 µs of CPU per task in the
runs of 2026-11-25 (125-165 the day before; 190-285 before the planner kept
running totals). On 2026-11-24, of that,
the longest-first ranking in ``Scheduler.pick`` was ~50-70 µs (FIFO: ~15-20);
a window of one category and input size, as in that benchmark, now skips the
ranking and pays the FIFO cost. Reading and unpickling ``Done`` frames ~35, the report, the result and the
future ~35, the history's SQLite rows ~10; the rest is the select/read/write
system calls of one loop turn per task and cold caches after the zygotes ran.
Per task it allocates the :class:`RunOrder`, the report, the planner's
:class:`Observation` and little else; the select list is built once per
zygote change, not per turn.

Handing ahead: with a stream of tasks expected to end within milliseconds,
a running task's zygote is given the next waiting task to start on what the
first holds as soon as it ends (``_hand_ahead``), so a core is not idle
while this thread reads the report and answers. The scheduler counts only the
first task's allocation until its report is read, then the follower's, which
fits inside it; a follower that waits too long comes back (``_handed_back``).
Measured the same way, alternating with the code before it (24 runs each):
1,184 against 1,079 tasks/s (medians), the cores ~93 % busy instead of ~82 %.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import select
import signal
import socket
import threading
import time
from typing import Any

import cloudpickle

from loadmaster import plain
from loadmaster.errors import (
    CommandFailed,
    ExecutorShutdown,
    RemoteTraceback,
    ResourceExhausted,
    TaskFailed,
    UnsafeResult,
)
from loadmaster.node.process.protocol import (
    KIND_COMMAND,
    KIND_FUNCTION,
    STATUS_BROKEN,
    STATUS_OK,
    STATUS_RAISED,
    Done,
    RunOrder,
    frame,
)
from loadmaster.plan.strategy import Observation
from loadmaster.results import CommandResult, MeasureMethod, Outcome, TaskReport
from loadmaster.schedule.scheduler import Scheduler
from loadmaster.spec import Resources, TaskKind, TaskSpec

log = logging.getLogger("loadmaster.engine")

_MEASURE_METHODS = {m.value: m for m in MeasureMethod}  # a dict lookup, not an Enum call per task

HISTORY_FLUSH_S = 0.5      # reports are written at least this often
HISTORY_FLUSH_COUNT = 512  # or as soon as this many are waiting
OUTPUT_MAX = 16 << 20      # bytes of a command's stdout/stderr kept in its result
LOST_RETRIES = 2           # attempts re-run after their zygote died
FOLLOW_MAX_S = 0.05        # tasks expected to end within this are followed by the next (_hand_ahead)


def _cancelled_before_start(task: TaskSpec, report: TaskReport | None = None) -> TaskFailed:
    return TaskFailed(f"task {task.task_id} ({task.category}) was cancelled before it started",
                      task_id=task.task_id, category=task.category, report=report)


def _signal_name(code: int) -> str:
    try:
        return f"{signal.Signals(-code).name}({code})"
    except ValueError:
        return f"signal {-code}"


def _read_text(path: str) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            data = fh.read(OUTPUT_MAX + 1)
        os.unlink(path)
    except OSError:
        return ""
    text = data[:OUTPUT_MAX].decode("utf-8", "replace")
    if len(data) > OUTPUT_MAX:
        text += f"\n[loadmaster: output truncated at {OUTPUT_MAX} bytes]"
    return text


class Engine:
    """Owns the scheduler, the planner's calls, the backend and the futures."""

    def __init__(self, *, backend: Any, scheduler: Scheduler, planner: Any, history: Any,
                 run_id: int, node: Resources, admission: Any = None, results: str = "pickle") -> None:
        self.backend = backend
        self.results = results  # "plain": results decoded by loadmaster.plain (untrusted tasks)
        self.scheduler = scheduler
        self.planner = planner
        self.history = history
        self.run_id = run_id
        self.node = node
        self.admission = admission
        self.host = socket.gethostname()
        self.inbox: collections.deque[TaskSpec] = collections.deque()
        self.cancels: collections.deque[int] = collections.deque()  # task ids
        self.inflight: dict[int, TaskSpec] = {}
        self.pending_reports: list[TaskReport] = []
        self.last_flush = time.monotonic()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._wake_pending = False
        self._fds: list[int] = []  # what the loop selects on; rebuilt when a zygote is replaced
        # Handing ahead (see _hand_ahead), where the backend can: running tasks not yet
        # followed, and each followed task's follower.
        self.follow = bool(getattr(backend, "follows", False))
        self.unfollowed: dict[int, TaskSpec] = {}
        self.followers: dict[int, TaskSpec] = {}
        self.handed_ahead = 0  # tasks handed to a zygote behind another (counts, for tests and benchmarks)
        self.handed_back = 0   # of those, given back because the one ahead ran too long
        self.stopping = False
        self.cancel_waiting = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="loadmaster-engine", daemon=True)

    # ── called from user threads ──────────────────────────────────────────────
    def submit(self, task: TaskSpec) -> None:
        """Queue a task (any thread)."""
        self.inbox.append(task)
        self.wake()

    def cancel(self, task_id: int) -> None:
        """Ask to stop a task, waiting or running (any thread)."""
        self.cancels.append(task_id)
        self.wake()

    def wake(self) -> None:
        """Wake the engine thread (any thread)."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self.wake_w, b"x")
            except BlockingIOError:
                pass

    def stop(self, cancel_waiting: bool) -> None:
        """Finish the running tasks (and the waiting ones unless ``cancel_waiting``), then end."""
        self.cancel_waiting = cancel_waiting
        self.stopping = True
        self.wake()

    # ── the engine thread ─────────────────────────────────────────────────────
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave futures hanging forever
            log.exception("loadmaster engine failed")
            self.error = exc
            self._fail_everything(exc)
        finally:
            self._flush_history()
            if self.admission is not None:
                self.admission.close()

    def _loop(self) -> None:
        backend = self.backend
        wake_r = self.wake_r
        finished = self._finished
        self._fds = [wake_r, *backend.fds()]
        while True:
            timeout = self._timeout()
            writing = backend.writing()
            ready, writable, _ = select.select(self._fds, writing, [], timeout)
            for fd in writable:
                backend.flush(fd)
            for fd in ready:
                if fd == wake_r:
                    self._wake_pending = False
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    break
            if self.inbox or self.cancels:
                self._take_submissions()
            for fd in ready:
                if fd != wake_r:
                    msgs = backend.read(fd)
                    if msgs is None:
                        self._zygote_lost(fd)
                    else:
                        for done in msgs:
                            finished(done)
            if self.scheduler.queue or self.scheduler.admission_blocked:
                self._dispatch()
            pending = self.pending_reports
            if pending and (
                len(pending) >= HISTORY_FLUSH_COUNT or time.monotonic() - self.last_flush >= HISTORY_FLUSH_S
            ):
                self._flush_history()
            if self.stopping:
                if self.cancel_waiting:
                    while self.scheduler.queue:
                        self._settle_cancelled(self.scheduler.queue.popleft())
                if not self.inflight and not self.scheduler.queue and not self.inbox:
                    return

    def _timeout(self) -> float | None:
        timeout: float | None = HISTORY_FLUSH_S if self.pending_reports else None
        admission = self.admission
        if admission is not None:
            if self.scheduler.admission_blocked and (timeout is None or admission.retry_s < timeout):
                timeout = admission.retry_s
            trim = admission.trim(self.scheduler.memory_in_use)
            if trim is not None and (timeout is None or trim < timeout):
                timeout = trim
        return timeout

    def _take_submissions(self) -> None:
        inbox, push = self.inbox, self.scheduler.push
        while inbox:
            push(inbox.popleft())
        while self.cancels:
            task_id = self.cancels.popleft()
            running = self.inflight.get(task_id)
            if running is not None:
                self.backend.cancel(running)
                continue
            # Waiting, its future already running: it was handed ahead, then given back.
            for task in self.scheduler.queue:
                if task.task_id == task_id:
                    self.scheduler.remove(task)
                    if not task.future.done():
                        task.future.set_exception(_cancelled_before_start(task))
                    break

    def _allocation(self, task: TaskSpec) -> Resources:
        # A first attempt is sized afresh at every look (the planner caches per category,
        # ~0.2-5 µs), so a task that waited starts with what has been learned meanwhile.
        # A retry keeps at least what its exhaustion earned, and takes more memory when
        # what was learned while it waited asks for more (a retry of a big input made
        # before the category's fit existed would otherwise grow step by step).
        fresh = self.planner.first_allocation(task.category, task.requested, task.input_size)
        if task.allocation is None or task.attempts == 0:
            return fresh
        kept = task.allocation
        if fresh.memory is not None and kept.memory is not None and fresh.memory > kept.memory:
            return dataclasses.replace(kept, memory=fresh.memory)
        return kept

    def _order(self, task: TaskSpec, alloc: Resources, gpus: tuple[str, ...]) -> RunOrder:
        """Mark ``task`` as handed out under ``alloc``; return its order (function bytes not attached)."""
        fut = task.future
        if task.attempts == 0 and not fut.running():
            fut.set_running_or_notify_cancel()
        task.attempts += 1
        task.allocation = alloc
        task.gpu_ids = gpus
        self.inflight[task.task_id] = task
        return RunOrder(
            task_id=task.task_id,
            kind=KIND_FUNCTION if task.kind is TaskKind.FUNCTION else KIND_COMMAND,
            fn_key=task.fn_key, fn_bytes=b"", payload=task.payload,
            memory_limit=alloc.memory, disk_limit=alloc.disk, wall_limit=alloc.wall_time,
            gpu_ids=gpus, sandbox=task.sandbox,
        )

    def _dispatch(self) -> None:
        picked = self.scheduler.pick(self._allocation)
        batches: dict[int, list[bytes]] = {}
        for task, alloc, gpus in picked:
            if task.future.cancelled():
                self.scheduler.release(alloc, gpus)
                continue
            where = self.backend.choose(task)
            task.where = where
            order = self._order(task, alloc, gpus)
            self.backend.prepare(where, order, task.fn)
            batches.setdefault(where, []).append(frame(("run", order.fields())))
            if self.follow:
                self.unfollowed[task.task_id] = task
        if self.follow and self.unfollowed and self.scheduler.queue:
            self._hand_ahead(batches)
        for where, frames in batches.items():
            self.backend.send(where, b"".join(frames))

    def _short(self, task: TaskSpec) -> bool:
        wall = self.planner.predicted_wall_time(task.category, task.input_size)
        return wall is not None and wall <= FOLLOW_MAX_S

    def _hand_ahead(self, batches: dict[int, list[bytes]]) -> None:
        """Hand each running short task's zygote the task that follows it on what it holds.

        The zygote forks the follower as soon as the first ends, without waiting
        for this thread to read the report and answer: with a stream of tasks
        of a few milliseconds that round trip is a large part of each task's
        time. Only tasks expected to end within ``FOLLOW_MAX_S`` are followed,
        only by what ``Scheduler.pick_next`` allows, and the zygote hands a
        follower back when it waited ``FOLLOW_WAIT_S`` (zygote.py).
        """
        queue, scheduler = self.scheduler.queue, self.scheduler
        for first in list(self.unfollowed.values()):
            if not queue:
                return
            del self.unfollowed[first.task_id]
            if not (self._short(first) and self._short(queue[0])):
                continue
            nxt = scheduler.pick_next(first.allocation or Resources(), self._allocation)
            if nxt is None:
                continue
            task, alloc = nxt
            if task.future.cancelled():
                continue
            task.where = first.where
            task.after = first.task_id
            self.followers[first.task_id] = task
            self.handed_ahead += 1
            order = self._order(task, alloc, ())
            self.backend.prepare(first.where, order, task.fn)
            batches.setdefault(first.where, []).append(frame(("then", first.task_id, order.fields())))

    # ── results ───────────────────────────────────────────────────────────────
    def _report(self, task: TaskSpec, d: Done, outcome: Outcome, error: str = "") -> TaskReport:
        wall = d.wall_time
        extra = dict(d.extra) if d.extra else {}
        charged = extra.pop("peak_charged", None)
        return TaskReport(
            task_id=task.task_id, category=task.category, peak_memory=d.peak_memory,
            cpu_time=d.cpu_time, wall_time=wall, cores=d.cpu_time / wall if wall > 0 else 0.0,
            disk=d.disk, max_processes=d.max_processes, allocation=task.allocation or Resources(),
            attempts=task.attempts, exit_status=d.exit_status, host=self.host,
            measure_method=_MEASURE_METHODS.get(d.method) or MeasureMethod(d.method),
            outcome=outcome, exhausted=d.exhausted, started_at=d.started_at,
            finished_at=d.finished_at, input_size=task.input_size, error=error,
            extra=extra, peak_charged=charged if isinstance(charged, int) else None,
        )

    def _observe(self, task: TaskSpec, r: TaskReport) -> None:
        self.planner.observe(task.category, Observation(
            peak_memory=r.peak_memory, wall_time=r.wall_time, cores=r.cores, disk=r.disk,
            allocated_memory=r.allocation.memory, exhausted=r.exhausted, input_size=r.input_size,
        ))

    def _finished(self, msg: Any) -> None:
        if msg[0] != "done":
            self._handed_back(msg[1])
            return
        d: Done = msg[1]
        task = self.inflight.pop(d.task_id, None)
        if task is None:
            return
        self.backend.finished(task.where)
        if task.after >= 0:
            # Ended before the report of the task ahead of it was read: it held nothing of
            # its own (that one's allocation covers it until its report comes).
            self._unfollow(task)
            if d.pid == 0 and d.extra and d.extra.get("cancelled"):  # cancelled before it started
                r = self._report(task, d, Outcome.FAILED, "cancelled before it started")
                self._settle(task, r, error=_cancelled_before_start(task, r), record=False)
                return
        else:
            self.scheduler.release(task.allocation or Resources(), task.gpu_ids)
        if self.follow:
            self.unfollowed.pop(task.task_id, None)
            nxt = self.followers.pop(task.task_id, None)
            if nxt is not None:  # its zygote has started it on what this one held
                nxt.after = -1
                self.scheduler.hold(nxt.allocation or Resources())
                self.unfollowed[nxt.task_id] = nxt
        if d.exhausted is not None and not (d.extra and d.extra.get("cancelled")):
            self._exhausted(task, d)
            return
        if task.kind is TaskKind.COMMAND:
            self._command_done(task, d)
            return
        if d.status == STATUS_OK:
            try:
                value = plain.loads(d.payload) if self.results == "plain" else cloudpickle.loads(d.payload)
            except BaseException as exc:
                r = self._report(task, d, Outcome.FAILED, f"result could not be unpickled: {exc}")
                self._settle(task, r, error=TaskFailed(
                    f"task {task.task_id} ({task.category}) returned a result that cannot be "
                    f"unpickled here ({type(exc).__name__}: {exc}); is its class importable "
                    "in the client?", task_id=task.task_id, category=task.category, report=r))
                return
            why = self._value_failure(task, value) if task.value_failure is not None else None
            r = self._report(task, d, Outcome.FAILED, why) if why else self._report(task, d, Outcome.OK)
            self._observe(task, r)
            self._settle(task, r, value=value)
            return
        r = self._report(task, d, Outcome.FAILED)
        self._observe(task, r)
        self._settle(task, r, error=self._failure(task, d, r))

    def _value_failure(self, task: TaskSpec, value: Any) -> str | None:
        """What ``task.value_failure`` says of a returned value (a failure returned as a value)."""
        try:
            return task.value_failure(value) if task.value_failure is not None else None
        except Exception as exc:  # the check is the caller's code: it must not stop this thread
            log.warning("task %d (%s): its value_failure check raised %s: %s; recorded as a success",
                        task.task_id, task.category, type(exc).__name__, exc)
            return None

    def _failure(self, task: TaskSpec, d: Done, r: TaskReport) -> TaskFailed:
        head = f"task {task.task_id} ({task.category})"
        if (d.extra or {}).get("cancelled"):
            return TaskFailed(f"{head} was cancelled", task_id=task.task_id, category=task.category, report=r)
        if d.status == STATUS_RAISED:
            original, tb = None, ""
            try:
                if self.results == "plain":
                    raise UnsafeResult("results='plain' does not unpickle exception objects a task sends")
                original, tb = cloudpickle.loads(d.payload)
            except BaseException as exc:
                tb = f"(the exception could not be unpickled here: {exc})"
            if original is not None:
                err = TaskFailed(f"{head} raised {type(original).__name__}: {original}",
                                 task_id=task.task_id, category=task.category, report=r,
                                 remote_traceback=tb)
                original.__cause__ = RemoteTraceback(tb)
                err.__cause__ = original
                return err
            return TaskFailed(f"{head} failed: {tb.splitlines()[0] if tb else 'unknown error'}",
                              task_id=task.task_id, category=task.category, report=r, remote_traceback=tb)
        if d.status == STATUS_BROKEN:
            text = d.payload.decode("utf-8", "replace")
            return TaskFailed(f"{head}: {text.splitlines()[0] if text else 'broken'}",
                              task_id=task.task_id, category=task.category, report=r, remote_traceback=text)
        code = d.exit_status
        if code < 0:
            why = (f"was killed by {_signal_name(code)}" + (
                "; a segmentation fault, an out-of-memory kill or a kill from outside are the usual causes"
                if code in (-signal.SIGSEGV, -signal.SIGKILL, -signal.SIGBUS, -signal.SIGABRT) else ""))
        else:
            why = f"exited with status {code} before returning a result (os._exit or sys.exit in a task?)"
        return TaskFailed(f"{head} {why}; peak memory {r.peak_memory >> 20} MiB",
                          task_id=task.task_id, category=task.category, report=r)

    def _command_done(self, task: TaskSpec, d: Done) -> None:
        stdout = _read_text(d.stdout_path)
        stderr = _read_text(d.stderr_path)
        code = d.exit_status
        if code != 0 and d.extra and "sandbox" in d.extra and "Permission denied" in stderr:
            from loadmaster.node.sandbox.policy import denied_paths_in_text

            denied = denied_paths_in_text(stderr)
            if denied:
                d.extra["sandbox_denied"] = list(denied)
        if code == 0:
            r = self._report(task, d, Outcome.OK)
            self._observe(task, r)
            self._settle(task, r, value=CommandResult(code, stdout, stderr))
            return
        r = self._report(task, d, Outcome.FAILED, f"exit status {code}")
        self._observe(task, r)
        how = f"was killed by {_signal_name(code)}" if code < 0 else f"exited with status {code}"
        tail = "\n".join(stderr.rstrip().splitlines()[-5:])
        msg = f"command {task.extra.get('display', task.category)!r} {how}"
        if (d.extra or {}).get("cancelled"):
            msg = f"command {task.extra.get('display', task.category)!r} was cancelled"
        if tail:
            msg += f"; last lines of stderr:\n{tail}"
        self._settle(task, r, error=CommandFailed(
            msg, returncode=code, stdout=stdout, stderr=stderr, task_id=task.task_id,
            category=task.category, report=r))

    def _exhausted(self, task: TaskSpec, d: Done) -> None:
        resource = d.exhausted or "memory"
        used = d.used or d.peak_memory
        r = self._report(task, d, Outcome.EXHAUSTED, f"{resource} exhausted")
        self._observe(task, r)
        if task.kind is TaskKind.COMMAND:
            _read_text(d.stdout_path)
            _read_text(d.stderr_path)
        prev = task.allocation or Resources()
        nxt = self.planner.retry_allocation(task.category, prev, resource, used, requested=task.requested)
        self.pending_reports.append(r)
        if nxt is not None and not self.stopping:
            task.allocation = nxt
            self.scheduler.push(task, front=True)
            return
        limit = d.limit or getattr(prev, resource, 0) or 0
        unit = "s" if resource == "wall_time" else " MiB"
        scale = 1.0 if resource == "wall_time" else 1 / (1 << 20)
        stated = task.requested is not None and getattr(task.requested, resource) is not None
        if stated:
            why = f"you set {resource} in resources=, so it is not grown; raise it if the task needs more"
        elif nxt is not None:
            why = "the executor is shutting down"
        elif resource == "wall_time":
            why = "set a longer wall_time in resources="
        else:
            why = (f"the allocation cannot grow further: this executor has "
                   f"{(getattr(self.node, resource, 0) or 0) * scale:.0f}{unit} of {resource}")
        err = ResourceExhausted(
            f"task {task.task_id} ({task.category}) ran out of {resource}: used {used * scale:.1f}{unit} "
            f"of {limit * scale:.1f}{unit} allowed, after {task.attempts} attempt(s); {why}",
            resource=resource, limit=limit, used=used, task_id=task.task_id, category=task.category,
            report=r,
        )
        self._settle(task, r, error=err, record=False)

    def _settle(self, task: TaskSpec, r: TaskReport, *, value: Any = None,
                error: BaseException | None = None, record: bool = True) -> None:
        if record:
            self.pending_reports.append(r)
        fut = task.future
        fut.report = r
        if fut.done():
            return
        if error is None:
            fut.set_result(value)
        else:
            fut.set_exception(error)

    def _unfollow(self, task: TaskSpec) -> None:
        """Forget that ``task`` waits behind another (it ended or came back before starting)."""
        if self.followers.get(task.after) is task:
            del self.followers[task.after]
        task.after = -1

    def _handed_back(self, task_id: int) -> None:
        """A zygote gave back a task that waited too long behind another: queue it again, first."""
        task = self.inflight.pop(task_id, None)
        if task is None:
            return
        self.backend.finished(task.where)
        self._unfollow(task)
        self.handed_back += 1
        task.attempts -= 1
        task.allocation = None if task.attempts == 0 else task.allocation
        self.scheduler.push(task, front=True)

    def _settle_cancelled(self, task: TaskSpec) -> None:
        fut = task.future
        if not fut.done() and not fut.cancel():
            fut.set_exception(ExecutorShutdown(
                    f"task {task.task_id} ({task.category}) was waiting when the executor shut down"))

    def _zygote_lost(self, fd: int) -> None:
        where = self.backend.lost(fd)
        self._fds = [self.wake_r, *self.backend.fds()]
        for task in [t for t in self.inflight.values() if t.where == where]:
            del self.inflight[task.task_id]
            self.unfollowed.pop(task.task_id, None)
            self.followers.pop(task.task_id, None)
            if task.after >= 0:
                task.after = -1  # was waiting behind another: held nothing of its own
            else:
                self.scheduler.release(task.allocation or Resources(), task.gpu_ids)
            if task.attempts <= LOST_RETRIES and not self.stopping:
                self.scheduler.push(task, front=True)
            else:
                self._settle_cancelled(task)

    def _fail_everything(self, exc: BaseException) -> None:
        tasks = list(self.inflight.values()) + list(self.scheduler.queue) + list(self.inbox)
        for task in tasks:
            if not task.future.done():
                task.future.set_exception(TaskFailed(
                    f"the loadmaster engine failed ({type(exc).__name__}: {exc}); this is a bug, "
                    "please report it with the log above", task_id=task.task_id, category=task.category))

    def _flush_history(self) -> None:
        if not self.pending_reports:
            return
        batch, self.pending_reports = self.pending_reports, []
        self.last_flush = time.monotonic()
        try:
            self.history.record(self.run_id, batch)
        except Exception:
            log.exception("could not write %d task reports to the history %s", len(batch),
                          getattr(self.history, "path", "?"))

