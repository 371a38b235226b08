"""The zygote: a lean, warm, single-threaded process that forks one child per task.

Process model::

    client (Executor, scheduler thread)          zygote (this module)             task processes
    ───────────────────────────────────          ───────────────────              ──────────────
    RunOrder ──pipe──────────────────────────▶   fork() ─────────────────────▶   taskproc.child_main
                                                 sample trees every few ms        runs fn / execs cmd
                                                 ◀──SEQPACKET datagram────────   result + own peak
                                                 pidfd ready → wait4 (rusage)
    ◀──pipe──────────── Done ─────────────────   read cgroup peak, build Done

The zygote is started as ``python -c "from loadmaster.node.process.zygote import main; main()"``
(a fresh, small interpreter: forking the user's big, multithreaded process would be slow and
unsafe; the client keeps this module's bytecode fresh first, see ``bytecode.py``).
It imports the modules it is told to preload, and unpickles each
distinct function once (keyed by the client's ``fn_key``), so children inherit
both and start warm.

It never runs user code itself beyond unpickling functions (which imports their
modules). It stays single-threaded: that is what makes the ``libc`` fork (no
CPython at-fork hooks; see docs/measurement.md) and ``unshare`` in the child safe. If
a preloaded or unpickled module starts a thread, the zygote falls back to
``os.fork`` and says so.

Death of a child is detected by its pidfd becoming readable (epoll), never by
polling; the poll timeout exists only for sampling and deadlines. The zygote
installs no signal handlers, so its children have none to undo. If the client's pipe
closes, the zygote kills every task tree and exits.

The zygote's jobs, by module: this one holds the loop, the client's orders,
the function cache's use (``fncache.py``) and forking; ``running.py`` the record
of a running task and its captured output files; ``sampler.py`` sampling,
limits, deadlines and kills; ``collect.py`` the task processes' reports and
each task's ``Done``; ``slotforking.py`` namespace slots and their forkers
(``slotforker.py``: the process that forks a slot's default sandboxed tasks);
``taskproc.py`` what runs in the child.

Measurement (see ``results.MeasureMethod`` and docs/measurement.md): the task's
own memory is the task process's own high-water mark (exact) plus sampled
high-water marks of its descendants (and ``wait4``'s for a command's tree); with
a memory cgroup slot per task (v1 or v2), that is capped by what the cgroup was
charged, which is reported beside it (``peak_charged``: page cache included).
Limits: the cgroup's limit (kernel OOM kill inside the slot), or the sampler
kills the tree when resident memory passes the limit; disk (bytes written) and
wall time are enforced by the sampler. Only the offending task's tree is killed.
"""

from __future__ import annotations

import _pickle as pickle  # see protocol.py
import _signal as signal  # signal.py pulls in enum
import _socket
import ctypes
import gc
import os
import select
import sys
import time

from loadmaster.node.measure import procfs
from loadmaster.node.measure.cgroup_slots import SlotPool
from loadmaster.node.process import fnpickle
from loadmaster.node.process.collect import WATCH_DATAGRAMS_FROM, Collecting
from loadmaster.node.process.fncache import FnCache
from loadmaster.node.process.protocol import (
    KIND_COMMAND,
    KIND_FUNCTION,
    READ_CHUNK,
    CommandSpec,
    FrameReader,
    RunOrder,
    ZygoteInfo,
    frame,
    write_all,
)
from loadmaster.node.process.running import Running, Unusable, capture_files
from loadmaster.node.process.sampler import FOLLOW_WAIT_S, Sampling
from loadmaster.node.process.slotforker import SlotForker, eligible
from loadmaster.node.process.slotforking import SandboxSlots
from loadmaster.node.process.taskproc import child_main

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

FIRST_SAMPLE_S = 0.002   # first look at a new task's tree; the period doubles from here
QUIET_S = 0.005          # a lone task's first ms: the client's orders are read at its exit or after this
SO_SNDBUFFORCE = 32
PR_SET_CHILD_SUBREAPER = 36


