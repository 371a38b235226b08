"""A seccomp filter that refuses ``socket(AF_UNIX, ...)`` and ``io_uring_setup``, through ctypes.

Why: a UNIX socket on a path (docker's, dbus's, a user's agent) is reached by
``connect(2)``, which neither Landlock (no right for it up to ABI 7) nor the
network namespace governs. Refusing the creation of AF_UNIX sockets closes it
(and abstract sockets with it); ``socketpair(2)`` stays allowed, so pipes
between a task's own processes (``multiprocessing.Pipe``, asyncio's self-pipe)
keep working. ``io_uring_setup`` is refused because an io_uring can create a
socket without the ``socket`` syscall.

Who runs this: the forked task process (child side), after ``no_new_privs``
(``capabilities.drop_all``). :func:`program` builds the filter once (the
zygote warms it, children inherit the bytes); :func:`deny_unix_sockets`
installs it with one ``prctl``. A filter cannot be removed: it holds for the
task and for everything it starts, across ``exec``.

Architectures: x86_64 (with the i386 entry points: ``socketcall`` refused
whole, i386 ``socket`` checked; every x32 system call refused) and aarch64.
Elsewhere :func:`program` returns ``None`` and the caller reports the gap.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
from functools import cache

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
AF_UNIX = 1

# BPF opcodes (linux/filter.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06

_AUDIT_ARCH_X86_64 = 0xC000003E
_AUDIT_ARCH_I386 = 0x40000003
_AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_BIT = 0x40000000
_NR_IO_URING_SETUP = 425  # the same number on every architecture (asm-generic table)
# (arch, socket, socketcall or -1) per machine
_NATIVE = {"x86_64": (_AUDIT_ARCH_X86_64, 41), "aarch64": (_AUDIT_ARCH_AARCH64, 198)}
_I386 = (_AUDIT_ARCH_I386, 359, 102)

_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data (little-endian: arg0's low word)


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


@cache
def program() -> bytes | None:
    """The filter's BPF instructions (``struct sock_filter[]``), or None on another architecture."""
    native = _NATIVE.get(platform.machine())
    if native is None:
        return None
    arch, nr_socket = native
    deny = SECCOMP_RET_ERRNO | errno.EACCES
    allow = SECCOMP_RET_ALLOW
    ins = [
        _ins(_LD_W_ABS, _OFF_ARCH),                    # 0
        _ins(_JEQ_K, arch, 0, 9),                      # 1: native -> 2, else -> 11
        _ins(_LD_W_ABS, _OFF_NR),                      # 2
        _ins(_JGE_K, _X32_BIT, 4, 0),                  # 3: x32 (x86_64) -> deny (8)
        _ins(_JEQ_K, _NR_IO_URING_SETUP, 3, 0),        # 4: -> deny (8)
        _ins(_JEQ_K, nr_socket, 0, 3),                 # 5: socket -> 6, else allow (9)
        _ins(_LD_W_ABS, _OFF_ARG0),                    # 6
        _ins(_JEQ_K, AF_UNIX, 0, 1),                   # 7: AF_UNIX -> deny (8), else allow (9)
        _ins(_RET_K, deny),                            # 8
        _ins(_RET_K, allow),                           # 9
        _ins(_RET_K, allow),                           # 10 (padding: keeps the jumps above short)
    ]
    if arch == _AUDIT_ARCH_X86_64:
        i386, nr_socket32, nr_socketcall = _I386
        ins += [
            _ins(_JEQ_K, i386, 0, 7),                  # 11: i386 -> 12, else allow (19)
            _ins(_LD_W_ABS, _OFF_NR),                  # 12
            _ins(_JEQ_K, nr_socketcall, 4, 0),         # 13: -> deny (18)
            _ins(_JEQ_K, _NR_IO_URING_SETUP, 3, 0),    # 14: -> deny (18)
            _ins(_JEQ_K, nr_socket32, 0, 3),           # 15: socket -> 16, else allow (19)
            _ins(_LD_W_ABS, _OFF_ARG0),                # 16
            _ins(_JEQ_K, AF_UNIX, 0, 1),               # 17: -> deny (18), else allow (19)
            _ins(_RET_K, deny),                        # 18
            _ins(_RET_K, allow),                       # 19
        ]
    else:
        ins.append(_ins(_RET_K, allow))                # 11: another arch entry: allow
    return b"".join(ins)


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@cache
def prepared() -> tuple[Any, Any] | None:
    """The filter as a ``struct sock_fprog`` and its buffer, made once (the zygote warms it):
    building them in each task cost ~0.2 ms of copy-on-write faults."""
    prog = program()
    if prog is None:
        return None
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return buf, ctypes.byref(fprog)


def deny_unix_sockets() -> str:
    """Install the filter in the calling process; return ``""`` or why it is not in force.

    Call after ``prctl(PR_SET_NO_NEW_PRIVS)`` (without it an unprivileged
    process may not install a filter).
    """
    made = prepared()
    if made is None:
        return f"no seccomp filter for {platform.machine()}"
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, made[1], 0, 0) != 0:
        err = ctypes.get_errno()
        return f"seccomp refused: {errno.errorcode.get(err, err)}"
    return ""
