"""A forker per namespace slot: a process already in the slot's sandbox that forks its tasks.

Process model::

    zygote (unsandboxed)                     slot forker (one per slot)               task
    ────────────────────                     ─────────────────────────                ────
    fork once per slot ────────────────▶     join the slot's namespaces, chdir,
                                             environment, capabilities dropped,
                                             seccomp, process limit; build the
    ◀── its SandboxState (child_report) ──   Landlock ruleset (not enforced)
    order: task id, fn key, args,
      fds: stdout, stderr, cgroup ──────▶    clone(CLONE_PARENT) ──────────────────▶  pids cgroup, Landlock with
    ◀──────────── (task id, pid) ─────────                                            its own /proc/<pid>, user code
    pidfd, wait4, report, collect  ◀──────────────────── datagram, exit ───────────

What a sandboxed function task of the default kind costs then is its fork, one
Landlock ``restrict_self`` and its report: the rest of ``sandbox.enter`` (about
two thirds of it: namespaces, environment, capabilities, seccomp) is done once
per slot. The task is forked with ``CLONE_PARENT``: its parent is the zygote,
which reaps it with ``wait4`` and measures it exactly as a task it forked itself
(rusage, cgroup slot, sampling, strays, the report datagram from the task's own
pid).

Trust: the forker runs no user code and reads orders only from the zygote
(a socketpair whose forker end every task closes first thing). The zygote reads
from the forker fixed binary records only (``child_report`` once, then
``REPLY``), never a pickle. A task cannot signal or ptrace the forker (Landlock's
scoping: the forker is outside the task's domain); where the kernel lacks
scoping, a task that kills its forker only makes the zygote make another one
and start the next order there (an order the dead forker never answered is run
again, not charged).

Who uses the fast path: function tasks in a namespace slot whose policy is
the forker's, with no declared inputs or outputs and no ``allow_write``
(those need rules and binds of their own), and arguments small enough for one
datagram; whose function the forker holds (it has the zygote's functions as
of its fork: one it lacks runs on the zygote's own path, and a function seen
twice that way makes the zygote make the forker again). Everything else takes
the zygote's per-task path (``sandbox.prepare`` + ``sandbox.enter``).

Without a reliable ``CLONE_PARENT`` (the thread descriptor's tid field must be
found, see :func:`tid_offset`) there is no forker, and every task takes the
per-task path.
"""

from __future__ import annotations

import _pickle as pickle  # see protocol.py
import _signal as signal  # signal.py pulls in enum
import _socket
import ctypes
import os
import struct

from loadmaster.node.process.protocol import (
    KIND_FUNCTION,
    PICKLE_PROTOCOL,
    STATUS_STARTED,
    RunOrder,
    child_report,
    read_child_report,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

REPLY = struct.Struct("=qi")  # task id, pid of the forked task (-1: the forker lacks the function)
ORDER_MAX = 64 * 1024  # an order (its arguments) larger than this takes the zygote's own path
REBUILD_EVERY = 64  # tasks after which the forker builds its Landlock ruleset afresh (see child.enter_task)
MISSES_BEFORE_REMAKE = 2  # orders of one function the forker lacked before it is made again

CLONE_PARENT = 0x00008000
CLONE_CHILD_SETTID = 0x01000000
CLONE_CHILD_CLEARTID = 0x00200000
SIGCHLD = 17
PR_SET_PDEATHSIG = 1
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}

_libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across clone, as for the zygote's fork
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_pthread_self = _libc.pthread_self
_pthread_self.restype = ctypes.c_void_p
_TID_SCAN = 2048  # bytes of glibc's thread descriptor searched for its tid field


def tid_candidates() -> list[int]:
    """Offsets in this thread's descriptor holding its tid (run in the zygote before forking a forker)."""
    base = _pthread_self()
    tid = os.getpid()  # the zygote is single-threaded: its only thread's tid is its pid
    if not base:
        return []
    return [off for off in range(0, _TID_SCAN, 4) if ctypes.c_int.from_address(base + off).value == tid]


