"""Environments built off the node runtime's thread (runs on the node, beside ``node/runtime.py``).

A node's first order of a new environment (``deps/``) needs that environment
built from its wheel set (up to ~2.6 s for numpy) and a zygote started in it.
Done in the runtime's own thread, that thread would not read its other
zygotes' reports meanwhile: every task of the node would wait. Here each new
key gets a thread of its own that builds the environment and starts its
zygote, then queues the outcome and wakes the runtime, whose next ``poll``
adopts the zygote and hands it the orders that waited for it.

Does not cover: building itself (``deps/build.py``), what the runtime does
with the zygote (``node/runtime.py``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Built:
    """One build's outcome: the environment and its started zygote, or the error that stopped it."""

    key: str
    environment: Any = None  # a deps.build.Environment
    zygote: Any = None  # a ZygoteClient started in it
    error: BaseException | None = None


class EnvBuilds:
    """Builds in flight, one thread per environment key; outcomes collected by the runtime's thread.

    Args:
        make: ``make(key, source) -> (environment, zygote)``, run on the build's
            own thread (may raise: the outcome then carries the error); ``source``
            is the ``deps.source.WheelSource`` given to :meth:`start`.
        wake: called (any thread) once an outcome is ready.
    """

    def __init__(self, make: Callable[[str, Any], tuple[Any, Any]], wake: Callable[[], None]) -> None:
        self._make = make
        self._wake = wake
        self._threads: dict[str, threading.Thread] = {}
        self._done: collections.deque[Built] = collections.deque()
        self._closed = False
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        return key in self._threads

    def __bool__(self) -> bool:
        return bool(self._threads)

    def start(self, key: str, source: Any) -> None:
        """Build ``key`` from ``source`` on a thread of its own (once: a key already building is left alone)."""
        if key in self._threads:
            return
        t = threading.Thread(target=self._run, args=(key, source), name=f"loadmaster-env-{key[:12]}", daemon=True)
        self._threads[key] = t
        t.start()

    def _run(self, key: str, source: Any) -> None:
        try:
            env, zygote = self._make(key, source)
            out = Built(key, env, zygote)
        except BaseException as exc:  # DependencyError, WorkerLost, OSError: said to the orders that wait
            out = Built(key, error=exc)
        with self._lock:
            closed = self._closed
            if not closed:
                self._done.append(out)
        if closed and out.zygote is not None:  # the runtime closed meanwhile: nobody adopts it
            out.zygote.close()
        self._wake()

    def finished(self) -> list[Built]:
        """The builds that ended since the last call (the runtime's thread)."""
        out: list[Built] = []
        done = self._done
        while done:
            b = done.popleft()
            self._threads.pop(b.key, None)
            out.append(b)
        return out

    def close(self) -> list[Built]:
        """Wait for the builds in flight; return the outcomes not yet collected (their zygotes to close)."""
        for t in list(self._threads.values()):
            t.join()
        with self._lock:
            self._closed = True
        return self.finished()
