"""``File`` and ``Output``: declared inputs and outputs, passed anywhere in a task's arguments.

Runs in the client (declaring) and in the task process (using). In the
client, ``File(path)`` names a file or directory the task reads;
``Output(path)`` one it writes. The executor finds them wherever they are in
the arguments (inside lists, tuples, dicts, objects) as a by-product of
pickling them: each one notes itself in the :func:`collecting` list while
pickled, so tasks without files pay nothing to search.

In the task, each unpickles as the same class holding the node-local path:
``os.fspath(f)`` (hence ``open(f)``) is the staged copy of an input (read
only) or where to write an output. The node runtime supplies that mapping by
wrapping the task's payload (:func:`wrap_payload`); it never reads the
payload itself. ``File(p)`` made in the task for a declared ``p`` resolves the
same way.

Does not cover: hashing, caching, staging (``data/digest.py``, ``data/cache.py``,
``data/stage.py``).
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module
if TYPE_CHECKING:
    from typing import Any

_INPUTS: dict[str, str] = {}   # in the task: submitter path -> staged path
_OUTPUTS: dict[str, str] = {}  # in the task: submitter path -> where to write
_collect = threading.local()


class File(os.PathLike):
    """A declared input: a file or directory the task reads.

    ``File(path)`` in a task's arguments (anywhere, also as an argv element of
    a command) stages ``path`` into the node's cache before the task runs (by
    content: the same bytes under another path are not moved again) and the
    task sees the staged copy: ``os.fspath(f)``, ``open(f)``, ``str(f)``. The
    task's input size (for size-aware sizing) is the sum of its inputs' sizes
    unless ``size=`` says otherwise. A path an earlier task wrote with
    ``Output(path, keep=True)`` names that task's kept output.

    Attributes:
        path: the absolute path (in the task: the node-local one).
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = os.path.abspath(os.fspath(path))
        self.path = _INPUTS.get(p, p)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"File({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.path == self.path

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.path))

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        seen = getattr(_collect, "seen", None)
        if seen is not None:
            seen.append(self)
        return (_input, (self.path,))


class Output(os.PathLike):
    """A declared output: a file or directory the task writes.

    In the task, ``os.fspath(o)`` is a path in the task's own output directory
    on the node (its parent exists; the task creates the file or directory).
    After the task succeeds the node puts it in its cache and copies it to
    ``path`` atomically (written to a temporary name, then renamed: a failed
    task leaves nothing there). With ``keep=True`` it stays in the producing
    node's cache only, for later tasks to read as ``File(path)``.

    Attributes:
        path: the submitter's absolute path (in the task: the node-local one).
        keep: leave it in the node's cache instead of copying it back.
    """

    __slots__ = ("keep", "path")

    def __init__(self, path: str | os.PathLike[str], *, keep: bool = False) -> None:
        p = os.path.abspath(os.fspath(path))
        self.path = _OUTPUTS.get(p, p)
        self.keep = bool(keep)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"Output({self.path!r}{', keep=True' if self.keep else ''})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (other.path, other.keep) == (self.path, self.keep)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.path, self.keep))

    def __reduce__(self) -> tuple[Any, tuple[str, bool]]:
        seen = getattr(_collect, "seen", None)
        if seen is not None:
            seen.append(self)
        return (_output, (self.path, self.keep))


def _input(path: str) -> File:
    return File(path)


def _output(path: str, keep: bool) -> Output:
    return Output(path, keep=keep)


class collecting:
    """``with collecting() as seen:`` appends each ``File``/``Output`` pickled in this thread to ``seen``."""

    def __enter__(self) -> list[File | Output]:
        self.seen: list[File | Output] = []
        _collect.seen = self.seen
        return self.seen

    def __exit__(self, *exc: object) -> None:
        _collect.seen = None


class _Staged:
    """What the node runtime pickles around a task's payload (see :func:`wrap_payload`)."""

    __slots__ = ("inner", "inputs", "outputs")

    def __init__(self, inputs: dict[str, str], outputs: dict[str, str], inner: bytes) -> None:
        self.inputs, self.outputs, self.inner = inputs, outputs, inner

    def __reduce__(self) -> tuple[Any, tuple[dict[str, str], dict[str, str], bytes]]:
        return (_unwrap, (self.inputs, self.outputs, self.inner))


def _unwrap(inputs: dict[str, str], outputs: dict[str, str], inner: bytes) -> Any:
    """In the task: install the node-local paths, then unpickle the task's own ``(args, kwargs)``."""
    from loadmaster.node.process import fnpickle

    _INPUTS.update(inputs)
    _OUTPUTS.update(outputs)
    return fnpickle.loads(inner)


def wrap_payload(inputs: dict[str, str], outputs: dict[str, str], payload: bytes) -> bytes:
    """A payload that, unpickled in the task, maps declared paths to node-local ones and yields ``payload``'s.

    The node pickles only its own plain values around the client's bytes; it never unpickles them.
    """
    import _pickle

    return bytes(_pickle.dumps(_Staged(inputs, outputs, payload), protocol=5))
