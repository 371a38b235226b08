"""Which of a task's permission errors the sandbox caused (run where the task ran)."""

from __future__ import annotations

import errno
import os

from loadmaster.node.sandbox.spec import SandboxState


def denied_path(exc: BaseException, state: SandboxState | None = None) -> str | None:
    """Return the path the sandbox probably denied, if ``exc`` (or its causes) shows one.

    Run in the task process on an exception that escaped user code (the
    executor's child records it in the report). A ``PermissionError`` (EACCES
    or EPERM) is attributed to the sandbox when Landlock was in force and the
    ordinary permission bits would have allowed the access: ``access(2)``
    checks the bits but not Landlock, so it tells the two apart. An
    ``OSError`` with ``EROFS`` counts when the read-only view was in force
    (a write or a metadata change outside the sandbox). Denials the task
    caught and handled itself are not seen (see ``docs/sandbox.md``).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, PermissionError) and e.errno in (errno.EACCES, errno.EPERM):
            path = e.filename if isinstance(e.filename, str) else None
            if path and (state is None or state.fs_rules) and _bits_allow(path):
                return path
        elif isinstance(e, OSError) and e.errno == errno.EROFS and (state is None or state.read_only_view):
            path = e.filename if isinstance(e.filename, str) else None
            if path:
                return path
        e = e.__cause__ or e.__context__
    return None


def _bits_allow(path: str) -> bool:
    if os.path.isdir(path):
        return os.access(path, os.R_OK | os.X_OK)
    if os.path.lexists(path):
        return os.access(path, os.R_OK) or os.access(path, os.W_OK)
    parent = os.path.dirname(path) or "."
    return os.access(parent, os.W_OK | os.X_OK)  # creation refused


_DENIED_RE = r"(/[^\s:'\"`]*)['\"`]?\s*[:)]?\s*(Permission denied|Read-only file system)"


def denied_paths_in_text(text: str, state: SandboxState | None = None) -> tuple[str, ...]:
    """Return the paths in a command's ``Permission denied`` (and ``Read-only file system``) lines
    that the sandbox denied.

    For shell-command tasks, whose ``PermissionError`` never reaches Python.
    A heuristic: a path counts when the permission bits would have allowed
    the access (see :func:`denied_path`). Run it where the task ran, while
    the files still exist.
    """
    if state is not None and not state.fs_rules:
        return ()
    out: list[str] = []
    import re

    for m in re.finditer(_DENIED_RE, text):
        p = m.group(1)
        if m.group(2) != "Permission denied":  # EROFS: the read-only view refused it
            if p not in out and (state is None or state.read_only_view):
                out.append(p)
        elif p not in out and _bits_allow(p):
            out.append(p)
    return tuple(out)

