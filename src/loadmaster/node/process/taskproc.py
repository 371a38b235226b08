"""The task process: what runs in a child right after the zygote forks it.

This code runs in the forked child only, never returns, and ends with
``os._exit``. It is single-threaded (the zygote is), so it may join a cgroup
or enter namespaces. In order:

1. Close the zygote's fds to the client; start a new session (so the
   zygote can kill the whole tree). The zygote installs no signal handlers,
   so there are none to undo. Set the task's thread-count variables and GPUs
   (``taskenv.py``). A function's stdout and stderr are already the two
   capture files the zygote made for it (``running.py``; it dups them onto
   fds 1 and 2 across the fork).
2. Start measuring: join the task's memory cgroup slot if there is one
   (what the kernel charges the whole tree, page cache included), and note
   this process's high-water mark, which is its resident size now (its own
   memory, exact: the kernel starts a forked process's mark at its resident
   size at the fork, so the zygote's past peak is not in it, and nothing
   needs resetting).
3. Run: a function is called with its unpickled arguments and its result
   pickled (every fd but 0, 1, 2 and the report socket is closed first); a
   command replaces this process (``execvpe``) with stdout and stderr sent
   to files.
4. Send one datagram to the zygote (``protocol.child_report``: numbers, texts
   and the payload's bytes, a memfd when large; never a pickle or a path),
   with this process's own peak above its start.

Errors the task raises travel back pickled with their formatted traceback; a
result or exception that cannot be pickled comes back as text saying so.
"""

from __future__ import annotations

import _pickle as pickle  # see protocol.py
import _signal as signal  # signal.py pulls in enum
import _socket
import os
import sys