def tid_offset(candidates: list[int]) -> int:
    """The offset of glibc's ``struct pthread.tid``: the candidate whose value fork changed to our pid; -1 if not one.

    glibc's ``fork`` has the kernel write the child's tid there
    (``CLONE_CHILD_SETTID``); :func:`clone_parent` does the same, so that
    ``raise`` and ``abort`` in a task signal the task, not its forker.
    """
    base = _pthread_self()
    me = os.getpid()
    found = [off for off in candidates if ctypes.c_int.from_address(base + off).value == me]
    return found[0] if len(found) == 1 else -1


def clone_parent(offset: int) -> int:
    """Fork a sibling: a child of this process's parent (``CLONE_PARENT``); 0 in the child.

    Raises:
        OSError: the kernel refused.
    """
    nr = _SYS_CLONE[os.uname().machine]
    flags = CLONE_PARENT | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD
    ctid = _pthread_self() + offset
    if nr == 56:  # x86_64: clone(flags, stack, parent_tid, child_tid, tls)
        pid = _syscall(ctypes.c_long(nr), ctypes.c_long(flags), ctypes.c_long(0), ctypes.c_long(0),
                       ctypes.c_long(ctid), ctypes.c_long(0))
    else:  # aarch64: clone(flags, stack, parent_tid, tls, child_tid)
        pid = _syscall(ctypes.c_long(nr), ctypes.c_long(flags), ctypes.c_long(0), ctypes.c_long(0),
                       ctypes.c_long(0), ctypes.c_long(ctid))
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone(CLONE_PARENT): {os.strerror(err)}")
    return int(pid)


def supported() -> bool:
    """Whether this machine has a ``clone`` binding here (x86_64, aarch64)."""
    return os.uname().machine in _SYS_CLONE


class SlotForker:
    """The zygote's handle on one slot's forker."""

    __slots__ = ("box", "fn_keys", "misses", "pid", "policy", "sock", "state")

    def __init__(self, pid: int, sock: Any, policy: Any, box: dict[str, Any], fn_keys: set[int]) -> None:
        self.pid = pid
        self.sock = sock  # the zygote's end: blocking
        self.policy = policy
        self.box = box  # the slot's SandboxState as its forker reported it (as_dict form)
        self.fn_keys = fn_keys  # the functions the forker holds (the zygote's when it was forked)
        self.misses: dict[int, int] = {}

    def run(self, order: RunOrder, capture: tuple[int, int], cgroup_fd: int | None) -> int:
        """Have the forker fork ``order``'s task; its pid, or -1 if the forker lacks the function.

        Raises:
            OSError: the forker is gone (EOF, a broken socket): make another.
        """
        data = pickle.dumps((order.task_id, order.fn_key, order.payload, order.threads, order.gpu_ids,
                             cgroup_fd is not None), PICKLE_PROTOCOL)
        fds = [*capture, *(() if cgroup_fd is None else (cgroup_fd,))]
        self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        reply = self.sock.recv(REPLY.size)
        if len(reply) != REPLY.size:
            raise OSError(0, "the slot's forker is gone")
        task_id, pid = REPLY.unpack(reply)
        if task_id != order.task_id:
            raise OSError(0, "the slot's forker answered another order")
        return pid

    def close(self) -> None:
        """End the forker (it exits at the end of its socket; killed to be sure) and reap it."""
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except OSError:
            pass


def make(fork: Any, slot: Any, dirs: Any, policy: Any, *, report_sock: Any, close_fds: tuple[int, ...],
         fn_cache: Any, pinned: tuple[str, ...]) -> tuple[SlotForker | None, str]:
    """Fork a forker for ``slot`` under ``policy`` (zygote side); ``(forker, "")`` or ``(None, why not)``.

    ``fork``: the zygote's fork; ``close_fds``: the zygote's fds the forker
    must not hold (the client's pipes, other forkers' sockets);
    ``report_sock``: the tasks' report socket.
    """
    if not supported():
        return None, f"no clone binding for {os.uname().machine}"
    candidates = tid_candidates()
    if not candidates:
        return None, "glibc's thread descriptor was not found"
    mine, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    for s in (mine, theirs):
        for opt in (32, 33):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE (root); else the default
            try:
                s.setsockopt(_socket.SOL_SOCKET, opt, 1 << 20)
            except OSError:
                pass
    pid = fork()
    if pid == 0:
        code = 1
        try:
            mine.close()
            for fd in close_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            _forker_main(theirs, slot, dirs, policy, report_sock, fn_cache, pinned, tid_offset(candidates))
            code = 0
        except BaseException as exc:
            try:
                theirs.send(b"!" + f"{type(exc).__name__}: {exc}".encode()[:1000])
            except BaseException:
                pass
        finally:
            os._exit(code)
    theirs.close()
    try:
        first = mine.recv(1 << 16)
        if not first or first.startswith(b"!"):
            raise OSError(0, first[1:].decode(errors="replace") or "the forker died while entering its slot")
        _tid, status, _peak, _payload, extra, _in_fd = read_child_report(first)
        if status != STATUS_STARTED or not extra or "sandbox" not in extra:
            raise OSError(0, "the forker's first report is not its sandbox's")
    except (OSError, ValueError) as exc:
        mine.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
        return None, str(exc)
    return SlotForker(pid, mine, policy, extra["sandbox"], set(fn_cache.entries)), ""


