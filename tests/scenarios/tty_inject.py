"""Issue 14 hole 5: a sandboxed program types into the caller's terminal with TIOCSTI; prints JSON.

Who runs this: ``tests/test_sandbox_attacks.py``, as root and as an ordinary
user. It makes a pseudo-terminal, makes it its own controlling terminal (as a
login shell's), then runs the injection (1) through ``loadmaster sandbox``
with the terminal as stdin and (2) as an ``Executor`` task. Afterwards it reads
the terminal's input queue: an injected character would be waiting there.

Usage: python tty_inject.py
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import sys
import termios

INJECT = r"""
import fcntl, os, termios
out = []
for label, opener in (("stdin", lambda: 0), ("/dev/tty", lambda: os.open("/dev/tty", os.O_RDWR))):
    try:
        fd = opener()
        fcntl.ioctl(fd, termios.TIOCSTI, b"Z")
        out.append(label + ":typed")
    except OSError as exc:
        out.append(label + ":" + (exc.strerror or str(exc)))
print(",".join(out))
"""


def inject_task() -> str:
    ns: dict[str, object] = {}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(INJECT, ns)
    return buf.getvalue().strip()


def typed(slave: int) -> str:
    """What waits in the terminal's input queue (what the shell would read and run next)."""
    got = b""
    while select.select([slave], [], [], 0)[0]:
        chunk = os.read(slave, 1024)
        if not chunk:
            break
        got += chunk
    return got.decode(errors="replace")


def main() -> None:
    os.setsid()  # a new session whose controlling terminal is the pty (as a shell's)
    _master, slave = os.openpty()  # the master end stays open: the terminal lives
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~(termios.ECHO | termios.ICANON)  # typed bytes are readable at once, one by one
    attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 0, 0
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    res: dict[str, object] = {}
    proc = subprocess.run(
        [sys.executable, "-m", "loadmaster.cli", "sandbox", "-q", "--", sys.executable, "-c", INJECT],
        stdin=slave, capture_output=True, text=True, timeout=60,
    )
    res["cli"] = proc.stdout.strip() or proc.stderr.strip()[-500:]
    res["cli_typed"] = typed(slave)
    import loadmaster

    os.dup2(slave, 0)
    with loadmaster.Executor(cores=1, memory="1GiB", history=":memory:") as ex:
        try:
            res["task"] = ex.submit(inject_task).result(timeout=60)
        except Exception as exc:
            res["task"] = f"raised:{exc}"
    res["task_typed"] = typed(slave)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
