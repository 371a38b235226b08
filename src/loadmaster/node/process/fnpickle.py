"""Unpickle functions that cloudpickle shipped by value, without importing cloudpickle (zygote and task process).

A function defined in ``__main__`` (a script, a notebook) cannot be imported on
the node, so the client's cloudpickle sends its code by value. Unpickling that
stream normally imports cloudpickle, which adds ~1.7 MB to the zygote: every
fork then copies ~500 more page-table entries and each task costs ~95 µs more
(measured here: a fork loop with and without ``import cloudpickle``, 50 µs in
the parent, 45 µs in the child).

Plain functions, lambdas and closures need only six small helpers of
``cloudpickle.cloudpickle``; :class:`_Unpickler` serves those itself. Any other
name of that module (classes and enums defined by value, empty-cell sentinels,
modules by value, ...) makes it give up, and the stream is unpickled again
with the real cloudpickle. It is used only where :func:`enable` was called
(the zygote does, when the client runs cloudpickle 3, whose stream layout the
helpers below follow) and while cloudpickle is not imported anyway.

Does not cover: pickling (the client's cloudpickle does that), results (the
task process pickles them with the standard pickler).
"""

from __future__ import annotations

import _pickle as pickle  # see protocol.py
import builtins
import io
import sys
import types

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

_CLOUDPICKLE = "cloudpickle.cloudpickle"
_enabled = False


def enable() -> None:
    """Serve cloudpickle's function streams here from now on (in this process and its forks)."""
    global _enabled
    _enabled = True


def loads(data: bytes) -> Any:
    """Unpickle ``data``; a function cloudpickle sent by value is rebuilt without importing it when possible."""
    if not _enabled or b"cloudpickle" not in data or "cloudpickle" in sys.modules:
        return pickle.loads(data)  # (a stream that names no cloudpickle helper needs none)
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except _NeedsCloudpickle:
        return pickle.loads(data)


class _NeedsCloudpickle(Exception):
    """The stream names a cloudpickle helper served only by cloudpickle itself."""


def _builtin_type(name: str) -> Any:
    return type if name == "ClassType" else getattr(types, name)


def _subimport(name: str) -> Any:
    __import__(name)
    return sys.modules[name]


def _make_function(code: Any, fn_globals: dict[str, Any], name: str, defaults: Any, closure: Any) -> Any:
    fn_globals["__builtins__"] = builtins.__dict__
    return types.FunctionType(code, fn_globals, name, defaults, closure)


def _make_empty_cell() -> Any:
    return types.CellType()


def _make_cell(*value: Any) -> Any:
    return types.CellType(*value)


def _function_setstate(fn: Any, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    # __globals__ and __closure__ are read-only attributes: filled in place.
    attributes, slots = state
    fn.__dict__.update(attributes)
    slots = dict(slots)
    fn_globals = slots.pop("__globals__")
    closure = slots.pop("__closure__")
    slots.pop("_cloudpickle_submodules", None)  # only held the submodules while they were imported
    fn.__globals__.update(fn_globals)
    fn.__globals__["__builtins__"] = builtins.__dict__
    if closure is not None:
        for cell, given in zip(fn.__closure__, closure, strict=True):
            try:
                cell.cell_contents = given.cell_contents
            except ValueError:  # an empty cell stays empty
                pass
    for name, value in slots.items():
        setattr(fn, name, value)


_SERVED = {
    "_builtin_type": _builtin_type,
    "subimport": _subimport,
    "_make_function": _make_function,
    "_make_empty_cell": _make_empty_cell,
    "_make_cell": _make_cell,
    "_function_setstate": _function_setstate,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == _CLOUDPICKLE:
            helper = _SERVED.get(name)
            if helper is None:
                raise _NeedsCloudpickle(name)
            return helper
        return super().find_class(module, name)
