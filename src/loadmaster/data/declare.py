"""Declared files at submit: from the ``File``/``Output`` a task names to its :class:`DataOrder`.

Runs in the client, in the submitting thread (``executor.py``): each input is
named by content (hashed once per ``(device, inode, size, mtime, path)``
through the memo shared with this host's cache) and given its sources (nodes
holding it ready, then the submitter's own file); each output's directory is
checked. Errors are raised here, at submit, not later in the task.

Does not cover: what a node does with the order (``data/stage.py``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from loadmaster.data.digest import HashMemo
from loadmaster.data.files import File, Output
from loadmaster.data.refs import DataOrder, InputRef, OutputRef, Source
from loadmaster.data.replicas import ReplicaTable
from loadmaster.errors import InvalidSpec

HOST = socket.gethostname()


def declare(seen: Sequence[File | Output], memo: HashMemo, replicas: ReplicaTable,
            argv: tuple[tuple[int, str], ...] = ()) -> DataOrder:
    """The :class:`DataOrder` of the files a task declared (duplicates counted once).

    Raises:
        InvalidSpec: an input that neither exists nor was kept by an earlier
            task; an output whose directory does not exist; a path declared
            both as an input and an output.
    """
    inputs: dict[str, InputRef] = {}
    outputs: dict[str, OutputRef] = {}
    for f in seen:
        if type(f) is Output:
            if not f.keep and not os.path.isdir(os.path.dirname(f.path)):
                raise InvalidSpec(f"Output({f.path!r}): its directory does not exist; create it first "
                                  "(the output is copied there when the task succeeds)")
            outputs[f.path] = OutputRef(f.path, f.keep or outputs.get(f.path, OutputRef(f.path)).keep)
            continue
        if f.path in inputs:
            continue
        kept = replicas.kept_output(f.path)
        if kept is not None:
            inputs[f.path] = InputRef(f.path, kept.digest, kept.size, kept.kind, replicas.sources(kept.digest))
            continue
        try:
            digest, size, kind = memo.path(f.path)
        except OSError as exc:
            raise InvalidSpec(f"File({f.path!r}) cannot be read here ({exc.strerror or exc}); declare an existing "
                              "file or directory, or the path an earlier task wrote with Output(..., keep=True)"
                              ) from exc
        inputs[f.path] = InputRef(f.path, digest, size, kind,
                                  (*replicas.sources(digest), Source("client", HOST, f.path)))
    both = sorted(set(inputs) & set(outputs))
    if both:
        raise InvalidSpec(f"{both[0]!r} is declared both as a File and as an Output; a task writes a new "
                          "path and reads the old one (name the output differently)")
    return DataOrder(tuple(inputs.values()), tuple(outputs.values()), argv)


def input_bytes(data: DataOrder) -> int:
    """The sum of the declared inputs' sizes (the task's input size for sizing)."""
    return sum(r.size for r in data.inputs)