def _forker_main(sock: Any, slot: Any, dirs: Any, policy: Any, report_sock: Any, fns: Any,
                 pinned: tuple[str, ...], offset: int) -> None:
    """The forker's life: enter the slot once, then fork a task per order until the zygote's end closes."""
    from loadmaster.node.process.taskproc import child_main
    from loadmaster.node.sandbox.child import enter

    if offset < 0:
        raise OSError(0, "glibc's tid field was not found: no CLONE_PARENT forks")
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # gone with the zygote
    if os.getppid() == 1:
        raise OSError(0, "the zygote is gone")
    deferred: list[Any] = []
    state = enter(policy, dirs, deferred=deferred, nproc_extra=1)
    if not (state.private_tmp and (state.fs_rules or not policy.landlock)):
        raise OSError(0, "; ".join(state.notes) or "the slot's sandbox is not in force")
    rs, build = deferred if deferred else (None, None)
    pids_fd = slot.pids.procs_fd if slot.pids is not None else -1
    sock.send(child_report(0, STATUS_STARTED, 0, b"", state.as_dict()))
    own_out, own_err = os.dup(1), os.dup(2)
    os.set_inheritable(own_out, False)
    os.set_inheritable(own_err, False)
    close_in_child = (sock.fileno(),)
    anc_size = _socket.CMSG_SPACE(12)
    served = 0
    while True:
        data, anc, _flags, _addr = sock.recvmsg(ORDER_MAX + 4096, anc_size)
        if not data:
            os._exit(0)
        fds: list[int] = []
        for level, kind, blob in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(blob) // 4}i", blob[:len(blob) // 4 * 4]))
        task_id, fn_key, payload, threads, gpu_ids, has_cgroup = pickle.loads(data)
        entry = fns.entries.get(fn_key)
        if entry is None or len(fds) < 2 + has_cgroup:
            for fd in fds:
                os.close(fd)
            sock.send(REPLY.pack(task_id, -1))
            continue
        if rs is not None and build is not None and served and served % REBUILD_EVERY == 0:
            rs.close()
            rs = build([])
        served += 1
        order = RunOrder(task_id, KIND_FUNCTION, fn_key, b"", payload, None, None, None, gpu_ids, None, threads)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        pid = clone_parent(offset)
        if pid == 0:
            child_main(order, entry[1], sock=report_sock, close_fds=close_in_child,
                       slot_fd=fds[2] if has_cgroup else None, reseed=True, command=None,
                       pinned=pinned, slot_box=(rs, pids_fd, state))
        os.dup2(own_out, 1)
        os.dup2(own_err, 2)
        for fd in fds:
            os.close(fd)
        sock.send(REPLY.pack(task_id, pid))


def eligible(order: RunOrder) -> bool:
    """Whether a sandboxed order in a namespace slot may take its slot's forker (see the module docstring)."""
    if order.kind != KIND_FUNCTION or order.sandbox is None or len(order.payload) > ORDER_MAX:
        return False
    policy, inputs, outputs = order.sandbox
    return not inputs and not outputs and not policy.allow_write and not _DISABLED


# Read once, where the zygote imports this module: ``LOADMASTER_SANDBOX_DISABLE=slotforker``
# sends every task down the per-task path (A/B measurements, a kernel that misbehaves).
_DISABLED = "slotforker" in os.environ.get("LOADMASTER_SANDBOX_DISABLE", "").lower()

