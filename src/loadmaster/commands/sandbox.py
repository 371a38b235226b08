"""``loadmaster sandbox [--allow-read P] [--allow-write P] [--network] -- CMD``.

Runs any program in the same sandbox a task gets (private ``/tmp`` and
``/dev/shm``, a fresh work directory, Landlock file rules), like
``parrot_run`` but without ptrace: once set up, the program's system calls run
at full speed.

Process model: this command (the parent) creates the sandbox directories,
forks; the child enters the sandbox (:func:`loadmaster.node.sandbox.policy.enter`)
and ``exec``\\ s the program. The parent forwards the program's stderr (keeping
its tail to spot denied paths), waits for it, then reports on stderr what it
left behind and removes the sandbox. The exit status is the program's (128 +
N when killed by signal N; 127 when it cannot be found, 126 when it cannot be
executed).

What it does *not* cover: resource limits or measurement (``loadmaster
monitor``), waiting for background processes the program left running (their
files are counted and removed when the program itself exits).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from typing import Any

from loadmaster.node.sandbox import policy as sb

NAME = "sandbox"
HELP = "Run a program in a task sandbox: private /tmp, fresh work dir, Landlock file rules."

_TAIL_BYTES = 64 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's options to ``parser``."""
    parser.add_argument("--allow-read", action="append", default=[], metavar="PATH", help="also allow reading PATH")
    parser.add_argument(
        "--allow-write",
        action="append",
        default=[],
        metavar="PATH",
        help="also allow writing PATH (a directory: its whole tree)",
    )
    parser.add_argument("--network", action="store_true", help="allow TCP connect/bind (denied by default)")
    parser.add_argument(
        "--allow-port",
        action="append",
        type=int,
        default=[],
        metavar="PORT",
        help="allow TCP connections to PORT even without --network",
    )
    parser.add_argument("--cwd", metavar="DIR", help="run in DIR instead of the fresh work directory")
    parser.add_argument("--no-landlock", action="store_true", help="no file-access rules")
    parser.add_argument("--no-private-tmp", action="store_true", help="share the node's /tmp")
    parser.add_argument(
        "--sandbox-dir",
        metavar="DIR",
        default=None,
        help=f"where to create the sandbox (default: {sb.default_parent_dir()})",
    )
    parser.add_argument("--report-json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no report on stderr")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def run(args: argparse.Namespace) -> int:
    """Run the command in a sandbox; return its exit status (see the module docstring)."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "loadmaster sandbox: no command given; usage: loadmaster sandbox -- CMD",
            file=sys.stderr,
        )
        return 2
    policy = sb.Sandbox(
        private_tmp=not args.no_private_tmp,
        landlock=not args.no_landlock,
        allow_read=tuple(args.allow_read),
        allow_write=tuple(args.allow_write),
        network=args.network,
        allow_connect_ports=tuple(args.allow_port),
    )
    cwd = os.path.abspath(args.cwd) if args.cwd else None
    dirs = sb.prepare(policy, args.sandbox_dir or sb.default_parent_dir(), 0)
    state_r, state_w = os.pipe()
    err_r, err_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    # Daemons the program leaves (setsid, double fork) are reparented to us, not to init,
    # and are ended with it (_end_strays).
    import ctypes

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    pid = os.fork()
    if pid == 0:  # child: enter the sandbox, then become the program
        os.close(state_r)
        os.close(err_r)
        os.dup2(err_w, 2)
        os.close(err_w)
        _child(policy, dirs, cmd, cwd, state_w)
    os.close(state_w)
    os.close(err_w)
    # The program has a session of its own (no controlling terminal): ^C, hang-up and
    # SIGTERM reach it through us; we wait for it and clean up.
    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        tail, strays = _forward(err_r, pid)
        state_raw = _read_all(state_r)
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    exit_code = _exit_status(status)
    state_info, exec_error = _parse_state(state_raw)
    leftovers = sb.collect(dirs)
    denied: tuple[str, ...] = ()
    if state_info.get("fs_rules"):
        denied = sb.denied_paths_in_text(tail.decode(errors="replace"))
    report = {
        "command": cmd,
        "exit_status": exit_code,
        "sandbox": state_info,
        "leftovers": leftovers.as_dict(),
        "denied": list(denied),
        "error": exec_error,
        "stray_processes_killed": strays,
    }
    if args.report_json:
        with open(args.report_json, "w") as f:
            json.dump(report, f, indent=1)
    if exec_error:
        print(f"loadmaster sandbox: {exec_error}", file=sys.stderr)
    if not args.quiet:
        print(_describe(report), file=sys.stderr)
    return exit_code


def _child(policy: sb.Sandbox, dirs: sb.SandboxDirs, cmd: list[str], cwd: str | None, fd: int) -> None:
    code = 127
    try:
        # A session of its own, without the terminal as its controlling tty (bwrap's
        # --new-session): TIOCSTI could otherwise type commands into the caller's shell.
        os.setsid()
        state = sb.enter(policy, dirs)
        os.write(fd, json.dumps(state.as_dict()).encode() + b"\n")
        if cwd:
            os.chdir(cwd)
            os.environ["PWD"] = cwd
        os.set_inheritable(fd, False)
        os.execvp(cmd[0], cmd)
    except FileNotFoundError as exc:
        msg = f"cannot run {cmd[0]!r}: not found ({exc})"
    except PermissionError as exc:
        code = 126
        msg = f"cannot run {cmd[0]!r}: {exc}"
    except BaseException as exc:  # anything else before exec: report it, never run user code
        code = 126
        msg = f"cannot start {cmd[0]!r} in the sandbox: {type(exc).__name__}: {exc}"
    try:
        os.write(fd, b"ERROR " + msg.encode() + b"\n")
    finally:
        os._exit(code)


def _end_strays(program: int) -> int:
    """SIGKILL and reap what the program left running (reparented to us); return how many.

    The program's own (exited, unreaped) process is left for ``waitpid``.
    """
    killed = 0
    while True:
        try:
            with open(f"/proc/self/task/{os.getpid()}/children") as fh:
                kids = [int(p) for p in fh.read().split() if int(p) != program]
        except OSError:
            return killed
        if not kids:
            return killed
        for p in kids:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
                os.waitpid(p, 0)
                killed += 1


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _forward(fd: int, pid: int) -> tuple[bytes, int]:
    """Copy the program's stderr to ours until it closes; return the last 64 KiB and the strays killed.

    When the program itself has ended, whatever it left running (which may
    hold the pipe open) is ended too, so the copy reaches its end.
    """
    import select

    tail = bytearray()
    out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    pidfd = os.pidfd_open(pid)
    strays = 0
    try:
        while True:
            ready, _, _ = select.select([fd] if pidfd < 0 else [fd, pidfd], [], [])
            if pidfd in ready:
                os.close(pidfd)
                pidfd = -1
                strays = _end_strays(pid)
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            if out is not None:
                out.write(chunk)
                out.flush()
            tail += chunk
            if len(tail) > _TAIL_BYTES:
                del tail[: len(tail) - _TAIL_BYTES]
    finally:
        os.close(fd)
        if pidfd >= 0:
            os.close(pidfd)
    return bytes(tail), strays


def _parse_state(raw: bytes) -> tuple[dict[str, Any], str]:
    state: dict[str, Any] = {}
    error = ""
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("ERROR "):
            error = line[6:]
        elif line.startswith("{"):
            state = json.loads(line)
    return state, error


def _describe(report: dict[str, Any]) -> str:
    st = report["sandbox"]
    lo = report["leftovers"]
    if st:
        prot = sb.SandboxState(**{**st, "notes": tuple(st.get("notes", ()))}).summary()
    else:
        prot = "sandbox not entered"
    lines = [f"loadmaster sandbox: exit {report['exit_status']}; {prot}"]
    for note in st.get("notes", ()):
        lines.append(f"  note: {note}")
    if lo["files"]:
        biggest = ", ".join(f"{p} ({n} B)" for p, n in lo["largest"])
        lines.append(f"  left {lo['files']} file(s), {lo['bytes']} B, removed; largest: {biggest}")
    else:
        lines.append("  left nothing behind")
    for err in lo["errors"]:
        lines.append(f"  could not remove: {err}")
    if report["denied"]:
        lines.append(f"  denied by the sandbox: {', '.join(report['denied'])}")
    return "\n".join(lines)