from loadmaster.node.measure import procfs
from loadmaster.node.process import fnpickle, taskenv
from loadmaster.node.process.protocol import (
    DATAGRAM_MAX,
    PICKLE_PROTOCOL,
    STATUS_BROKEN,
    STATUS_EXEC,
    STATUS_OK,
    STATUS_RAISED,
    STATUS_STARTED,
    CommandSpec,
    RunOrder,
    child_report,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


_FD_END = 1 << 30  # os.closerange's end: close_range(2) takes any bound


def _send(sock: Any, task_id: int, status: int, payload: bytes, peak: int, denied: list[str] | tuple[str, ...] = (),
          imported: list[str] | tuple[str, ...] = ()) -> None:
    """Send the result report (``protocol.child_report``); a large payload goes in a memfd passed along."""
    if len(payload) > DATAGRAM_MAX:
        fd = os.memfd_create("loadmaster-result", os.MFD_CLOEXEC)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            head = child_report(task_id, status, peak, b"", None, denied, in_fd=True, imported=imported)
            sock.sendmsg([head], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
        finally:
            os.close(fd)
    else:
        sock.send(child_report(task_id, status, peak, payload, None, denied, imported=imported))


def _dumps(obj: object) -> bytes:
    """Pickle with the C pickler (fast, few pages touched); cloudpickle for what it cannot do."""
    try:
        return pickle.dumps(obj, PICKLE_PROTOCOL)
    except Exception:
        import cloudpickle  # imported only when needed: it adds ~5 MB to the zygote

        return bytes(cloudpickle.dumps(obj, PICKLE_PROTOCOL))


def _format(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


def _pickle_exception(exc: BaseException) -> bytes:
    tb = _format(exc)
    try:
        return _dumps((exc, tb))
    except Exception as pickling_error:
        text = (
            f"{type(exc).__name__}: {exc}\n(the exception itself could not be pickled: "
            f"{pickling_error})\n{tb}"
        )
        return _dumps((None, text))


def child_main(
    order: RunOrder,
    fn: Callable[..., Any] | None,
    *,
    sock: Any,
    close_fds: tuple[int, ...],
    slot_fd: int | None,
    reseed: bool,
    command: CommandSpec | None,
    sandbox_dirs: Any = None,
    pinned: tuple[str, ...] = (),
    slot_box: Any = None,
) -> None:
    """Run one task attempt in this freshly forked process; never returns.

    Kept to the fewest steps: every page this code touches is a copy-on-write
    fault (~3 µs here), and this runs once per task.

    ``slot_box``: forked by a slot's forker (``slotforker.py``), which is in the
    slot's sandbox already but for Landlock: ``(ruleset, pids cgroup fd or
    -1, SandboxState)``; this process joins the pids cgroup and enforces the
    ruleset (``sandbox.child.enter_task``) before user code, or does not run it.
    """
    code = 0
    try:
        for fd in close_fds:
            os.close(fd)
        os.setsid()  # its own session and group: no controlling terminal (TIOCSTI), killpg-able
        if reseed and "random" in sys.modules:  # what CPython's at-fork hook would have done
            sys.modules["random"].seed(int.from_bytes(os.urandom(16), "little"))
        if order.threads != 1 or order.gpu_ids:
            taskenv.for_task(os.environ, pinned, order.threads, order.gpu_ids)
        if slot_fd is not None:
            os.write(slot_fd, b"0")
        # The own high-water mark is measured with a cgroup slot too: the slot's peak
        # charges the page cache of every file read or written, which is not the task's.
        # fork (dup_mm) set this process's mark to its resident size then, not to the
        # zygote's past peak: no clear_refs reset (three system calls) is needed, and
        # the mark now is the resident size now, as after a reset.
        base = procfs.self_hwm()
        out_fds = _open_outputs(command) if command is not None else None
        extra: dict[str, Any] | None = None
        denied: list[str] = []
        state = None
        if slot_box is not None:
            rs, pids_fd, state = slot_box
            if pids_fd >= 0:
                os.write(pids_fd, b"0")
            if rs is not None:
                from loadmaster.node.sandbox.child import enter_task

                enter_task(rs)
        elif sandbox_dirs is not None and order.sandbox is not None:
            from loadmaster.node.sandbox import policy as sandbox

            policy, inputs, outputs = order.sandbox
            if command is not None and command.cwd and sandbox.cwd_may_be_written(command.cwd):
                outputs = (*outputs, command.cwd)  # the directory the user chose to run in
            state = sandbox.enter(policy, sandbox_dirs, inputs=inputs, outputs=outputs)
            extra = {"sandbox": state.as_dict()}
            if command is None:  # the report of what is in force goes out before user code runs
                sock.send(child_report(order.task_id, STATUS_STARTED, 0, b"", extra["sandbox"]))
        if command is not None:
            assert out_fds is not None
            _exec(command, sock, order, out_fds, extra)
        assert fn is not None
        # Fork without exec keeps every fd of the zygote, close-on-exec or not:
        # other slots' cgroup files, other tasks' pidfds, namespace fds. User code
        # keeps only stdin, stdout, stderr and the report socket.
        _close_all_but(sock.fileno())
        n_modules = len(sys.modules)
        try:
            args, kwargs = fnpickle.loads(order.payload)
            result = fn(*args, **kwargs)
        except BaseException as exc:
            status, payload = STATUS_RAISED, _pickle_exception(exc)
            if state is not None and isinstance(exc, OSError):
                from loadmaster.node.sandbox import policy as sandbox

                path = sandbox.denied_path(exc, state)
                if path:
                    denied.append(path)
        else:
            try:
                status, payload = STATUS_OK, _dumps(result)
            except Exception as exc:
                status = STATUS_RAISED
                payload = _dumps((
                    None,
                    f"the task returned a {type(result).__qualname__} that cannot be "
                    f"pickled ({type(exc).__name__}: {exc}); return plain data, or write "
                    "the object to a file and return its path",
                ))
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                try:
                    stream.flush()
                except Exception:
                    pass
        peak = max(0, procfs.self_hwm() - base)
        _send(sock, order.task_id, status, payload, peak, denied,
              _imported(n_modules) if len(sys.modules) != n_modules else ())
    except BaseException as exc:
        code = 70
        try:
            _send(
                sock, order.task_id, STATUS_BROKEN,
                f"the task process failed before or after the task ran: "
                f"{_format(exc)}".encode(),
                0,
            )
        except BaseException:
            pass
    finally:
        os._exit(code)


def _imported(before: int) -> list[str]:
    """Top-level names of the modules imported since ``sys.modules`` held ``before`` (deps/ learns them).

    ``sys.modules`` keeps insertion order: what the run imported is at its end.
    """
    names: list[str] = []
    for i, name in enumerate(sys.modules):
        if i >= before:
            top = name.partition(".")[0]
            if top not in names and not top.startswith("_") and top not in sys.stdlib_module_names:
                names.append(top)
                if len(names) >= 32:
                    break
    return names


def _close_all_but(keep: int) -> None:
    """Close every fd from 3 up except ``keep`` (two ``close_range`` calls)."""
    if keep > 3:
        os.closerange(3, keep)
    os.closerange(max(3, keep + 1), _FD_END)


def _open_outputs(cmd: CommandSpec) -> tuple[int, int, int]:
    """Open the command's stdin, stdout and stderr files (before any sandbox hides their paths)."""
    out = os.open(cmd.stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    err = os.open(cmd.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return null, out, err


def _exec(cmd: CommandSpec, sock: Any, order: RunOrder, fds: tuple[int, int, int],
          extra: dict[str, Any] | None) -> None:
    """Replace this process with the command (only returns by raising)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the zygote ignores it; exec would keep that
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    if cmd.cwd:
        os.chdir(cmd.cwd)
    # os.environ is the user's, with this task's threads and GPUs (child_main); an env
    # of the command's own gets them too (taskenv.py).
    env = dict(os.environ) if cmd.env is None else taskenv.explicit(cmd.env, order.threads, order.gpu_ids)
    if extra is not None and cmd.env is not None:
        for var in ("TMPDIR", "TMP", "TEMP", "HOME", "PWD"):
            if var in os.environ:
                env[var] = os.environ[var]
    if cmd.cwd:
        env["PWD"] = cmd.cwd
    box = extra.get("sandbox") if extra else None
    sock.send(child_report(order.task_id, STATUS_EXEC, procfs.self_hwm(), b"", box))
    sock.close()
    try:
        os.execvpe(cmd.argv[0], cmd.argv, env)
    except OSError as exc:
        os.write(2, f"loadmaster: cannot run {cmd.argv[0]!r}: {exc.strerror}\n".encode())
        os._exit(127)
