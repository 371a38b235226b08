"""Pickling a function task in the client: its function (once per function) and its arguments.

Runs in the client, in the submitting thread. :class:`FunctionCache` pickles
each function once and names its bytes by a key the zygotes cache the
unpickled function under; it holds the functions it has seen *weakly* (a
bound method by its object), so a submitted callable, or the object of a
bound method, is collected once the caller drops it. :func:`dumps_args`
pickles a task's arguments (the C pickler where it can, cloudpickle for
lambdas and closures), and refuses a ``multiprocessing.Manager`` proxy.
:func:`cannot_pickle` is the ``TaskFailed`` of a task that cannot be sent,
with the pickling error as its ``__cause__``.

Does not cover: the zygote's side (``node/process/fnpickle.py``), results.
"""

from __future__ import annotations

import itertools
import pickle
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

from loadmaster import sources
from loadmaster.errors import InvalidSpec, TaskFailed

FN_CACHE_MAX = 1024  # distinct functions whose pickled bytes are kept


class FunctionCache:
    """Pickled functions by identity (held weakly) and by content (up to ``FN_CACHE_MAX`` each).

    Equal bytes get the same key, so a zygote is sent and keeps each
    distinct function once, whichever object it came from. A bound method
    is pickled at each submit, as ``concurrent.futures`` does: it carries its
    object, whose state may have changed since (equal bytes still share a key).
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[weakref.ref[Any], int, bytes]] = {}  # id(fn) -> (weak ref, key, bytes)
        self._by_bytes: dict[bytes, int] = {}
        self._keys = itertools.count(1)

    def entry(self, fn: Callable[..., Any]) -> tuple[int, bytes]:
        """Return ``(key, pickled bytes)`` of ``fn``, pickling it the first time it is seen.

        Raises whatever cloudpickle raises for a function it cannot pickle.
        """
        by_id = self._by_id
        e = by_id.get(id(fn))
        if e is not None and e[0]() is fn:
            return e[1], e[2]
        data = bytes(cloudpickle.dumps(fn, pickle.HIGHEST_PROTOCOL))
        if b"<dynamic-code>" in data:  # sent by value: remember where its code came from
            sources.remember(fn)
        key = self._by_bytes.get(data)
        if key is None:
            key = next(self._keys)
            if len(self._by_bytes) >= FN_CACHE_MAX:
                self._by_bytes.pop(next(iter(self._by_bytes)))
            self._by_bytes[data] = key
        if isinstance(fn, types.MethodType):  # made anew at each access; its object may change
            return key, data
        ident = id(fn)

        def forget(ref: weakref.ref[Any], ident: int = ident, by_id: dict[int, Any] = by_id) -> None:
            held = by_id.get(ident)
            if held is not None and held[0] is ref:
                by_id.pop(ident, None)

        try:
            entry = (weakref.ref(fn, forget), key, data)
        except TypeError:  # cannot be referenced weakly: pickled again at each submit
            return key, data
        if len(by_id) >= FN_CACHE_MAX:
            by_id.pop(next(iter(by_id)), None)
        by_id[ident] = entry
        return key, data


class _ManagerProxy(InvalidSpec):
    """A ``multiprocessing.Manager`` proxy met while pickling a task's arguments."""


def _refuse_proxy(obj: object) -> None:
    from multiprocessing.managers import BaseProxy

    if isinstance(obj, BaseProxy):
        raise _ManagerProxy(
            f"a multiprocessing.Manager proxy ({type(obj).__name__}) cannot be passed to a task: the task "
            "runs in a process of its own (sandboxed: its own /tmp, no network) that cannot reach the "
            "manager's server, and the proxy would arrive without its authentication key; pass the "
            "values themselves (e.g. list(proxy), dict(proxy)) and take results from the futures, or "
            "share data through files declared with ex.options(inputs=..., outputs=...)")


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: object) -> Any:
        _refuse_proxy(obj)
        return NotImplemented


class _CloudPickler(cloudpickle.Pickler):  # type: ignore[misc,name-defined,unused-ignore]
    def reducer_override(self, obj: object) -> Any:
        _refuse_proxy(obj)
        return super().reducer_override(obj)


def _dumps_checked(obj: object) -> bytes:
    import io

    for pickler in (_Pickler, _CloudPickler):
        buf = io.BytesIO()
        try:
            pickler(buf, pickle.HIGHEST_PROTOCOL).dump(obj)
        except _ManagerProxy:
            raise
        except Exception:
            if pickler is _CloudPickler:
                raise
            continue
        return buf.getvalue()
    raise AssertionError("unreachable")


def dumps_args(obj: object) -> bytes:
    """Pickle a task's arguments: the C pickler where it can (fast); cloudpickle for lambdas and closures.

    Raises:
        InvalidSpec: they hold a ``multiprocessing.Manager`` proxy (checked only
            once ``multiprocessing.managers`` has been imported).
        Exception: whatever the pickler raises for what it cannot pickle.
    """
    if "multiprocessing.managers" in sys.modules:
        return _dumps_checked(obj)
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return bytes(cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def _drop_frames(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and the errors it chains: their frames (each holding its
    caller's) hold the task's function and arguments, which the error must not keep alive."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        todo += [e.__cause__, e.__context__]


def cannot_pickle(task_id: int, category: str, exc: Exception) -> TaskFailed:
    """The error of a task whose function or arguments cannot be pickled; ``exc`` is its ``__cause__``."""
    _drop_frames(exc)
    err = TaskFailed(
        f"task {task_id} ({category}) cannot be sent to a task process: the function or its "
        f"arguments cannot be pickled ({type(exc).__name__}: {exc}); pass plain data, or "
        "objects cloudpickle can serialise", task_id=task_id, category=category)
    err.__cause__ = exc
    return err
