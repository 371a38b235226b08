"""Watching a task's stdout and stderr while it runs: ``stream=True`` or ``on_output=``.

Runs in the client. ``ex.options(stream=True)`` prints each line a task
writes, as it writes it, to the client's own stdout or stderr (whichever the
task wrote to), prefixed with the task's name (``[category #id] ``);
``ex.options(on_output=fn)`` calls ``fn(future, stream, line)`` instead
(``stream`` is ``"stdout"`` or ``"stderr"``). Without either, a task's output
is only kept on its report (``future.report.stdout``), as before.

The node reads a streamed task's growing output every ~0.1 s and sends the
new bytes up (``node/outputs.py``); here they are decoded as UTF-8 with
``errors="replace"`` and split into lines (a line longer than ``LINE_MAX``
comes in pieces; the last line of an attempt may lack its newline). A task's
bytes are hostile: the printer shows control characters (terminal escape
sequences included) as ``\\x1b``-style escapes, never as they are.

Callbacks run on loadmaster's callback thread (the one that runs futures'
done-callbacks), in order, never on the engine's loop: a slow callback delays
only other callbacks. When the future is done, every line its task wrote has
been handed over before ``result()`` or ``exception()`` returns. A retried
task's lines come again from its new attempt. Up to 4 MiB of each stream of
each attempt is streamed; the report keeps up to 16 MiB.

Does not cover: how the node reads the output (``node/outputs.py``).
"""

from __future__ import annotations

import codecs
import logging
import re
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadmaster.executor import TaskFuture

log = logging.getLogger("loadmaster.output")

OnOutput = Callable[["TaskFuture", str, str], None]
"""``on_output(future, stream, line)``: ``stream`` is ``"stdout"`` or ``"stderr"``."""

LINE_MAX = 64 << 10  # characters of a line without its end handed over in one piece

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(line: str) -> str:
    """``line`` with control characters (but tab and newline) shown as escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


class LinePrinter:
    """The callback of ``stream=True``: each line to the client's stdout or stderr, after ``prefix``."""

    def __init__(self, prefix: str, write: Callable[[str, Any], None] | None = None) -> None:
        self.prefix = prefix
        self._write = write  # (text, file); None: file.write

    def __call__(self, future: TaskFuture, stream: str, line: str) -> None:
        file = sys.stdout if stream == "stdout" else sys.stderr
        text = f"{self.prefix}{printable(line.rstrip(chr(10)))}\n"
        if self._write is not None:
            self._write(text, file)
        else:
            file.write(text)
            file.flush()


class OutputWatch:
    """One task's streamed output in the client: decoded, cut into lines, handed to the callback.

    Fed by the engine through the callback thread (:meth:`feed`, :meth:`close`);
    :meth:`wait` lets ``TaskFuture.result`` return only once every line is out.
    """

    def __init__(self, callback: OnOutput) -> None:
        self.callback = callback
        self.future: TaskFuture | None = None
        self._attempt = 0
        self._decoders: dict[str, Any] = {}
        self._partial: dict[str, str] = {}
        self._flushed = threading.Event()

    def feed(self, stream: str, attempt: int, data: bytes, final: bool) -> None:
        """Take new bytes of ``stream`` from ``attempt`` (``final``: its last)."""
        if attempt != self._attempt:
            self._flush()  # an attempt that was lost before its last bytes
            self._attempt = attempt
        dec = self._decoders.get(stream)
        if dec is None:
            dec = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        text = self._partial.pop(stream, "") + dec.decode(data, final)
        *lines, rest = text.split("\n")
        for line in lines:
            self._call(stream, line + "\n")
        while len(rest) > LINE_MAX:
            self._call(stream, rest[:LINE_MAX])
            rest = rest[LINE_MAX:]
        if final:
            self._decoders.pop(stream, None)
            if rest:
                self._call(stream, rest)
        elif rest:
            self._partial[stream] = rest

    def close(self) -> None:
        """The future is settled: hand over what is left, and let waiters go."""
        self._flush()
        self._flushed.set()

    def wait(self, timeout: float | None) -> None:
        """Wait (at most ``timeout`` s) until :meth:`close` has run."""
        self._flushed.wait(timeout)

    def _flush(self) -> None:
        for stream, dec in list(self._decoders.items()):
            rest = self._partial.pop(stream, "") + dec.decode(b"", True)
            if rest:
                self._call(stream, rest)
        self._decoders.clear()
        self._partial.clear()

    def _call(self, stream: str, line: str) -> None:
        try:
            self.callback(self.future, stream, line)  # type: ignore[arg-type]
        except Exception:
            log.exception("an on_output callback raised (the task goes on)")


def watch_for(stream: bool, on_output: OnOutput | None, prefix: str) -> OutputWatch | None:
    """The watch a task gets from its options (``None``: not streamed)."""
    if on_output is not None:
        return OutputWatch(on_output)
    if stream:
        return OutputWatch(LinePrinter(prefix))
    return None