class Zygote(Collecting, Sampling, SandboxSlots):
    """The fork server loop. Only :func:`main` constructs it, in its own process."""

    def __init__(self, cmd_fd: int, res_fd: int, *, workdir: str, sample_s: float, cgroup_parent: str | None,
                 fork_method: str, sandbox_parent: str = "", pinned: tuple[str, ...] = ()) -> None:
        self.cmd_fd = cmd_fd
        self.res_fd = res_fd
        self.workdir = workdir
        self.sample_s = sample_s
        self.follow_wait_s = FOLLOW_WAIT_S
        self.notes: list[str] = []
        self.reader = FrameReader()
        # _socket, not socket: the wrapper module pulls in selectors and enum (~1 MB here).
        self.sock_r, self.sock_w = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        self.sock_r.setblocking(False)
        self.peek = bytearray(1)
        for s, opt in ((self.sock_w, SO_SNDBUFFORCE), (self.sock_r, 33)):  # 33: SO_RCVBUFFORCE
            try:
                s.setsockopt(_socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass
        # Every datagram then carries its sender's pid (kernel-filled): a task's report
        # is taken only from the task's own process (see _child_message).
        self.sock_r.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        os.set_blocking(self.cmd_fd, False)
        self.ep = select.epoll()
        self.ep.register(self.cmd_fd, select.EPOLLIN)
        self.cmd_watched = True  # see _quiet
        # The children's datagrams wake the zygote only while two or more tasks run
        # (see _watch_datagrams); registered on demand.
        self.datagrams_watched = False
        self.pidfds: dict[int, int] = {}  # pidfd -> pid
        self.exec_pipes: dict[int, int] = {}  # read end of a command's close-on-exec pipe -> pid
        self.fns = FnCache()  # fn_key -> function, or Unusable; the client mirrors it
        # The function last taken from the cache: the next order of a stream of tasks of one
        # function takes it without touching the cache's objects (pages a fork write-protects).
        self._hot_key = 0
        self._hot_fn: Any = None
        self.pinned = pinned  # thread variables the client set to 1 for this process alone
        self.capture_dir = workdir  # where capture files go if memfds are refused
        self.capture_in_memory = True  # memfds; else whether capture_dir is a tmpfs
        self.running: dict[int, Running] = {}
        # task id -> a finished task's large capture files, until the client says "release"
        self.held: dict[int, tuple[int, int]] = {}
        self.next_due = 0.0  # no later than the earliest next_sample of the running tasks
        self.by_task: dict[int, int] = {}
        # running task id -> (the order to start when it ends, when that order came, its function)
        self.successors: dict[int, tuple[RunOrder, float, Any]] = {}
        self.outbox: list[bytes] = []
        self.closing = False
        self.pool = SlotPool.create(cgroup_parent) if cgroup_parent is not None else None
        if cgroup_parent is not None and self.pool is None:
            self.notes.append(
                "memory cgroups cannot be created here (not root, or no writable memory "
                "controller): peaks come from high-water marks and sampling"
            )
        self.method = self.pool.method if self.pool is not None else "hwm+sampled-tree"
        # Without cgroups, a daemon a task leaves (setsid, double fork) escapes its process
        # group and tree: as a subreaper the zygote becomes its parent and ends it (_orphans).
        self.subreaper = self.pool is None and ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        self._libc_fork = None
        if fork_method == "libc":
            libc = ctypes.PyDLL(None, use_errno=True)
            libc.fork.restype = ctypes.c_int
            self._libc_fork = libc.fork
        self.fork_method = fork_method
        self._modules_seen = -1  # len(sys.modules) when threads were last counted
        self._sandbox_mod: Any = None
        self.quiet_sandbox = False  # the client warns about a degraded sandbox itself
        self.ns_pool: Any = None
        self.forkers: dict[int, SlotForker] = {}  # pid -> the forker of a namespace slot (slotforker.py)
        self.sandbox_parent = sandbox_parent
        # The zygote's own stdout and stderr, kept while a function task's capture files are
        # fds 1 and 2 across its fork (start).
        self.own_stdout = os.dup(1)
        self.own_stderr = os.dup(2)
        os.set_inheritable(self.own_stdout, False)
        os.set_inheritable(self.own_stderr, False)
        # (close-on-exec: a command does not get them; a function closes every fd from 3 up)
        self.close_in_child = (self.cmd_fd, self.res_fd, self.sock_r.fileno(), self.ep.fileno())

    # ── forking ──────────────────────────────────────────────────────────────
    def _fork(self) -> int:
        if self._libc_fork is not None:
            # Only importing or unpickling can have started a thread here (the zygote runs
            # no other foreign code), so threads are counted again only after either.
            if len(sys.modules) != self._modules_seen:
                self._modules_seen = len(sys.modules)
                if _threads() > 1:
                    self._libc_fork = None
                    self.fork_method = "os"
                    self.notes.append("a thread started in the zygote; switched to os.fork")
                    return os.fork()
            pid = int(self._libc_fork())
            if pid < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return pid
        return os.fork()

    def _function(self, order: RunOrder) -> Any:
        """The order's function (or ``Unusable``), taken as the order arrives.

        Called once per function order, in the order they come down the pipe:
        the client's mirror of the cache sees the same sequence (fncache.py).
        """
        key = order.fn_key
        if key == self._hot_key:  # marked already, and no put since: get would change nothing
            return self._hot_fn
        fn = self.fns.get(key)
        if fn is not None:
            if type(fn) is not Unusable:
                self._hot_key, self._hot_fn = key, fn
            return fn
        self._hot_key = 0  # a put may clear the marks of others (fncache.py)
        if not order.fn_bytes:  # the client sends them when its mirror says we lack them
            return Unusable("the zygote never received this function (a loadmaster bug: please report it)")
        try:
            # A function sent by value is rebuilt without importing cloudpickle when
            # fnpickle can (see there); otherwise pickle imports it by itself.
            fn = fnpickle.loads(order.fn_bytes)
        except BaseException as exc:
            fn = Unusable(f"the function could not be unpickled on the node ({type(exc).__name__}: "
                           f"{exc}); is its module importable there?")
        else:
            self._modules_seen = -1  # unpickling ran foreign code: count threads again
        if self.fns.put(key, len(order.fn_bytes), fn):
            # Dropped functions may sit in reference cycles the frozen generation never
            # collects: one collection per eviction batch (a quarter of the cache).
            gc.unfreeze()
            gc.collect()
        gc.freeze()  # what unpickling imported stays untouched by the children's GC
        return fn

    def start(self, order: RunOrder, fn: Any = None) -> None:
        """Fork one task attempt (``fn``: its function, when taken already as it arrived)."""
        command: CommandSpec | None = None
        capture = None
        if order.kind == KIND_FUNCTION:
            if fn is None:
                fn = self._function(order)
            if type(fn) is Unusable:
                self._fail_early(order, fn.why)
                return
            try:
                capture, in_memory = capture_files(self.capture_dir, order.task_id)
                if not in_memory and self.capture_in_memory:
                    self.capture_in_memory = procfs.in_memory(self.capture_dir)
            except OSError as exc:
                self._fail_early(order, f"the task's stdout and stderr files could not be made: {exc}")
                return
        else:
            command = pickle.loads(order.payload)
        sandbox_dirs = None
        forker = None
        if order.sandbox is not None:
            ns_slot = self._ns_slot(order)
            try:
                if ns_slot is not None and eligible(order):
                    forker = self._forker(ns_slot, order)
                sandbox_dirs = self._sandbox().prepare(order.sandbox[0], self.sandbox_parent, order.task_id,
                                                       slot=ns_slot, ruleset=forker is None)
            except Exception as exc:
                if ns_slot is not None and self.ns_pool is not None:
                    self.ns_pool.release(ns_slot)
                if capture is not None:
                    os.close(capture[0])
                    os.close(capture[1])
                self._fail_early(order, f"the task's sandbox could not be prepared: {exc}")
                return
        slot = self.pool.acquire(order.memory_limit) if self.pool is not None else None
        # The sampler subtracts what a function's process shares with us from its marks;
        # -1: read when it first samples the task (most short tasks are never sampled).
        baseline = 0 if order.kind == KIND_COMMAND else -1
        exec_r = exec_w = -1
        if command is not None:
            # Close-on-exec: EOF on exec_r tells the exec has happened (until then the
            # process is the forked Python child, whose memory is not the command's).
            exec_r, exec_w = os.pipe2(os.O_CLOEXEC)
        now = time.monotonic()
        deadline = None if order.wall_limit is None else now + order.wall_limit
        # With a cgroup slot the sampler need not look at a task in its first ms (most
        # short tasks are then never sampled at all): the slot holds every process of the
        # tree, and what it charged bounds the peak from above. Without a slot, a
        # command's short-lived children are only seen by sampling early.
        first = FIRST_SAMPLE_S if slot is None else self.sample_s
        if deadline is not None:
            first = min(first, order.wall_limit or first)
        # Built before the fork: while the child lives, each page written here is a
        # copy-on-write copy, so the code after the fork is kept to the minimum.
        r = Running(
            order=order, pid=0, start=now, start_wall=time.time(), slot=slot, baseline=baseline,
            next_sample=now + first, period=first, deadline=deadline,
            command=command, sandbox_dirs=sandbox_dirs,
        )
        r.capture = capture
        pid = -1
        if forker is not None:
            assert capture is not None and sandbox_dirs is not None
            pid = self._fork_in_slot(forker, sandbox_dirs.slot, order, capture, slot)
            if pid > 0:
                r.extra["sandbox"] = dict(forker.box)
                r.start_seen = True  # the sandbox's report is the forker's; the task sends none
            else:  # the task takes this process's own path after all
                sandbox_dirs = self._sandbox().prepare(order.sandbox[0], self.sandbox_parent, order.task_id,  # type: ignore[index]
                                                       slot=sandbox_dirs.slot)
                r.sandbox_dirs = sandbox_dirs
        if pid > 0:
            pass  # forked by the slot's forker: the zygote's child all the same (CLONE_PARENT)
        elif capture is not None:
            # The capture files become fds 1 and 2 here, before the fork, and the zygote's
            # own come back after it: in the child every page its code writes is a
            # copy-on-write copy (the dups cost it ~6 of them).
            os.dup2(capture[0], 1)
            os.dup2(capture[1], 2)
            pid = -1
            try:
                pid = self._fork()
            finally:
                if pid != 0:
                    os.dup2(self.own_stdout, 1)
                    os.dup2(self.own_stderr, 2)
        else:
            pid = self._fork()
        if pid == 0:
            child_main(
                order, fn, sock=self.sock_w, close_fds=self.close_in_child,
                slot_fd=None if slot is None else slot.fd_procs,
                reseed=self._libc_fork is not None, command=command, sandbox_dirs=sandbox_dirs,
                pinned=self.pinned,
            )
        r.pid = pid
        if exec_w >= 0:
            os.close(exec_w)
            self.exec_pipes[exec_r] = pid
            self.ep.register(exec_r, select.EPOLLIN)
        pidfd = os.pidfd_open(pid)
        self.pidfds[pidfd] = pid
        self.ep.register(pidfd, select.EPOLLIN)
        self.running[pid] = r
        if r.next_sample < self.next_due or len(self.running) == 1:
            self.next_due = r.next_sample
        self.by_task[order.task_id] = pid
        if len(self.running) == WATCH_DATAGRAMS_FROM and not self.datagrams_watched:
            self._watch_datagrams(True)
        if len(self.running) == 1:
            self._quiet(now)
        elif not self.cmd_watched:
            self._listen(read=False)  # read by the loop: this may run inside _read_commands

    def _quiet(self, now: float) -> None:
        """Stop listening to the client for a lone task's first ``QUIET_S``.

        The client hands the next order ahead while this task runs; read at
        once, it would wake this process while the child lives, and every page
        written then is a full copy-on-write copy. Read when the child has
        ended (or after ``QUIET_S``, or when a tick comes first) it costs a
        cheap fault. Orders and kills wait at most ``QUIET_S``.
        """
        if self.cmd_watched and self.cmd_fd >= 0:
            self.ep.unregister(self.cmd_fd)
            self.cmd_watched = False
        if now + QUIET_S < self.next_due:
            self.next_due = now + QUIET_S

    def _listen(self, read: bool = True) -> None:
        """Listen to the client again, and (``read``) read what it sent meanwhile.

        Never read from inside ``_read_commands`` (through ``start``): the
        orders read there would start before those left in the batch being
        handled, out of order (a function's bytes come with its first order).
        """
        self.cmd_watched = True
        if self.cmd_fd >= 0:
            self.ep.register(self.cmd_fd, select.EPOLLIN)
            if read:
                self._read_commands()

    def _watch_datagrams(self, on: bool) -> None:
        """Let the children's datagrams wake the loop, or not.

        A lone task's datagram is read when its process has ended (``_finish``),
        so the zygote sleeps from the fork to the child's exit: every page it
        writes while a child lives is a full copy-on-write copy, once the child
        is gone only a cheap fault (~100 µs per task here). With two or more
        tasks running their datagrams are read as they come: otherwise they would
        be read only when some task's process ends, and a full socket buffer of
        datagrams from long-running commands (each sends one before its exec)
        could hold every other child in ``send`` with no end to wait for.
        """
        if on:
            self.ep.register(self.sock_r.fileno(), select.EPOLLIN)
        else:
            self.ep.unregister(self.sock_r.fileno())
        self.datagrams_watched = on

    # ── the loop ─────────────────────────────────────────────────────────────
    def loop(self) -> None:
        """Serve until told to exit (or the client goes away)."""
        sock_fd = self.sock_r.fileno()
        while True:
            timeout = self._timeout()
            events = self.ep.poll(-1 if timeout is None else timeout)
            exited = []
            for fd, _ in events:
                if fd == sock_fd:
                    self._read_children()
                elif fd == self.cmd_fd:
                    self._read_commands()
                elif fd in self.exec_pipes:
                    self._exec_seen(fd)
                else:
                    exited.append(fd)
            if exited and not self.cmd_watched:
                self._listen()  # first, so that an order handed ahead is there at the reap
            for pidfd in exited:
                self._reap(pidfd)
            if self.running and time.monotonic() >= self.next_due:
                self._tick()
            if self.outbox:
                self._send_outbox()
            if self.pool is not None and self.pool.pending:
                self.pool.sweep()  # cgroups used once: removed, and the next one made, after the report
            if self.closing and not self.running:
                return

    def _timeout(self) -> float | None:
        if not self.running:
            return None
        return max(0.0, self.next_due - time.monotonic())

    def _read_commands(self) -> None:
        # One read per wake-up (epoll is level-triggered: what is left wakes the next poll),
        # so the usual path raises no BlockingIOError.
        while True:
            try:
                data = os.read(self.cmd_fd, READ_CHUNK)
            except BlockingIOError:
                return
            if not data:
                if self.closing:  # orderly: "exit" came first; let running tasks finish
                    self.ep.unregister(self.cmd_fd)
                    os.close(self.cmd_fd)
                    self.cmd_fd = -1
                else:
                    self._client_gone()
                return
            for msg in self.reader.feed(data):
                kind = msg[0]  # type: ignore[index]
                if kind == "run":
                    self.start(RunOrder(*msg[1]))  # type: ignore[index]
                elif kind == "then":
                    self._then(msg[1], RunOrder(*msg[2]))  # type: ignore[index]
                elif kind == "kill":
                    self._cancel(msg[1])  # type: ignore[index]
                elif kind == "release":
                    held = self.held.pop(msg[1], None)  # type: ignore[index]
                    if held is not None:
                        os.close(held[0])
                        os.close(held[1])
                elif kind == "stats":
                    self.outbox.append(frame(("stats", {
                        "fn_entries": len(self.fns), "fn_bytes": self.fns.size,
                        "fn_evictions": self.fns.evictions, "rss": procfs.self_rss()})))
                elif kind == "exit":
                    self.closing = True
            if len(data) < READ_CHUNK:
                return

    def _client_gone(self) -> None:
        self.closing = True
        for r in list(self.running.values()):
            self._kill_tree(r, signal.SIGKILL)
        os.close(self.cmd_fd)
        self.cmd_fd = -1
        # Nobody reads results any more; wait for the trees and leave.
        while self.running:
            try:
                pid, _status, _ru = os.wait4(-1, 0)
            except ChildProcessError:
                break
            r2 = self.running.pop(pid, None)
            if r2 is not None and r2.slot is not None and self.pool is not None:
                self.pool.release(r2.slot)
        self.shutdown()
        os._exit(0)

    def _exec_seen(self, fd: int) -> None:
        pid = self.exec_pipes.pop(fd)
        self.ep.unregister(fd)
        os.close(fd)
        r = self.running.get(pid)
        if r is not None:
            r.execd = True

    def _reap(self, pidfd: int) -> None:
        pid = self.pidfds.pop(pidfd)
        self.ep.unregister(pidfd)
        os.close(pidfd)
        r = self.running.get(pid)
        if r is not None:
            # The zombie still holds its pid, so its group id cannot have been reused:
            # kill whatever is left of the task's process group.
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        _, status, ru = os.wait4(pid, 0)
        if r is not None:
            self._finish(r, status, ru)
            nxt = self.successors.pop(r.order.task_id, None) if self.successors else None
            if nxt is not None:
                # The report goes out before the next fork: the client reads it while
                # this process forks, and nothing is written here while the child lives.
                self._send_outbox()
                self.start(nxt[0], nxt[2])

    def _send_outbox(self) -> None:
        data = b"".join(self.outbox)
        self.outbox.clear()
        write_all(self.res_fd, data)

    def _then(self, after: int, order: RunOrder) -> None:
        """Start ``order`` when task ``after`` ends, or now if it has already.

        The client sends each function's bytes with the first order that uses
        it and never again, so they are taken now: orders sent later may start
        first, and this one may come back unstarted.
        """
        fn = None
        if order.kind == KIND_FUNCTION:
            fn = self._function(order)
            order.fn_bytes = b""
        if after in self.by_task:
            now = time.monotonic()
            self.successors[after] = (order, now, fn)
            self.next_due = min(self.next_due, now + self.follow_wait_s)
        else:
            self.start(order, fn)

    def _hand_back(self, now: float) -> None:
        """Give the client back the orders that waited ``FOLLOW_WAIT_S`` behind a task still running.

        The client hands an order ahead only behind a task it expects to end
        within milliseconds; one that runs longer must not hold the next task
        while another core may be free.
        """
        for after, (order, since, _fn) in list(self.successors.items()):
            if now - since >= self.follow_wait_s:
                del self.successors[after]
                self.outbox.append(frame(("back", order.task_id)))

    def shutdown(self) -> None:
        """End the slots' forkers; remove cgroup slots and namespace slots."""
        for f in list(self.forkers.values()):
            f.close()
        self.forkers.clear()
        if self.pool is not None:
            self.pool.close()
        if self.ns_pool is not None:
            self.ns_pool.close()


def _threads() -> int:
    """Threads in this process (``threading`` may not even be imported here)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


_DEFAULTS = {"preload": "", "sample-ms": "10", "cgroup-parent": "", "fork": "libc", "sandbox-dir": "",
             "cloudpickle": "", "pinned": "", "quiet-sandbox": "", "follow-ms": str(FOLLOW_WAIT_S * 1000)}
_REQUIRED = ("cmd-fd", "res-fd", "workdir")


def _options(argv: list[str]) -> dict[str, str]:
    """Parse ``--name value`` pairs (the client writes them; argparse would add weight here)."""
    opts = dict(_DEFAULTS)
    it = iter(argv)
    for key in it:
        name = key.removeprefix("--")
        if not key.startswith("--") or name not in (*_DEFAULTS, *_REQUIRED):
            raise SystemExit(f"loadmaster-zygote: unknown option {key!r}")
        opts[name] = next(it, "")
    missing = [n for n in _REQUIRED if n not in opts]
    if missing:
        raise SystemExit(f"loadmaster-zygote: missing --{', --'.join(missing)}")
    if opts["fork"] not in ("libc", "os"):
        raise SystemExit(f"loadmaster-zygote: --fork {opts['fork']!r}: use libc or os")
    return opts


def main(argv: list[str] | None = None) -> None:
    """Entry point of a zygote process (the client starts it with ``zygote_client.ZYGOTE_BOOT``)."""
    opts = _options(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client decides when we stop
    if opts["cloudpickle"].split(".")[0] == "3":  # the stream layout fnpickle follows
        fnpickle.enable()
    notes = []
    for name in filter(None, opts["preload"].split(",")):
        try:
            __import__(name)  # importlib would add its own weight
        except Exception as exc:
            notes.append(f"could not preload {name}: {type(exc).__name__}: {exc}")
    z = Zygote(int(opts["cmd-fd"]), int(opts["res-fd"]), workdir=opts["workdir"],
               sample_s=float(opts["sample-ms"]) / 1000, cgroup_parent=opts["cgroup-parent"] or None,
               fork_method=opts["fork"], sandbox_parent=opts["sandbox-dir"],
               pinned=tuple(filter(None, opts["pinned"].split(","))))
    z.quiet_sandbox = bool(opts["quiet-sandbox"])
    z.follow_wait_s = float(opts["follow-ms"]) / 1000
    z.notes.extend(notes)
    if sys.stdout is not None and hasattr(sys.stdout, "reconfigure"):
        # A function task's print reaches its capture file line by line (the children
        # inherit this), so it can be streamed, and a task killed keeps what it printed.
        sys.stdout.reconfigure(line_buffering=True)
    gc.freeze()  # children never collect (so never touch) what the zygote holds
    info = ZygoteInfo(pid=os.getpid(), method=z.method, fork_method=z.fork_method,
                      rss=procfs.self_rss(), workdir=opts["workdir"], notes=tuple(z.notes))
    write_all(z.res_fd, frame(("ready", info)))
    try:
        z.loop()
    finally:
        z.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
