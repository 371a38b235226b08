"""The life of one executor's run: started whole or not at all, ended once, ended at the program's exit.

Runs in the client. :meth:`RunLife.start` builds what a run needs (the
history, its run row, the planner, the engine) on a backend, and undoes
what it built when any step fails: no run left unfinished in the history,
no zygote left running. The engine thread ends the run itself when its
last task has ended (:meth:`RunLife._end`: the backend closed, so the
zygotes exit and a work directory it made is removed; the run finished in
the history), so ``shutdown(wait=False)`` and an executor dropped without
``shutdown()`` finish their runs too.

At the program's exit, as with ``concurrent.futures``' own executors (the
same hook, ``threading._register_atexit``, run before the interpreter stops
its threads), every run still going finishes its waiting and running tasks
before the interpreter goes on; a submit from then on raises
:class:`ExecutorShutdown` (a ``RuntimeError``), "cannot schedule new
futures after interpreter shutdown".

Does not cover: what a task is or how it is sent (``executor.py``,
``pickling.py``), what the engine does with it (``schedule/engine.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from loadmaster.backends.base import Backend
from loadmaster.errors import ExecutorShutdown, InvalidSpec
from loadmaster.node.orders import NodeInfo
from loadmaster.plan.history import History
from loadmaster.plan.planner import DEFAULT_STRATEGY, Planner
from loadmaster.plan.strategy import SizingStrategy
from loadmaster.results import MeasureMethod
from loadmaster.schedule.cluster import ClusterScheduler
from loadmaster.schedule.engine import Engine
from loadmaster.spec import TaskSpec

log = logging.getLogger("loadmaster.executor")

_live: set[RunLife] = set()  # runs whose engine has not ended yet (their executor may be gone)
_live_lock = threading.Lock()
_exiting = False


def _python_exit() -> None:
    """At the program's exit: every run still going finishes its tasks, then the interpreter goes on."""
    global _exiting
    with _live_lock:
        _exiting = True
        runs = [r for r in _live if r.pid == os.getpid()]
    for r in runs:
        r.stop(cancel_waiting=False)
    for r in runs:
        r.join()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]  # as concurrent.futures.thread


class RunLife:
    """One run of an executor: its history row, planner and engine on a backend.

    Made by :meth:`start`; the engine thread starts with :meth:`begin`. It
    holds no reference to its :class:`~loadmaster.executor.Executor`, so an
    executor nobody refers to any more is collected (its finaliser then calls
    :meth:`stop`), while its run goes on to the end of its tasks.
    """

    def __init__(self, *, backend: Backend, info: NodeInfo, history: History, run_id: int,
                 planner: Planner, order: str, results: str, replicas: Any = None,
                 transfers: Any = None) -> None:
        self.backend = backend
        self.info = info
        self.measure_method = MeasureMethod(info.measure_method)
        self.history = history
        self.run_id = run_id
        self.planner = planner
        self.pid = os.getpid()
        self.stopped = False
        self.end_error: BaseException | None = None  # raised by the first shutdown(wait=True)
        self._lock = threading.Lock()
        def predicted(task: TaskSpec) -> float | None:
            # The longest-first order's key (engine thread): the planner's wall-time prediction.
            return planner.predicted_wall_time(task.category, task.input_size)

        # ``replicas`` (data/replicas.py): who holds which declared file, for locality.
        scheduler = ClusterScheduler(priority=predicted if order == "longest-first" else None,
                                     priority_by_category=True,
                                     prefer=replicas.prefer if replicas is not None else None,
                                     holders=replicas.best_holders if replicas is not None else None)
        self.engine = Engine(backend=backend, scheduler=scheduler, planner=planner, history=history,
                             run_id=run_id, results=results, on_end=self._end, replicas=replicas,
                             transfers=transfers)
        self.transfers = transfers  # data/transfer/client.py (remote nodes): closed after the backend

    @classmethod
    def start(cls, backend: Backend, *, history: str | os.PathLike[str] | None, label: str,
              strategy: str | SizingStrategy | None,
              category_strategies: Mapping[str, str | SizingStrategy] | None,
              order: str, results: str, replicas: Any = None, transfers: Any = None) -> RunLife:
        """Open the history, check the strategies, start a run on ``backend``'s first node.

        On any failure what was built is undone (the run finished, the history
        closed, the backend closed) and the error raised.
        """
        with contextlib.ExitStack() as undo:
            undo.callback(backend.close)  # its zygotes would otherwise outlive a constructor that failed
            nodes = backend.nodes()
            if not nodes:
                raise InvalidSpec(f"backend: {backend!r} has no node to run tasks on; "
                                  "give a backend whose cluster has at least one worker")
            info = nodes[0]
            hist = History(history)
            undo.callback(hist.close)
            # Strategies are checked before the run is recorded: a bad name leaves no run behind.
            planner = Planner(info.capacity, hist, strategy or DEFAULT_STRATEGY,
                              per_category=category_strategies)
            run_id = hist.start_run(label=label, capacity=info.capacity)
            undo.callback(hist.finish_run, run_id)
            life = cls(backend=backend, info=info, history=hist, run_id=run_id, planner=planner,
                       order=order, results=results, replicas=replicas, transfers=transfers)
            undo.pop_all()
        return life

    def begin(self) -> None:
        """Start the engine thread; from now on the run ends by itself once stopped."""
        with _live_lock:
            _live.add(self)
        self.engine.thread.start()

    def submit(self, task: TaskSpec, future: Any) -> None:
        """Queue ``task``, whose outcome settles ``future`` (any thread).

        Raises:
            ExecutorShutdown: the executor was shut down, or the program is exiting.
        """
        with self._lock:
            if _exiting:
                raise ExecutorShutdown(
                    "cannot schedule new futures after interpreter shutdown: the program is exiting "
                    "(its executors are finishing their tasks); submit before the main thread ends")
            if self.stopped:
                raise ExecutorShutdown("cannot submit: this executor has been shut down; "
                                       "make a new Executor for more tasks")
            self.engine.submit(task, future)

    def stop(self, cancel_waiting: bool = False) -> None:
        """Take no more tasks; the engine ends the run after the running (and unless
        ``cancel_waiting``, the waiting) tasks. Idempotent; any thread."""
        with self._lock:
            first = not self.stopped
            self.stopped = True
        if first or cancel_waiting:
            self.engine.stop(cancel_waiting or self.engine.cancel_waiting)

    def join(self) -> None:
        """Wait for the run to end and its futures' callbacks to have run (not from a callback)."""
        self.engine.join()

    def _end(self) -> None:
        """End the run (engine thread, last): close the backend, finish the run, close the history."""
        try:
            self.backend.close()
        except BaseException as exc:
            log.exception("loadmaster: closing the backend failed")
            self.end_error = exc
        if self.transfers is not None:
            with contextlib.suppress(Exception):
                self.transfers.close()  # the submitter's transfer server (its nodes are gone)
        try:
            self.history.finish_run(self.run_id)
        except BaseException as exc:
            log.exception("loadmaster: could not record the end of run %d", self.run_id)
            self.end_error = self.end_error or exc
        finally:
            with contextlib.suppress(Exception):
                self.history.close()
            with _live_lock:
                _live.discard(self)

    def raise_end_error(self) -> None:
        """Raise (once) what went wrong while ending the run."""
        err, self.end_error = self.end_error, None
        if err is not None:
            raise err

