"""Where the code of functions sent by value came from, to name it in their remote tracebacks (client).

cloudpickle sends a function defined in ``__main__`` (a script, a notebook
cell) by value, and names its code ``"<dynamic-code>"``; the task process
cannot read the script anyway (its sandbox) nor a notebook's cells. So a
remote traceback had ``File "<dynamic-code>", line 6, in outer`` and no
source. The client remembers, for each code object it sent by value (and the
functions of the same module it names), its name, file and lines
(:func:`remember`), and :func:`render` puts the file back in such a frame,
with its source line from the client's ``linecache`` (where IPython keeps
notebook cells). Only files this process's own code came from are read; the
traceback is the task's text, read as text.

Does not cover: pickling (``pickling.py``), the error itself (``schedule/outcome.py``).
"""

from __future__ import annotations

import linecache
import re
import threading
import types
from typing import Any

MAX_SPANS = 4096  # code objects remembered (oldest forgotten first)
MAX_WALK = 256    # code objects looked at per function remembered

_spans: dict[tuple[str, str, int], tuple[int, int]] = {}  # (name, file, first line) -> (first, last)
_lock = threading.Lock()
_FRAME = re.compile(r'^  File "<dynamic-code>", line (\d+), in (.+)$')


def _code_of(fn: Any) -> types.CodeType | None:
    fn = getattr(fn, "__func__", fn)
    fn = getattr(fn, "func", fn)  # functools.partial
    code = getattr(fn, "__code__", None)
    return code if isinstance(code, types.CodeType) else None


def remember(fn: Any) -> None:
    """Note where the code of ``fn``, sent by value, came from (and of what it names in its module)."""
    start = _code_of(fn)
    if start is None:
        return
    base = getattr(fn, "__func__", fn)
    base = getattr(base, "func", base)
    module = getattr(base, "__module__", None)
    globs: dict[str, Any] = getattr(base, "__globals__", {}) or {}
    todo: list[types.CodeType] = [start]
    seen: set[int] = set()
    found: list[tuple[tuple[str, str, int], tuple[int, int]]] = []
    while todo and len(seen) < MAX_WALK:
        code = todo.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        lines = [n for _, _, n in code.co_lines() if n is not None]
        found.append(((code.co_name, code.co_filename, code.co_firstlineno),
                      (min(lines, default=code.co_firstlineno), max(lines, default=code.co_firstlineno))))
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        for name in code.co_names:  # functions of the same module it calls go by value too
            other = globs.get(name)
            if isinstance(other, types.FunctionType) and other.__module__ == module:
                todo.append(other.__code__)
    with _lock:
        for key, span in found:
            _spans.pop(key, None)
            _spans[key] = span
        while len(_spans) > MAX_SPANS:
            _spans.pop(next(iter(_spans)))


def _where(name: str, line: int) -> str | None:
    with _lock:
        hits = [k[1] for k, (first, last) in _spans.items() if k[0] == name and first <= line <= last]
    return hits[-1] if hits else None  # the latest remembered


def render(tb: str) -> str:
    """``tb`` with each ``"<dynamic-code>"`` frame named by its file, and its source line added."""
    if "<dynamic-code>" not in tb:
        return tb
    lines = tb.splitlines()
    out: list[str] = []
    for i, text in enumerate(lines):
        m = _FRAME.match(text)
        where = _where(m[2], int(m[1])) if m else None
        if m is None or where is None:
            out.append(text)
            continue
        out.append(f'  File "{where}", line {m[1]}, in {m[2]}')
        source = linecache.getline(where, int(m[1])).strip()
        has_source = i + 1 < len(lines) and lines[i + 1].startswith("    ")
        if source and not has_source:
            out.append(f"    {source}")
    return "\n".join(out) + ("\n" if tb.endswith("\n") else "")
