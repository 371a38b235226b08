"""User and mount namespaces for a task's private ``/tmp``, through ctypes.

Who runs this code: the forked task process (child side), single-threaded,
before any user code and before Landlock (Landlock forbids ``mount`` and the
``setgroups`` write). :func:`probe` is also run once by the zygote (parent
side) in a throwaway forked child, to learn whether the kernel allows it here.

What it does, in order (:func:`private_mounts`):

1. ``unshare(CLONE_NEWNS)`` when the process may mount (root with
   ``CAP_SYS_ADMIN``), otherwise ``unshare(CLONE_NEWUSER | CLONE_NEWNS)``
   followed by ``deny`` to ``/proc/self/setgroups`` and an identity
   ``uid_map``/``gid_map`` (the task keeps its own uid and gid, files it
   creates belong to the real user);
2. ``mount(NULL, "/", NULL, MS_REC | MS_PRIVATE)`` so nothing propagates back
   to the node;
3. bind mounts of private directories over ``/tmp`` (and ``/dev/shm``).

A network namespace with only loopback (:func:`enter_network_namespace`) is
made per namespace slot and joined by tasks whose network is off.

What it does *not* cover: PID namespaces (a new PID namespace costs another
fork and makes the task pid 1), cleaning up (the mount
namespace dies with the task's last process; the directories are removed by
:func:`loadmaster.node.sandbox.policy.collect`).

``unshare(CLONE_NEWUSER)`` fails with ``EINVAL`` in a multithreaded process,
which is why this runs in a freshly forked child of a single-threaded zygote.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Sequence

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
MS_RDONLY = 1
MS_NOSUID = 2
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_NODEV = 4
MOUNT_ATTR_RDONLY = 0x1
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and aarch64 (asm-generic)

#: Environment variable naming protections to pretend are missing
#: (``LOADMASTER_SANDBOX_DISABLE=namespaces``), for tests and odd kernels.
DISABLE_ENV = "LOADMASTER_SANDBOX_DISABLE"

_libc = ctypes.CDLL(None, use_errno=True)
_unshare = _libc.unshare
_unshare.argtypes = (ctypes.c_int,)
_unshare.restype = ctypes.c_int
_mount = _libc.mount
_setns = _libc.setns
_mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
)
_mount.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class NamespaceUnavailable(OSError):
    """Raised when the kernel refuses a namespace or mount step (caught by the sandbox)."""


def _fail(what: str) -> NamespaceUnavailable:
    err = ctypes.get_errno()
    return NamespaceUnavailable(err, f"{what}: {os.strerror(err)}")


def disabled() -> bool:
    """Return True when ``LOADMASTER_SANDBOX_DISABLE`` names ``namespaces``."""
    return "namespaces" in os.environ.get(DISABLE_ENV, "").lower()


def unshare(flags: int) -> None:
    """Call ``unshare(2)``.

    Raises:
        NamespaceUnavailable: the kernel refused (EPERM, EINVAL for a multithreaded caller, ...).
    """
    if _unshare(flags) != 0:
        raise _fail(f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    """Call ``mount(2)``.

    Raises:
        NamespaceUnavailable: the kernel refused.
    """
    src = source.encode() if source is not None else None
    fs = fstype.encode() if fstype is not None else None
    opts = ctypes.c_char_p(data.encode()) if data is not None else None
    if _mount(src, target.encode(), fs, flags, opts) != 0:
        raise _fail(f"mount({source!r}, {target!r}, flags={flags:#x})")


def set_read_only(path: str, read_only: bool, *, recursive: bool) -> None:
    """Make the mount at ``path`` (and, ``recursive``, every mount beneath) read-only or writable.

    One ``mount_setattr(2)`` (Linux >= 5.12); a per-mount flag, so the file
    system itself stays writable elsewhere (outside this mount namespace).

    Raises:
        NamespaceUnavailable: the kernel refused (or lacks ``mount_setattr``).
    """
    attr = _MountAttr(MOUNT_ATTR_RDONLY if read_only else 0, 0 if read_only else MOUNT_ATTR_RDONLY, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    if _syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        raise _fail(f"mount_setattr({path!r}, {'read-only' if read_only else 'writable'})")


def read_only_view(writable: Sequence[str]) -> list[str]:
    """Make the whole tree read-only in this mount namespace except the ``writable`` paths.

    Like bwrap's ``--ro-bind / /`` with writable binds on top: ``chmod``,
    ``chown``, ``utime``, ``setxattr``, ``truncate`` and writes anywhere else
    fail with ``EROFS``, what Landlock cannot refuse (it has no right for
    metadata). Each writable path (an existing file or directory; ``/tmp`` and
    ``/dev/shm`` already mounts) is bound onto itself first, then made
    writable again, without the mounts beneath it (the Python environment
    bound back under ``/tmp`` stays read-only). Call in a private mount
    namespace, before Landlock. Returns a note per writable path that could
    not be made writable.

    Raises:
        NamespaceUnavailable: the tree could not be made read-only.
    """
    roots = {"/tmp", "/dev/shm"}
    for p in writable:
        if p not in roots:
            bind(p, p)
    set_read_only("/", True, recursive=True)
    notes = []
    for p in writable:
        try:
            set_read_only(p, False, recursive=False)
        except OSError as exc:
            notes.append(f"{p!r} stays read-only: {exc}")
    return notes


def writable_binds(paths: Sequence[str]) -> list[str]:
    """In a task's own copy of a read-only slot namespace: make ``paths`` writable (binds onto themselves).

    Returns a note per path that stays read-only.
    """
    notes = []
    for p in paths:
        try:
            bind(p, p)
            set_read_only(p, False, recursive=False)
        except OSError as exc:
            notes.append(f"declared path {p!r} stays read-only: {exc}")
    return notes


def mount_tmpfs(target: str, size: int) -> None:
    """Mount a tmpfs of at most ``size`` bytes on ``target`` (mode 0700, no devices, no setuid).

    Its pages are charged to the memory cgroup of the task that writes them.

    Raises:
        NamespaceUnavailable: the kernel refused.
    """
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0700")


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def enter_mount_namespace() -> str:
    """Move the calling process into a new private mount namespace.

    Returns ``"mount"`` when no user namespace was needed (the caller is root)
    or ``"user+mount"`` when an unprivileged user namespace was created, with
    the caller's own uid and gid mapped to themselves.

    Raises:
        NamespaceUnavailable: neither way worked; the process is unchanged
        (or, rarely, in a new user namespace without mounts; callers treat
        the result as "no private /tmp").
    """
    if disabled():
        raise NamespaceUnavailable(0, f"disabled by {DISABLE_ENV}")
    kind = "mount"
    if os.geteuid() != 0 or _unshare(CLONE_NEWNS) != 0:
        uid, gid = os.geteuid(), os.getegid()
        unshare(CLONE_NEWUSER | CLONE_NEWNS)
        kind = "user+mount"
        try:
            _write("/proc/self/setgroups", "deny")
        except FileNotFoundError:  # kernels before 3.19 have no such file
            pass
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    return kind


def enter_network_namespace() -> None:
    """Move the calling process into a new network namespace with only loopback, up.

    Call after :func:`enter_mount_namespace` (an unprivileged caller needs the
    user namespace it made). Nothing outside is reachable: no UDP, no TCP, no
    netlink view of the node's interfaces, no abstract UNIX socket of the node.

    Raises:
        NamespaceUnavailable: the kernel refused.
    """
    import fcntl
    import socket
    import struct

    unshare(CLONE_NEWNET)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", IFF_UP))
        except OSError as exc:
            raise NamespaceUnavailable(exc.errno or 0, f"bringing up loopback: {exc}") from exc


def bind(source: str, target: str) -> None:
    """Bind-mount directory ``source`` over ``target`` (in the current mount namespace).

    Raises:
        NamespaceUnavailable: the kernel refused.
    """
    mount(source, target, None, MS_BIND | MS_REC)


def probe() -> str:
    """Try the namespace steps in a throwaway forked child; return ``""`` or the reason.

    Run in the zygote (parent side) once per process; costs one fork (~1 ms).
    The child tries :func:`enter_mount_namespace` (``unshare`` and the
    ``MS_PRIVATE`` remount are the steps containers and hardened kernels
    forbid) and exits; nothing it does outlives it.
    """
    if disabled():
        return f"disabled by {DISABLE_ENV}"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running any atexit or finalizer
        code = 0
        try:
            os.close(r)
            enter_mount_namespace()
            msg = b"OK"
        except OSError as exc:
            msg = str(exc).encode()[:500] or b"refused"
            code = 1
        try:
            os.write(w, msg)
        finally:
            os._exit(code)
    os.close(w)
    try:
        chunks = []
        while chunk := os.read(r, 4096):
            chunks.append(chunk)
    finally:
        os.close(r)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # a zygote's own wait loop reaped it first: the pipe says enough
        pass
    out = b"".join(chunks).decode(errors="replace")
    if out == "OK":
        return ""
    return out or "the probe child died before reporting"


class NamespaceSlot:
    """A long-lived private mount namespace whose /tmp and /dev/shm are one slot's directories.

    Made once by the zygote (:func:`make_slot`) and joined by each task that
    runs in the slot (:func:`join_slot`), one task at a time. Creating a mount
    namespace per task is cheap, but tearing it down when the task exits waits
    for an RCU grace period (~6–8 ms here, on the critical path of every
    task); joining one that the zygote keeps open costs nothing extra.
    """

    __slots__ = ("dir_fds", "forker", "forker_broken", "kind", "mnt_fd", "net_fd", "pids", "read_only", "root",
                 "rule_fds", "shmdir", "tmp_size", "tmpdir", "user_fd", "workdir")

    def __init__(self, tmpdir: str, shmdir: str, kind: str, mnt_fd: int, user_fd: int | None,
                 net_fd: int | None = None, *, root: str = "", workdir: str = "", tmp_size: int | None = None,
                 read_only: str = "", dir_fds: tuple[int, ...] = ()) -> None:
        self.tmpdir = tmpdir  # a path of this process (/proc/self/fd/N when /tmp is the slot's tmpfs)
        self.shmdir = shmdir
        self.kind = kind
        self.mnt_fd = mnt_fd
        self.user_fd = user_fd
        self.net_fd = net_fd  # the slot's network namespace: loopback only, joined when the network is off
        self.root = root or os.path.dirname(tmpdir)
        self.workdir = workdir or os.path.join(self.root, "work")
        self.tmp_size = tmp_size  # /tmp and /dev/shm are tmpfs mounts of this size (None: the slot's dirs)
        self.read_only = read_only  # "" when the tree outside the sandbox is read-only, else why not
        self.dir_fds = dir_fds  # fds of the tmpfs roots, held so that tmpdir and shmdir name them
        self.pids: Any = None  # the slot's pids cgroup (ns_slots.PidsCgroup), root only
        self.rule_fds: tuple[int, ...] | None = None  # O_PATH fds of workdir, tmp, shm for Landlock rules
        self.forker: Any = None  # the slot's forker (process/slotforker.py), made by the zygote on demand
        self.forker_broken = ""  # why the slot can have no forker, once one failed to start

    def close(self) -> None:
        """Drop the namespace (it goes when no process is in it any more)."""
        for fd in (self.mnt_fd, self.user_fd, self.net_fd, *self.dir_fds):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.pids is not None:
            self.pids.close()


def make_slot(tmpdir: str, shmdir: str, keep: Sequence[str] = (), *, workdir: str = "",
              tmp_size: int | None = None) -> NamespaceSlot:
    """Create a namespace slot (parent side: forks a short-lived helper that builds it).

    ``keep``: paths under ``/tmp`` or ``/dev/shm`` that must stay visible at
    their own paths (the Python environment, when it lives there). With
    ``tmp_size``, ``/tmp`` and ``/dev/shm`` are tmpfs mounts of that size
    (the parent reaches them through fds it holds); otherwise binds of
    ``tmpdir`` and ``shmdir``. With ``workdir``, everything but ``workdir``,
    ``/tmp`` and ``/dev/shm`` is read-only in the slot (:func:`read_only_view`).

    Raises:
        NamespaceUnavailable: the kernel refused a step.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the helper: build the namespace, wait until the parent holds it, leave
        code = 0
        try:
            os.close(ready_r)
            os.close(go_w)
            kind = enter_mount_namespace()
            enter_network_namespace()
            held = hold(keep)
            has_shm = os.path.isdir("/dev/shm")
            if tmp_size is not None:
                mount_tmpfs("/tmp", tmp_size)
                if has_shm:
                    mount_tmpfs("/dev/shm", tmp_size)
            else:
                bind(tmpdir, "/tmp")
                if has_shm:
                    bind(shmdir, "/dev/shm")
            rebind(held)
            ro = ""
            if workdir:
                try:
                    ro_notes = read_only_view(["/tmp", *(["/dev/shm"] if has_shm else []), workdir])
                    ro = "; ".join(ro_notes)
                except OSError as exc:
                    ro = f"no read-only view: {exc}"
            else:
                ro = "no read-only view asked for"
            os.write(ready_w, f"{kind}\n{ro}".encode())
            os.read(go_r, 1)
        except BaseException as exc:
            code = 1
            with contextlib.suppress(BaseException):
                os.write(ready_w, f"!{exc}".encode())
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        answer = os.read(ready_r, 4096).decode()
        if not answer or answer.startswith("!"):
            raise NamespaceUnavailable(0, answer[1:] or "the namespace helper died")
        kind, _, ro = answer.partition("\n")
        mnt_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC) if kind == "user+mount" else None
        net_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        dir_fds: tuple[int, ...] = ()
        seen_tmp, seen_shm = tmpdir, shmdir
        if tmp_size is not None:  # the tmpfs roots, reached through the helper's root while it lives
            tmp_fd = os.open(f"/proc/{pid}/root/tmp", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            dir_fds = (tmp_fd,)
            seen_tmp = f"/proc/self/fd/{tmp_fd}"
            if os.path.isdir("/dev/shm"):
                shm_fd = os.open(f"/proc/{pid}/root/dev/shm", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                dir_fds += (shm_fd,)
                seen_shm = f"/proc/self/fd/{shm_fd}"
        return NamespaceSlot(seen_tmp, seen_shm, kind, mnt_fd, user_fd, net_fd, root=os.path.dirname(tmpdir),
                             workdir=workdir, tmp_size=tmp_size, read_only=ro, dir_fds=dir_fds)
    finally:
        os.close(ready_r)
        os.close(go_w)
        os.waitpid(pid, 0)


def hold(paths: Sequence[str]) -> list[tuple[str, int, bool]]:
    """Open ``paths`` (O_PATH) inside a new mount namespace, before /tmp is covered."""
    held = []
    for p in paths:
        with contextlib.suppress(OSError):
            held.append((p, os.open(p, os.O_PATH | os.O_CLOEXEC), os.path.isdir(p)))
    return held


def rebind(held: list[tuple[str, int, bool]]) -> list[str]:
    """Bind what :func:`hold` opened back at its own path; return a note per failure. Closes the fds."""
    notes = []
    for path, fd, is_dir in held:
        try:
            if is_dir:
                os.makedirs(path, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            bind(f"/proc/self/fd/{fd}", path)
        except OSError as exc:
            notes.append(f"{path!r} under the private /tmp is not reachable: {exc}")
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    return notes


def join_slot(slot: NamespaceSlot, network: bool = True) -> str:
    """Move the calling (single-threaded) process into ``slot``'s namespaces; return its kind.

    ``network=False`` joins the slot's loopback-only network namespace too.
    The working directory is reset to the namespace's root: ``chdir`` after.

    Raises:
        NamespaceUnavailable: the kernel refused.
    """
    if slot.user_fd is not None and _setns(slot.user_fd, CLONE_NEWUSER) != 0:
        raise _fail("setns(user)")
    if _setns(slot.mnt_fd, CLONE_NEWNS) != 0:
        raise _fail("setns(mnt)")
    if not network and slot.net_fd is not None and _setns(slot.net_fd, CLONE_NEWNET) != 0:
        raise _fail("setns(net)")
    return slot.kind
