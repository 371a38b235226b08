"""The engine: one thread that moves tasks from submission to a finished future.

Runs in the client, in a single daemon thread owned by the :class:`Executor`;
every structure below is touched by that thread only, except the submission
deques (appended by user threads, drained here) and the backend's wake.

It talks to two things only: the :class:`ClusterScheduler` (what starts, on
which node; each node the backend offers is added to it, and removed when it
leaves) and
a :class:`~loadmaster.backends.base.Backend` (orders down to named nodes,
events up). It knows no file descriptor, no zygote and no wire format.

Per loop turn: wait for the backend's events (or a wake); drain new
submissions into the scheduler; for each finished attempt build the
:class:`TaskReport` (``schedule/outcome.py``), feed the planner, retry bigger
or settle the future; re-place the tasks of a lost zygote or node; start
whatever now fits; hand reports to the history's writer thread in batches
(``plan/history/writer.py``). Users' future callbacks run on a thread of
their own (``schedule/callbacks.py``): nothing on this loop waits on a disk,
a lock or user code.

Per-task work here is kept small: this thread shares two cores with the
zygotes and the tasks. Measured with ``bench/throughput.py`` (no-op tasks,
sandbox off, 2 zygotes), this thread cost 95-120 µs of CPU per task in the
runs of 2026-11-25 (125-165 the day before; 190-285 before the planner kept
running totals). On 2026-11-24, of that, the longest-first ranking in
``Scheduler.pick`` was ~50-70 µs (FIFO: ~15-20); a window of one category and
input size, as in that benchmark, now skips the ranking and pays the FIFO
cost. Reading and unpickling the zygote's frames ~35 (now in the node
runtime, same thread for the local backend), the report, the result and the
future ~35, the history's SQLite rows ~10; the rest is the select/read/write
system calls of one loop turn per task. Per task it allocates an
:class:`Attempt`, an :class:`~loadmaster.node.orders.Order`, the report, the
planner's :class:`Observation` and little else.

Handing ahead: with a stream of tasks expected to end within milliseconds,
a running task's node is given the next waiting task to start on what the
first holds as soon as it ends (an order with ``after``, ``_hand_ahead``), so
a core is not idle while this thread reads the report and answers. The
scheduler counts only the first task's allocation until its report is read,
then the follower's, which fits inside it; a follower that waits too long
comes back (:class:`~loadmaster.node.orders.HandedBack`). Measured the same
way before the seam, alternating with the code before it (24 runs each):
1,184 against 1,079 tasks/s (medians), the cores ~93 % busy instead of ~82 %.

Losses: a :class:`~loadmaster.node.orders.Lost` (a zygote died; the node
replaced it) or :class:`~loadmaster.node.orders.NodeLeft` puts the tasks it
held back at the head of the queue, with the allocation they had: a lost
attempt is never taken for the task exhausting its allocation, and after
``LOST_RETRIES`` lost attempts the task fails with :class:`WorkerLost`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import cloudpickle

from loadmaster import plain
from loadmaster.backends.base import Backend
from loadmaster.errors import ExecutorShutdown, NodeError, TaskFailed, WorkerLost
from loadmaster.node.orders import (
    Command,
    Done,
    Event,
    HandedBack,
    Lost,
    NodeInfo,
    NodeJoined,
    NodeLeft,
    Order,
    OrderKind,
    Output,
    Status,
)
from loadmaster.plan.history.writer import HistoryWriter
from loadmaster.plan.strategy import Observation
from loadmaster.results import Outcome, TaskReport
from loadmaster.schedule import outcome
from loadmaster.schedule.callbacks import CallbackRunner
from loadmaster.schedule.cluster import ClusterScheduler
from loadmaster.schedule.nodes import holds
from loadmaster.spec import Resources, TaskKind, TaskSpec

log = logging.getLogger("loadmaster.engine")

HISTORY_FLUSH_S = 0.5      # reports are written at least this often
HISTORY_FLUSH_COUNT = 512  # or as soon as this many are waiting
LOST_RETRIES = 2           # attempts re-run after their zygote or node died
STAGE_RETRIES = 2          # re-stagings after an input could not be fetched (not counted as attempts)
FOLLOW_MAX_S = 0.05        # tasks expected to end within this are followed by the next (_hand_ahead)
ADMISSION_RETRY_S = 0.05   # a node's ledger refused memory: ask again this much later

_OK = int(Status.OK)
_KINDS = {TaskKind.FUNCTION: OrderKind.FUNCTION, TaskKind.COMMAND: OrderKind.COMMAND}


@dataclasses.dataclass(slots=True, eq=False)
class Attempt:
    """The engine's record of one task attempt handed to a node (engine thread only).

    Attributes:
        task: the task.
        node: the node it was ordered to.
        allocation: what it runs under there.
        gpu_ids: the GPUs it holds there.
        after: the task it waits behind on that node, on what that one holds
            (handed ahead), or -1 once it holds its own.
    """

    task: TaskSpec
    node: str
    allocation: Resources
    gpu_ids: tuple[str, ...] = ()
    after: int = -1
    reservations: tuple[Any, ...] = ()  # the transfers planned for its inputs (data/transfer/client.py)


class Engine:
    """Owns the scheduler, the planner's calls, the backend's traffic and the futures."""

    def __init__(self, *, backend: Backend, scheduler: ClusterScheduler, planner: Any, history: Any,
                 run_id: int, results: str = "pickle", on_end: Callable[[], None] | None = None,
                 on_missing_module: Callable[[str, str, Any], tuple[str, Any] | None] | None = None,
                 replicas: Any = None, transfers: Any = None) -> None:
        self.backend = backend
        self.transfers = transfers  # a loadmaster.data.transfer.client.ClientTransfers (remote nodes), or None
        self.on_end = on_end  # called by this thread last: it closes the run (executor's lifecycle)
        # deps/: (environment key, missing module, the task's data) -> (the key with it added,
        # the data with that environment's wheel set), or None.
        self.on_missing_module = on_missing_module
        self.replicas = replicas  # a loadmaster.data.replicas.ReplicaTable (who holds which file), or None
        self.rebuilds: Any = None  # lost kept outputs made again (data/rebuild.py), with a replica table
        if replicas is not None:
            from loadmaster.data.rebuild import Rebuilds

            self.rebuilds = Rebuilds(replicas)
        self.results = results  # "plain": results decoded by loadmaster.plain (untrusted tasks)
        self.scheduler = scheduler
        self.planner = planner
        self.history = history
        self.run_id = run_id
        self.nodes: dict[str, NodeInfo] = {}
        self.follows: set[str] = set()  # nodes that take orders with ``after``
        for info in backend.nodes():
            self._join(info)
        self.inbox: collections.deque[TaskSpec] = collections.deque()
        # Each task's user future, by task id, until it is settled (the task spec carries none).
        self.futures: dict[int, Any] = {}
        self.cancels: collections.deque[int] = collections.deque()  # task ids
        self.inflight: dict[int, Attempt] = {}
        # Done events whose outputs were pulled back on a transfer thread, and why one failed ("": none).
        self.pulled: collections.deque[tuple[Done, str]] = collections.deque()
        # The allocation a task put back in the queue keeps (exhausted, lost, handed back).
        self.kept: dict[int, Resources] = {}
        self.pending_reports: list[TaskReport] = []
        self.last_flush = time.monotonic()
        # Neither SQLite nor users' callbacks run on this thread: each has a thread of its own.
        self.writer = HistoryWriter(history, run_id)
        self.callbacks = CallbackRunner()
        # Handing ahead (see _hand_ahead), where the node can: running tasks not yet
        # followed, and each followed task's follower.
        self.unfollowed: dict[int, Attempt] = {}
        self.followers: dict[int, Attempt] = {}
        self.handed_ahead = 0  # tasks handed to a node behind another (counts, for tests and benchmarks)
        self.handed_back = 0   # of those, given back because the one ahead ran too long
        self.lost = 0          # attempts lost with their zygote or node
        self.waiting_big: set[int] = set()  # tasks no node holds, waiting for a bigger one (said once)
        self.stopping = False
        self.cancel_waiting = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="loadmaster-engine", daemon=True)

    # ── called from user threads ──────────────────────────────────────────────
    def submit(self, task: TaskSpec, future: Any) -> None:
        """Queue a task whose outcome settles ``future`` (any thread)."""
        self.futures[task.task_id] = future
        self.inbox.append(task)
        self.backend.wake()

    def cancel(self, task_id: int) -> None:
        """Ask to stop a task, waiting or running (any thread)."""
        self.cancels.append(task_id)
        self.backend.wake()

    def wake(self) -> None:
        """Wake the engine thread (any thread)."""
        self.backend.wake()

    def join(self) -> None:
        """Wait until the engine has ended, its reports are written and its callbacks have run.

        Not from the engine thread, nor from a callback (either would wait for itself).
        """
        thread = self.thread
        if thread.ident is not None and thread is not threading.current_thread():
            thread.join()
        self.callbacks.join()

    def stop(self, cancel_waiting: bool) -> None:
        """Finish the running tasks (and the waiting ones unless ``cancel_waiting``), then end."""
        self.cancel_waiting = cancel_waiting
        self.stopping = True
        self.backend.wake()

    # ── the engine thread ─────────────────────────────────────────────────────
    def _run(self) -> None:
        self.callbacks.bind()
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave futures hanging forever
            log.exception("loadmaster engine failed")
            self.error = exc
            self._fail_everything(exc)
        finally:
            try:
                self._flush_history()
                self.writer.close()  # the rows land before the run is finished in the history
            finally:
                self.callbacks.close()
                if self.on_end is not None:
                    self.on_end()

    def _loop(self) -> None:
        wait = self.backend.wait
        finished = self._finished
        scheduler = self.scheduler
        while True:
            events = wait(self._timeout())
            if self.inbox or self.cancels:
                self._take_submissions()
            for ev in events:
                if type(ev) is Done:
                    finished(ev)
                else:
                    self._event(ev)
            pulled = self.pulled
            while pulled:
                finished(*pulled.popleft())
            if scheduler.queue or scheduler.admission_blocked:
                self._dispatch()
            pending = self.pending_reports
            if pending and (
                len(pending) >= HISTORY_FLUSH_COUNT or time.monotonic() - self.last_flush >= HISTORY_FLUSH_S
            ):
                self._flush_history()
            if self.stopping:
                if self.cancel_waiting:
                    while scheduler.queue:
                        self._settle_cancelled(scheduler.queue.popleft())
                if not self.inflight and not scheduler.queue and not self.inbox:
                    return

    def _timeout(self) -> float | None:
        timeout: float | None = HISTORY_FLUSH_S if self.pending_reports else None
        if self.scheduler.admission_blocked and (timeout is None or timeout > ADMISSION_RETRY_S):
            timeout = ADMISSION_RETRY_S
        return timeout

    def _take_submissions(self) -> None:
        inbox, push = self.inbox, self.scheduler.push
        while inbox:
            task = inbox.popleft()
            # A task sized by the planner is capped at the node it goes to; one whose
            # stated request no node holds would wait forever.
            if task.requested is not None and self._too_big(task):
                continue
            push(task)
        while self.cancels:
            task_id = self.cancels.popleft()
            running = self.inflight.get(task_id)
            if running is not None:
                self.backend.cancel(running.node, task_id)
                continue
            # Waiting, its future already running: it was handed ahead, then given back.
            for task in self.scheduler.queue:
                if task.task_id == task_id:
                    self.scheduler.remove(task)
                    self.kept.pop(task_id, None)
                    fut = self.futures.pop(task_id)
                    if not fut.done():
                        fut.set_exception(outcome.cancelled_before_start(task))
                    break

    def _allocation(self, task: TaskSpec, node: Resources) -> Resources:
        # A first attempt is sized afresh at every look (the planner caches per category,
        # ~0.2-5 µs), so a task that waited starts with what has been learned meanwhile.
        # A retry keeps at least what its exhaustion earned, and takes more memory when
        # what was learned while it waited asks for more (a retry of a big input made
        # before the category's fit existed would otherwise grow step by step).
        # ``node`` is the capacity of the node the scheduler looks at: the task is sized
        # for it and capped at it.
        fresh = self.planner.first_allocation(task.category, task.requested, task.input_size, node=node)
        if task.attempts == 0:
            return fresh
        kept = self.kept.get(task.task_id)
        if kept is None:
            return fresh
        if fresh.memory is not None and kept.memory is not None and fresh.memory > kept.memory:
            return dataclasses.replace(kept, memory=fresh.memory)
        return kept

    def _order(self, att: Attempt) -> Order:
        """Mark ``att`` as handed out; return its order."""
        task = att.task
        fut = self.futures[task.task_id]
        if task.attempts == 0 and not fut.running():
            fut.set_running_or_notify_cancel()
        task.attempts += 1
        self.inflight[task.task_id] = att
        command: Command | None = task.command
        data = task.data
        if data is not None and self.transfers is not None:
            data, att.reservations = self.transfers.plan(att.node, data)
        return Order(task.task_id, task.attempts, _KINDS[task.kind], task.fn_key, task.fn or b"",
                     task.payload, att.allocation, att.gpu_ids, task.sandbox, command, att.after, task.env,
                     data, task.watch is not None)

    def _dispatch(self) -> None:
        picked = self.scheduler.pick(self._allocation)
        batches: dict[str, list[Order]] = {}
        follows, futures = self.follows, self.futures
        for p in picked:
            task = p.task
            if futures[task.task_id].cancelled() or (task.data is not None and self._wait_rebuild(task)):
                self.scheduler.release(p.node, p.allocation, p.gpu_ids)
                continue
            att = Attempt(task, p.node, p.allocation, p.gpu_ids)
            order = self._order(att)  # plans its transfers (before its node counts as creating them)
            if task.data is not None and self.replicas is not None:
                self.replicas.creating(p.node, task.data)
            batch = batches.get(p.node)
            if batch is None:
                batches[p.node] = [order]
            else:
                batch.append(order)
            if p.node in follows:
                self.unfollowed[task.task_id] = att
        if self.unfollowed and self.scheduler.queue:
            self._hand_ahead(batches)
        for node, orders in batches.items():
            self.backend.submit(node, orders)

    def _short(self, task: TaskSpec) -> bool:
        wall = self.planner.predicted_wall_time(task.category, task.input_size)
        return wall is not None and wall <= FOLLOW_MAX_S

    def _hand_ahead(self, batches: dict[str, list[Order]]) -> None:
        """Hand each running short task's node the task that follows it on what it holds.

        The node's zygote forks the follower as soon as the first ends, without
        waiting for this thread to read the report and answer: with a stream of
        tasks of a few milliseconds that round trip is a large part of each
        task's time. Only tasks expected to end within ``FOLLOW_MAX_S`` are
        followed, only by what ``Scheduler.pick_next`` allows, and the zygote
        hands a follower back when it waited ``FOLLOW_WAIT_S`` (zygote.py).
        """
        queue, scheduler = self.scheduler.queue, self.scheduler
        for first in list(self.unfollowed.values()):
            if not queue:
                return
            first_id = first.task.task_id
            del self.unfollowed[first_id]
            if not (self._short(first.task) and self._short(queue[0])):
                continue
            nxt = scheduler.pick_next(first.node, first.allocation, self._allocation)
            if nxt is None:
                continue
            task, alloc = nxt
            if self.futures[task.task_id].cancelled():
                continue
            att = Attempt(task, first.node, alloc, (), first_id)
            self.followers[first_id] = att
            self.handed_ahead += 1
            batches.setdefault(first.node, []).append(self._order(att))

    # ── events ────────────────────────────────────────────────────────────────
    def _event(self, ev: Event) -> None:
        if type(ev) is Output:
            self._output(ev)
        elif type(ev) is HandedBack:
            att = self.inflight.get(ev.task_id)
            if att is not None and ev.node == att.node and (not ev.attempt or ev.attempt == att.task.attempts):
                self._handed_back(ev.task_id)
        elif type(ev) is Lost:
            self._lost(ev.node, ev.task_ids, ev.reason)
        elif type(ev) is NodeJoined:
            self._join(ev.info)
        elif type(ev) is NodeLeft:
            self._leave(ev.name, ev.reason)

    def _output(self, ev: Output) -> None:
        """Hand a streamed task's new output to its watch, on the callback thread (never decoded here)."""
        att = self.inflight.get(ev.task_id)
        if att is None or ev.node != att.node or ev.attempt != att.task.attempts:
            return  # an attempt given up for lost, or not ours
        watch = att.task.watch
        if watch is not None:
            self.callbacks.call(watch.feed, ev.stream, ev.attempt, ev.data, ev.final)

    def _join(self, info: NodeInfo) -> None:
        """A node can take orders: the scheduler packs it from now on."""
        if info.name in self.nodes:
            self._leave(info.name, "it joined again")
        self.scheduler.add_node(info.name, info.capacity, info.gpu_ids,
                                admit=self.backend.admitter(info.name))
        self.nodes[info.name] = info
        if self.transfers is not None:
            self.transfers.join(info.name, info.host, info.transfer_address)
        if info.follows:
            self.follows.add(info.name)
        log.info("node %s (%s) joined: %s", info.name, info.host, info.capacity)

    def _too_big(self, task: TaskSpec) -> bool:
        """Whether ``task`` fits no node even empty; then fail it (or say it waits, if more may join).

        True when the task was failed and must not be queued. False when it
        fits a node, when there is no node at all (it waits for one), or when
        the backend can grow (it waits for a bigger node; said once in the log).
        """
        if not self.nodes:
            return False
        for cap in {info.capacity for info in self.nodes.values()}:
            if holds(cap, self._allocation(task, cap)):
                self.waiting_big.discard(task.task_id)
                return False
        name, largest = max(((n, i.capacity) for n, i in self.nodes.items()),
                            key=lambda x: (x[1].memory or 0, x[1].cores or 0.0))
        need = self._allocation(task, largest)
        if self.backend.grows():
            if task.task_id not in self.waiting_big:
                self.waiting_big.add(task.task_id)
                log.warning("task %d (%s) needs %s, more than any node holds (the largest, %s, has %s); "
                            "it waits for a bigger node to join", task.task_id, task.category,
                            need.describe(), name, largest.describe())
            return False
        fut = self.futures.pop(task.task_id, None)
        self.kept.pop(task.task_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(TaskFailed(
                f"task {task.task_id} ({task.category}) needs {need.describe()}, more than any node can hold "
                f"({need.describe_excess(largest)} on the largest node, {name}); ask for at most "
                f"{largest.describe()}, or add a bigger node", task_id=task.task_id, category=task.category))
        return True

    def _fail_too_big(self) -> None:
        """Fail (or keep waiting) the queued tasks no node holds any more (a node left)."""
        for task in list(self.scheduler.queue):
            if self._too_big(task):
                self.scheduler.remove(task)

    def _leave(self, name: str, reason: str) -> None:
        """A node is gone: forget it, and put what it ran back in the queue."""
        try:
            self.scheduler.remove_node(name)
        except NodeError:
            pass
        self.nodes.pop(name, None)
        self.follows.discard(name)
        if self.replicas is not None:
            self.replicas.drop_node(name)
        if self.transfers is not None:
            self.transfers.leave(name)
        ids = tuple(t for t, att in self.inflight.items() if att.node == name)
        log.warning("node %s left (%s); %d task(s) it ran are placed again", name, reason, len(ids))
        self._lost(name, ids, f"node {name} left: {reason}")
        if self.scheduler.queue:
            self._fail_too_big()

    def _finished(self, ev: Done, pulled: str | None = None) -> None:
        att = self.inflight.get(ev.task_id)
        if att is None or (ev.attempt and ev.attempt != att.task.attempts) or ev.node != att.node:
            return  # an attempt given up for lost (its task was placed again), or not ours
        if pulled is None and ev.data is not None:
            if self.replicas is not None:
                self.replicas.record(ev.node, ev.data)
                if ev.data.outputs and not ev.data.error:
                    self.rebuilds.produced(att.task, ev.data)
            if self.transfers is not None:
                self.transfers.release(att.reservations, "failed" if ev.data.error else "done")
                if not ev.data.error and not ev.cancelled and self.transfers.to_pull(ev.data):
                    # Pulled on a transfer thread: this one goes on dispatching. The attempt
                    # stays in flight (holding its node's share) until ``pulled`` brings it back.
                    self.transfers.pull_later(ev.node, ev.data, lambda why, ev=ev: self._pulled_back(ev, why))
                    return
        elif pulled:  # the task ran: the output it wrote could not be brought back
            assert ev.data is not None
            ev = dataclasses.replace(ev, data=dataclasses.replace(ev.data, error=pulled))
        elif self.transfers is not None and att.reservations and ev.data is None:
            # Its node left its only input, an environment's wheel set, out: built there already.
            self.transfers.release(att.reservations, "done")
        del self.inflight[ev.task_id]
        task = att.task
        if att.after >= 0:
            # Ended before the report of the task ahead of it was read: it held nothing of
            # its own (that one's allocation covers it until its report comes).
            self._unfollow(att)
            if ev.measured.pid == 0 and ev.cancelled:  # cancelled before it started
                r = self._report(att, ev, Outcome.FAILED, "cancelled before it started")
                self._settle(task, r, error=outcome.cancelled_before_start(task, r), record=False)
                return
        else:
            self.scheduler.release(att.node, att.allocation, att.gpu_ids)
        if self.followers or self.unfollowed:
            self.unfollowed.pop(task.task_id, None)
            nxt = self.followers.pop(task.task_id, None)
            if nxt is not None:  # its node has started it on what this one held
                nxt.after = -1
                self.scheduler.hold(nxt.node, nxt.allocation)
                self.unfollowed[nxt.task.task_id] = nxt
        if ev.measured.exhausted is not None and not ev.cancelled:
            self._exhausted(att, ev)
            return
        if ev.data is not None and ev.data.error and not ev.cancelled:
            if ev.measured.pid == 0 and self._restage(att, ev.data.error):
                return  # the task never started: a transfer failure is not the task's
            r = self._report(att, ev, Outcome.FAILED, ev.data.error)
            self._settle(task, r, error=TaskFailed(f"task {task.task_id} ({task.category}): {ev.data.error}",
                                                   task_id=task.task_id, category=task.category, report=r))
            return
        if task.kind is TaskKind.COMMAND:
            if ev.exit_status == 0:
                r = self._report(att, ev, Outcome.OK)
                self._observe(task, r)
                self._settle(task, r, value=outcome.command_value(ev))
            else:
                r = self._report(att, ev, Outcome.FAILED, f"exit status {ev.exit_status}")
                self._observe(task, r)
                self._settle(task, r, error=outcome.command_error(task, ev, r))
            return
        if ev.status == _OK:
            try:
                value = plain.loads(ev.payload) if self.results == "plain" else cloudpickle.loads(ev.payload)
            except BaseException as exc:
                r = self._report(att, ev, Outcome.FAILED, f"result could not be unpickled: {exc}")
                self._settle(task, r, error=outcome.unpicklable_result(task, exc, r))
                return
            why = self._value_failure(task, value) if task.value_failure is not None else None
            r = self._report(att, ev, Outcome.FAILED, why) if why else self._report(att, ev, Outcome.OK)
            self._observe(task, r)
            self._settle(task, r, value=value)
            return
        r = self._report(att, ev, Outcome.FAILED)
        self._observe(task, r)
        err = outcome.function_error(task, ev, r, plain_only=self.results == "plain")
        if self.on_missing_module is not None and self._add_missing(task, ev, r, err):
            return
        self._settle(task, r, error=err)

    def _pulled_back(self, ev: Done, why: str) -> None:
        """A transfer thread pulled ``ev``'s outputs back (``why``: what failed, or ""); any thread."""
        self.pulled.append((ev, why))
        self.backend.wake()

    def _add_missing(self, task: TaskSpec, ev: Done, r: TaskReport, err: BaseException) -> bool:
        """A task that failed for a module its environment lacks: retry it once with that module added."""
        if "deps_added" in task.extra or self.stopping:
            return False
        module = outcome.missing_module(ev, err)
        found = self.on_missing_module(task.env, module, task.data) if module and self.on_missing_module else None
        if not found:
            return False
        task.extra["deps_added"] = module
        task.env, task.data = found
        self.pending_reports.append(r)
        self.scheduler.push(task, front=True)
        return True

    def _value_failure(self, task: TaskSpec, value: Any) -> str | None:
        """What ``task.value_failure`` says of a returned value (a failure returned as a value)."""
        try:
            return task.value_failure(value) if task.value_failure is not None else None
        except Exception as exc:  # the check is the caller's code: it must not stop this thread
            log.warning("task %d (%s): its value_failure check raised %s: %s; recorded as a success",
                        task.task_id, task.category, type(exc).__name__, exc)
            return None

    def _report(self, att: Attempt, ev: Done, result: Outcome, error: str = "") -> TaskReport:
        info = self.nodes.get(ev.node)
        return outcome.report(att.task, ev, att.allocation, info.host if info else ev.node, result, error)

    def _observe(self, task: TaskSpec, r: TaskReport) -> None:
        self.planner.observe(task.category, Observation(
            peak_memory=r.peak_memory, wall_time=r.wall_time, cores=r.cores, disk=r.disk,
            allocated_memory=r.allocation.memory, exhausted=r.exhausted, input_size=r.input_size,
        ))

    def _exhausted(self, att: Attempt, ev: Done) -> None:
        task = att.task
        m = ev.measured
        resource = m.exhausted or "memory"
        r = self._report(att, ev, Outcome.EXHAUSTED, f"{resource} exhausted")
        self._observe(task, r)
        # A retry may grow up to the biggest node (and then fits only nodes that big).
        largest = self.scheduler.largest
        nxt = self.planner.retry_allocation(task.category, att.allocation, resource,
                                            m.used or m.peak_memory, requested=task.requested,
                                            node=largest)
        self.pending_reports.append(r)
        if nxt is not None and not self.stopping:
            self.kept[task.task_id] = nxt
            self.scheduler.push(task, front=True)
            return
        err = outcome.exhausted_error(task, ev, r, att.allocation, largest or Resources(),
                                      grows=nxt is not None)
        self._settle(task, r, error=err, record=False)

    def _settle(self, task: TaskSpec, r: TaskReport, *, value: Any = None,
                error: BaseException | None = None, record: bool = True) -> None:
        if record:
            self.pending_reports.append(r)
        if task.attempts > 1:
            self.kept.pop(task.task_id, None)
        fut = self.futures.pop(task.task_id, None)
        if fut is None:
            return
        fut.report = r
        if fut.done():
            return
        if error is None:
            fut.set_result(value)
        else:
            fut.set_exception(error)

    def _unfollow(self, att: Attempt) -> None:
        """Forget that ``att`` waits behind another (it ended or came back before starting)."""
        if self.followers.get(att.after) is att:
            del self.followers[att.after]
        att.after = -1

    def _handed_back(self, task_id: int) -> None:
        """A node gave back a task that waited too long behind another: queue it again, first."""
        att = self.inflight.pop(task_id, None)
        if att is None:
            return
        if self.transfers is not None:
            self.transfers.release(att.reservations, "failed")
        self._unfollow(att)
        self.handed_back += 1
        task = att.task
        task.attempts -= 1
        if task.attempts:
            self.kept[task_id] = att.allocation
        self.scheduler.push(task, front=True)

    def _restage(self, att: Attempt, why: str) -> bool:
        """An input could not be staged: queue the task again, first, its attempt not counted (False: give up)."""
        task = att.task
        if self._wait_rebuild(task):  # the last holder of a kept output it reads died meanwhile
            task.attempts -= 1
            if task.attempts:
                self.kept[task.task_id] = att.allocation
            return True
        tries = task.extra.setdefault("restaged", [])
        if len(tries) >= STAGE_RETRIES or self.stopping:
            return False
        tries.append({"attempt": task.attempts, "node": att.node, "reason": why})
        task.attempts -= 1
        if task.attempts:
            self.kept[task.task_id] = att.allocation
        self.scheduler.push(task, front=True)
        return True

    def _wait_rebuild(self, task: TaskSpec) -> bool:
        """Park ``task`` if it reads a kept output no node holds any more, queueing its producer's re-run."""
        rebuilds = self.rebuilds
        lost = rebuilds.lost(task) if rebuilds is not None and rebuilds.producers and not self.cancel_waiting else ()
        if not lost:
            return False
        for spec in rebuilds.park(task, lost):
            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            fut.add_done_callback(functools.partial(self._rebuilt, spec.task_id))  # runs where it settles
            self.futures[spec.task_id] = fut
            log.warning("task %d (%s) reads %s, kept by task %d on a node that is gone; re-running that "
                        "task as task %d", task.task_id, task.category, lost[0].key,
                        spec.extra["rebuild_of"], spec.task_id)
            self.scheduler.push(spec, front=True)
            self.backend.wake()  # parked while dispatching: pick again once this pass ends
        return True

    def _rebuilt(self, task_id: int, fut: concurrent.futures.Future[Any]) -> None:
        """A producer's re-run settled: queue the tasks waiting for it, or fail them saying why."""
        report = getattr(fut, "report", None)
        error = ("it was cancelled" if fut.cancelled() else
                 "" if fut.exception() is None else str(fut.exception()))
        go, fail, why = self.rebuilds.finished(task_id, report.data if report is not None else None, error)
        for task in go:
            self.scheduler.push(task, front=True)
        for task in fail:
            waiting = self.futures.pop(task.task_id, None)
            if waiting is not None and not waiting.done():
                waiting.set_exception(TaskFailed(f"task {task.task_id} ({task.category}): {why}",
                                                 task_id=task.task_id, category=task.category))

    def _settle_cancelled(self, task: TaskSpec) -> None:
        fut = self.futures.pop(task.task_id, None)
        if fut is not None and not fut.done() and not fut.cancel():
            fut.set_exception(ExecutorShutdown(
                    f"task {task.task_id} ({task.category}) was waiting when the executor shut down "
                    "(shutdown(cancel_futures=True), or its process was lost during the shutdown); "
                    "submit it to a new Executor to run it"))

    def _lost(self, node: str, task_ids: tuple[int, ...], reason: str) -> None:
        """Put the tasks a lost zygote or node held back at the head of the queue."""
        for task_id in task_ids:
            att = self.inflight.get(task_id)
            if att is None or att.node != node:
                continue
            del self.inflight[task_id]
            if self.transfers is not None:
                self.transfers.release(att.reservations, "failed")
            task = att.task
            self.lost += 1
            # The report says which attempts were lost, where and why (``report.extra["lost"]``).
            task.extra.setdefault("lost", []).append(
                {"attempt": task.attempts, "node": node, "reason": reason})
            self.unfollowed.pop(task_id, None)
            follower = self.followers.pop(task_id, None)
            if follower is not None and follower.task.task_id not in task_ids:
                # It waits behind a task that will never end: it now holds its own.
                follower.after = -1
                self.scheduler.hold(follower.node, follower.allocation)
            if att.after >= 0:
                self._unfollow(att)  # was waiting behind another: held nothing of its own
            else:
                self.scheduler.release(att.node, att.allocation, att.gpu_ids)
            if task.attempts <= LOST_RETRIES and not self.stopping:
                self.kept[task_id] = att.allocation
                self.scheduler.push(task, front=True)
            elif self.stopping:
                self._settle_cancelled(task)
            elif task_id in self.futures:
                err = TaskFailed(
                    f"task {task.task_id} ({task.category}) was lost {task.attempts} times with the "
                    f"process running it (last: {reason}); it is not retried again: does it kill "
                    "its parent, or is the node failing?", task_id=task.task_id, category=task.category)
                err.__cause__ = WorkerLost(reason)
                self.kept.pop(task_id, None)
                fut = self.futures.pop(task_id)
                if not fut.done():
                    fut.set_exception(err)

    def _fail_everything(self, exc: BaseException) -> None:
        tasks = [a.task for a in self.inflight.values()] + list(self.scheduler.queue) + list(self.inbox)
        for task in tasks:
            fut = self.futures.pop(task.task_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(TaskFailed(
                    f"the loadmaster engine failed ({type(exc).__name__}: {exc}); this is a bug, "
                    "please report it with the log above", task_id=task.task_id, category=task.category))

    def _flush_history(self) -> None:
        if not self.pending_reports:
            return
        batch, self.pending_reports = self.pending_reports, []
        self.last_flush = time.monotonic()
        self.writer.put(batch)  # written by the writer's thread: SQLite may wait on another's lock
