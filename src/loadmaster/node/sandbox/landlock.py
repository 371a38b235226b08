"""Landlock file and network rules, bound to the kernel's syscalls with ctypes.

Who runs this code:

* the zygote (parent side) calls :func:`abi_version` once and may open the
  ``O_PATH`` descriptors of the system paths once (:func:`open_path`); forked
  children inherit them, which saves an ``open`` + ``close`` per path per task;
* the forked task process (child side) builds a ruleset with :class:`Ruleset`
  and calls :meth:`Ruleset.restrict_self` as the very last step before user
  code. After that call the process, and every process it starts, can only
  reach what the rules allow; it cannot be undone.

What it reads and writes: nothing but syscalls (444 ``landlock_create_ruleset``,
445 ``landlock_add_rule``, 446 ``landlock_restrict_self`` on x86_64 and
aarch64-compatible numbering) and ``prctl(PR_SET_NO_NEW_PRIVS)``.

What it does *not* cover: which paths a task may use (that policy lives in
:mod:`loadmaster.node.sandbox.policy`), namespaces and mounts
(:mod:`loadmaster.node.sandbox.namespaces`). It never raises for a kernel that lacks
Landlock: :func:`abi_version` returns 0 and callers degrade.

Access rights follow the kernel's ``include/uapi/linux/landlock.h``; each ABI
version adds rights, and a ruleset may only *handle* the rights the running
kernel knows (:func:`fs_rights_for_abi`, :func:`net_rights_for_abi`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

# Syscall numbers. Landlock uses the generic (asm-generic) numbers on every
# architecture that has them; x86_64 and aarch64 share 444/445/446.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
PR_SET_NO_NEW_PRIVS = 38

LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

# Filesystem access rights (ABI in which each appeared, in comments).
ACCESS_FS_EXECUTE = 1 << 0  # 1
ACCESS_FS_WRITE_FILE = 1 << 1  # 1
ACCESS_FS_READ_FILE = 1 << 2  # 1
ACCESS_FS_READ_DIR = 1 << 3  # 1
ACCESS_FS_REMOVE_DIR = 1 << 4  # 1
ACCESS_FS_REMOVE_FILE = 1 << 5  # 1
ACCESS_FS_MAKE_CHAR = 1 << 6  # 1
ACCESS_FS_MAKE_DIR = 1 << 7  # 1
ACCESS_FS_MAKE_REG = 1 << 8  # 1
ACCESS_FS_MAKE_SOCK = 1 << 9  # 1
ACCESS_FS_MAKE_FIFO = 1 << 10  # 1
ACCESS_FS_MAKE_BLOCK = 1 << 11  # 1
ACCESS_FS_MAKE_SYM = 1 << 12  # 1
ACCESS_FS_REFER = 1 << 13  # 2
ACCESS_FS_TRUNCATE = 1 << 14  # 3
ACCESS_FS_IOCTL_DEV = 1 << 15  # 5

# Network access rights (ABI 4).
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1

# IPC scoping (ABI 6).
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_FS_ABI1 = (1 << 13) - 1
_FS_BY_ABI = {
    1: _FS_ABI1,
    2: _FS_ABI1 | ACCESS_FS_REFER,
    3: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE,
    4: _FS_ABI1 | ACCESS_FS_REFER | ACCESS_FS_TRUNCATE,
}

#: Rights that make sense on a regular or device file (the kernel refuses
#: directory-only rights in a rule on a non-directory).
FILE_RIGHTS = ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE
FILE_RIGHTS |= ACCESS_FS_IOCTL_DEV

#: Read-only use of a tree: read files and directories, execute programs.
READ_RIGHTS = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR | ACCESS_FS_EXECUTE

#: Full use of a tree, except creating device nodes.
WRITE_RIGHTS = (
    READ_RIGHTS
    | ACCESS_FS_WRITE_FILE
    | ACCESS_FS_REMOVE_DIR
    | ACCESS_FS_REMOVE_FILE
    | ACCESS_FS_MAKE_DIR
    | ACCESS_FS_MAKE_REG
    | ACCESS_FS_MAKE_SOCK
    | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_MAKE_SYM
    | ACCESS_FS_REFER
    | ACCESS_FS_TRUNCATE
)

#: Environment variable that makes :func:`abi_version` pretend the kernel has
#: no Landlock (``LOADMASTER_SANDBOX_DISABLE=landlock``); used by tests and by
#: users whose kernel misbehaves.
DISABLE_ENV = "LOADMASTER_SANDBOX_DISABLE"


def fs_rights_for_abi(abi: int) -> int:
    """Return every filesystem right the given Landlock ABI knows (0 for no Landlock)."""
    if abi <= 0:
        return 0
    if abi >= 5:
        return _FS_BY_ABI[4] | ACCESS_FS_IOCTL_DEV
    return _FS_BY_ABI[abi]


def net_rights_for_abi(abi: int) -> int:
    """Return every network right the given Landlock ABI knows (ABI 4 added TCP rules)."""
    return ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP if abi >= 4 else 0


def scopes_for_abi(abi: int) -> int:
    """Return every IPC scope the given Landlock ABI knows (ABI 6 added scopes)."""
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel header: 12 bytes
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)

_ARCH_OK = os.uname().machine in ("x86_64", "aarch64", "arm64", "riscv64")

# Arguments built once: in a forked task every ctypes object made per call is
# a fresh allocation (copy-on-write faults), and a ruleset takes ~40 calls.
_NR_ADD_RULE = ctypes.c_long(SYS_LANDLOCK_ADD_RULE)
_KIND_PATH = ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH)
_KIND_PORT = ctypes.c_int(LANDLOCK_RULE_NET_PORT)
_NO_FLAGS = ctypes.c_uint32(0)


class LandlockUnavailable(OSError):
    """Raised by :class:`Ruleset` when the kernel refuses a Landlock call.

    Callers in the sandbox catch it and record that file rules are not in
    force; it never reaches user code.
    """


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise LandlockUnavailable(err, f"{what}: {os.strerror(err)}")
    return ret


def abi_version() -> int:
    """Return the kernel's Landlock ABI version, or 0 when Landlock is unusable.

    0 means: not compiled in, disabled at boot (``lsm=`` without landlock), an
    architecture whose syscall numbers we do not bind, a seccomp filter that
    refuses the call, or ``LOADMASTER_SANDBOX_DISABLE`` contains ``landlock``.
    Costs one syscall; callers cache it.
    """
    if "landlock" in os.environ.get(DISABLE_ENV, "").lower() or not _ARCH_OK:
        return 0
    ret = _syscall(
        ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
        ctypes.c_void_p(None),
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    return int(ret) if ret > 0 else 0


def set_no_new_privs() -> None:
    """Set ``PR_SET_NO_NEW_PRIVS`` on the calling thread (required by restrict_self).

    Raises:
        LandlockUnavailable: the kernel refused (should not happen on Linux >= 3.5).
    """
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def open_path(path: str) -> int:
    """Open ``path`` with ``O_PATH | O_CLOEXEC`` for use in a rule; returns the fd.

    Raises:
        OSError: the path does not exist or cannot be reached.
    """
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


@dataclass(frozen=True)
class RulesetCounts:
    """How many rules a :class:`Ruleset` received (for the task's report)."""

    path_rules: int
    port_rules: int


class Ruleset:
    """One Landlock ruleset being built in the process that will enforce it.

    Usage (child side)::

        rs = Ruleset(abi, handled_fs=fs_rights_for_abi(abi), handled_net=..., scoped=...)
        rs.allow_fd(fd, READ_RIGHTS)       # a directory or a file
        rs.allow_port(443, ACCESS_NET_CONNECT_TCP)
        rs.restrict_self()                 # also sets no_new_privs; closes the ruleset fd

    Rights not in ``handled_*`` stay unrestricted. Rights a rule asks for are
    masked to what the ruleset handles, and to file rights for non-directories.

    Raises:
        LandlockUnavailable: from the constructor or any call, when the kernel refuses.
    """

    def __init__(self, abi: int, *, handled_fs: int, handled_net: int = 0, scoped: int = 0) -> None:
        self.abi = abi
        self.own_rules = False  # the task's own directories are in it already (made by the zygote)
        self.proc_rule: SettableRule | None = None  # made by the zygote for the task's /proc/self
        self.handled_fs = handled_fs & fs_rights_for_abi(abi)
        self.handled_net = handled_net & net_rights_for_abi(abi)
        self.scoped = scoped & scopes_for_abi(abi)
        attr = _RulesetAttr(self.handled_fs, self.handled_net, self.scoped)
        size = ctypes.sizeof(_RulesetAttr)
        if abi < 6:
            size -= 8  # kernels before ABI 6 reject a larger struct with unknown fields set
        if abi < 4:
            size -= 8
        self.fd = _check(
            _syscall(
                ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET),
                ctypes.byref(attr),
                ctypes.c_size_t(size),
                ctypes.c_uint32(0),
            ),
            "landlock_create_ruleset",
        )
        self.path_rules = 0
        self.port_rules = 0
        self._fd_arg = ctypes.c_int(self.fd)

    def allow_fd(self, fd: int, rights: int, *, is_dir: bool = True) -> None:
        """Allow ``rights`` beneath the file or directory open as ``fd`` (an ``O_PATH`` fd)."""
        rule = path_rule(self.handled_fs, fd, rights, is_dir=is_dir)
        if rule is not None:
            self.allow_prepared((rule,))

    def allow_prepared(self, rules: Sequence[Any]) -> None:
        """Add path rules made beforehand by :func:`path_rule` for a ruleset handling the same rights.

        Made before the fork (in the zygote), they cost the task only the system calls.
        """
        add, fd_arg, kind, flags = _syscall, self._fd_arg, _KIND_PATH, _NO_FLAGS
        for rule in rules:
            ret = add(_NR_ADD_RULE, fd_arg, kind, rule, flags)
            if ret < 0:
                _check(ret, "landlock_add_rule(path)")
        self.path_rules += len(rules)

    def allow_path(self, path: str, rights: int) -> bool:
        """Open ``path``, allow ``rights`` beneath it, close it; False if it does not exist."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            is_dir = _is_dir_fd(fd)
            self.allow_fd(fd, rights, is_dir=is_dir)
        finally:
            os.close(fd)
        return True

    def allow_port(self, port: int, rights: int) -> None:
        """Allow the TCP ``rights`` (bind and/or connect) for ``port``."""
        rights &= self.handled_net
        if not rights:
            return
        ret = _syscall(_NR_ADD_RULE, self._fd_arg, _KIND_PORT, ctypes.byref(_NetPortAttr(rights, port)), _NO_FLAGS)
        if ret < 0:
            _check(ret, "landlock_add_rule(port)")
        self.port_rules += 1

    def restrict_self(self) -> RulesetCounts:
        """Set no_new_privs, enforce the ruleset on this process, and close the fd.

        Raises:
            LandlockUnavailable: the kernel refused; the process is *not* restricted.
        """
        try:
            set_no_new_privs()
            _check(
                _syscall(
                    ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF),
                    ctypes.c_int(self.fd),
                    ctypes.c_uint32(0),
                ),
                "landlock_restrict_self",
            )
        finally:
            self.close()
        return RulesetCounts(self.path_rules, self.port_rules)

    def close(self) -> None:
        """Close the ruleset fd (idempotent)."""
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError as exc:  # pragma: no cover - only EBADF
                if exc.errno != errno.EBADF:
                    raise
            self.fd = -1


def path_rule(handled_fs: int, fd: int, rights: int, *, is_dir: bool = True) -> Any:
    """The rule allowing ``rights`` beneath ``fd`` in a ruleset handling ``handled_fs``, as the
    pointer ``landlock_add_rule`` takes (for :meth:`Ruleset.allow_prepared`); ``None`` if no right is left.

    Rights are masked to what the ruleset handles, and to file rights for a non-directory.
    """
    rights &= handled_fs if is_dir else handled_fs & FILE_RIGHTS
    return ctypes.byref(_PathBeneathAttr(rights, fd)) if rights else None


class SettableRule:
    """A path rule made beforehand whose directory fd is set later (the task's own ``/proc/<pid>``).

    Built in the zygote: the task process then only stores the fd and makes the
    system call (building the rule there cost ~80 µs of copy-on-write faults).
    """

    __slots__ = ("attr", "ref")

    def __init__(self, handled_fs: int, rights: int) -> None:
        self.attr = _PathBeneathAttr(rights & handled_fs, -1)
        self.ref = ctypes.byref(self.attr)

    def add_to(self, rs: Ruleset, fd: int) -> None:
        """Allow the rule's rights beneath ``fd`` (a directory) in ``rs``."""
        self.attr.parent_fd = fd
        rs.allow_prepared((self.ref,))


def _is_dir_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)
