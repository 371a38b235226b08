"""Users' future callbacks run on a thread of their own, never on the engine's loop.

``concurrent.futures`` runs a future's done-callbacks in the thread that sets
its result; for loadmaster that is the engine thread, and one callback that
blocks (waits on an event, writes to a slow disk) stopped every dispatch. The
engine marks its thread with a :class:`CallbackRunner`; a
:class:`~loadmaster.executor.TaskFuture` settled there hands its callbacks to
the runner's thread (:func:`invoke`) instead of calling them. Futures with no
callbacks (the usual case) cost nothing more; waiters (``wait``,
``as_completed``, ``result``) are woken by the engine as before.

Callbacks run in the order their futures were settled, one at a time, as
``concurrent.futures`` runs them (an exception is logged, not raised). A
streamed task's output callbacks (``loadmaster/output.py``) run on the same
thread, in the same order: its lines before its future's done-callbacks.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("loadmaster.callbacks")

_engine = threading.local()  # .runner: the CallbackRunner of the engine owning this thread


class CallbackRunner:
    """One thread, started on first use, that runs settled futures' callbacks."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def bind(self) -> None:
        """Mark the calling thread (the engine's): futures settled on it use this runner."""
        _engine.runner = self

    def post(self, future: concurrent.futures.Future[Any]) -> None:
        """Run ``future``'s callbacks on the runner's thread."""
        self._put(future)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the runner's thread (after what was posted before); here once it is closed."""
        if self._closed:
            fn(*args)  # the engine has ended: nothing would run it (a streamed future's close)
            return
        self._put((fn, args))

    def _put(self, item: Any) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="loadmaster-callbacks", daemon=True)
                self._thread.start()
        self._queue.put(item)

    def close(self) -> None:
        """Stop once the callbacks posted so far have run (does not wait)."""
        self._closed = True
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)

    def join(self) -> None:
        """Wait for the callbacks posted before :meth:`close` (not from a callback itself)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        _engine.on_runner = True
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            if type(item) is tuple:
                fn, args = item
                try:
                    fn(*args)
                except Exception:
                    log.exception("a loadmaster callback raised")
                continue
            concurrent.futures.Future._invoke_callbacks(item)  # type: ignore[attr-defined]


def on_runner() -> bool:
    """Whether this is a callback runner's thread (where waiting for a later callback would never end)."""
    return bool(getattr(_engine, "on_runner", False))


def call_later(fn: Callable[..., Any], *args: Any) -> bool:
    """Run ``fn(*args)`` on the engine's runner if this is an engine thread; whether it will."""
    runner = getattr(_engine, "runner", None)
    if runner is None:
        return False
    runner.call(fn, *args)
    return True


def invoke(future: concurrent.futures.Future[Any]) -> bool:
    """Hand ``future``'s callbacks to the engine's runner if this is an engine thread; whether it did."""
    runner = getattr(_engine, "runner", None)
    if runner is None:
        return False
    runner.post(future)
    return True
