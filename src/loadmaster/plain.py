"""Taking results from untrusted tasks: a pickle decoder that builds plain data only.

Who runs this code: the client (the engine thread), on the bytes a task sent
back as its result, when the executor was made with ``results="plain"``.

A pickle is a program: decoding one with ``pickle.loads`` may call any
importable function (an object's ``__reduce__`` names ``os.system`` and its
argument). :func:`loads` refuses every opcode that names a global
(``find_class`` raises), which is the only way a pickle reaches a callable, so
what comes back is built from ``None``, ``bool``, ``int``, ``float``,
``str``, ``bytes``, ``bytearray``, ``list``, ``tuple``, ``dict``, ``set`` and
``frozenset`` alone, nested as the task built them.

What it does *not* cover: the size of what is built (a task can return a
big result either way; the client holds it in memory), and exceptions (an
exception object is a class instance: in plain mode a task that raised is
reported with its traceback text only).
"""

from __future__ import annotations

import io
import pickle

from loadmaster.errors import UnsafeResult


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        raise UnsafeResult(
            f"the result names {module}.{name}: results='plain' accepts only None, bool, int, float, "
            "str, bytes, bytearray, list, tuple, dict, set and frozenset; return plain data, or use "
            "the default results='pickle' for tasks you trust"
        )

    def persistent_load(self, pid: object) -> object:
        raise UnsafeResult("the result uses a persistent id: results='plain' refuses it")


def loads(data: bytes) -> object:
    """Decode a pickle that holds plain data only.

    Raises:
        UnsafeResult: the pickle names a class or function (anything but plain data).
        pickle.UnpicklingError: the bytes are not a pickle.
    """
    return _PlainUnpickler(io.BytesIO(data)).load()
