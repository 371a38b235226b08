"""The node runtime's staging threads: declared inputs fetched off the thread that drives the node.

Runs on the node, in the node runtime's process. Staging an input may copy a
large file or wait on a slow (or stalled) peer for minutes; the thread that
drives the runtime (the engine's own, for the local backend) must go on
handing out other orders and reading their reports meanwhile. So
``NodeRuntime.submit`` hands an order with declared files to :class:`Stagers`
and goes on; a few threads call :meth:`NodeData.stage` (``data/stage.py``),
queue what came of it, and wake the runtime, whose ``poll`` takes the
results (:meth:`Stagers.finished`) on its own thread and sends each staged
order on to a zygote (or refuses it, saying why).

The threads touch only the cache (thread safe: its index has a lock, its
hash memo a connection per thread) and the fetchers (one call per fetch);
everything the runtime owns stays on its thread.

Does not cover: what staging does (``data/stage.py``), fetching (``data/fetch.py``,
``data/transfer/peer.py``).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadmaster.errors import DataError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StageResult:
    """What staging one order came to: its :class:`~loadmaster.data.stage.Attempt`, or why it failed."""

    order: Any  # the node.orders.Order
    attempt: Any = None  # the data.stage.Attempt, when staged
    error: str = ""


class Stagers:
    """Up to ``threads`` orders staged at once, on threads of their own (see the module docstring).

    Args:
        stage: ``stage(order) -> Attempt`` (raises ``DataError`` or ``OSError`` when an input cannot be staged).
        wake: called (from a staging thread) when a result is ready.
        threads: how many orders are staged at once (each waits on its own copies).
    """

    def __init__(self, stage: Callable[[Any], Any], wake: Callable[[], None], threads: int = 4) -> None:
        self._stage, self._wake, self._n = stage, wake, threads
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done: collections.deque[StageResult] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.busy: set[int] = set()  # task ids being staged (the runtime's thread only)

    def start(self, order: Any) -> None:
        """Stage ``order`` on a staging thread (the runtime's thread; returns at once)."""
        self.busy.add(order.task_id)
        self._jobs.put(order)
        if len(self._threads) < min(self._n, len(self.busy)):
            t = threading.Thread(target=self._run, name="loadmaster-stage", daemon=True)
            t.start()
            self._threads.append(t)

    def finished(self) -> list[StageResult]:
        """The orders staged (or refused) since the last call (the runtime's thread)."""
        out: list[StageResult] = []
        done = self._done
        while done:
            r = done.popleft()
            self.busy.discard(r.order.task_id)
            out.append(r)
        return out

    def __bool__(self) -> bool:
        return bool(self.busy)

    def _run(self) -> None:
        while True:
            order = self._jobs.get()
            if order is None:
                return
            try:
                result = StageResult(order, attempt=self._stage(order))
            except (DataError, OSError) as exc:
                result = StageResult(order, error=str(exc))
            except BaseException as exc:  # a bug: the order must still come back, refused
                log.exception("staging task %d failed", order.task_id)
                result = StageResult(order, error=f"{type(exc).__name__}: {exc}")
            self._done.append(result)
            if self._closed:
                return
            self._wake()

    def close(self, timeout_s: float = 5.0) -> list[StageResult]:
        """Stop the threads (a fetch still waiting is abandoned after ``timeout_s``); return what finished."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout_s)
        self._threads.clear()
        return self.finished()
