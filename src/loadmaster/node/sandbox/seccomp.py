"""A seccomp filter that refuses ``socket(AF_UNIX, ...)``, datagram ``socketpair`` and ``io_uring_setup`` (ctypes).

Why: a UNIX socket on a path (docker's, dbus's, a user's agent) is reached by
``connect(2)``, which neither Landlock (no right for it up to ABI 7) nor the
network namespace governs. Refusing the creation of AF_UNIX sockets closes it
(and abstract sockets with it); ``socketpair(2)`` of stream and seqpacket sockets stays allowed, so
pipes between a task's own processes (``multiprocessing.Pipe``, asyncio's
self-pipe) keep working; a datagram pair is refused, since a datagram socket
can ``sendto`` (or re-``connect`` to) any datagram socket on a path.
``io_uring_setup`` is refused because an io_uring can create a socket without
the ``socket`` syscall. The kernel keyrings (``add_key``, ``request_key``,
``keyctl``) are refused always, ``unix_sockets=True`` too: they are not
namespaced, and a task would hold the zygote's session keyring (whatever
the login put there: Kerberos tickets, an ecryptfs key), as Docker's
default profile also refuses them.

Who runs this: the forked task process (child side), after ``no_new_privs``
(``capabilities.drop_all``). :func:`program` builds the filter once (the
zygote warms it, children inherit the bytes); :func:`install`
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
_AND_K = 0x54
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06

_AUDIT_ARCH_X86_64 = 0xC000003E
_AUDIT_ARCH_I386 = 0x40000003
_AUDIT_ARCH_AARCH64 = 0xC00000B7
_X32_BIT = 0x40000000
_NR_IO_URING_SETUP = 425  # the same number on every architecture (asm-generic table)
SOCK_TYPE_MASK = 0xF
SOCK_DGRAM = 2
# (arch, socket, socketpair, (add_key, request_key, keyctl)) per machine
_NATIVE = {"x86_64": (_AUDIT_ARCH_X86_64, 41, 53, (248, 249, 250)),
           "aarch64": (_AUDIT_ARCH_AARCH64, 198, 199, (217, 218, 219))}
_I386 = (_AUDIT_ARCH_I386, 359, 360, (286, 287, 288), 102)  # ..., socketcall

_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG1 = 0, 4, 16, 24  # struct seccomp_data (little-endian: low words)


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _assemble(lines: list[tuple[Any, ...]]) -> bytes:
    """BPF from ``(label,)`` marks and ``(code, k, jt_label, jf_label)`` instructions (jumps by label)."""
    at: dict[str, int] = {}
    n = 0
    for line in lines:
        if len(line) == 1:
            at[line[0]] = n
        else:
            n += 1
    out, n = [], 0
    for line in lines:
        if len(line) == 1:
            continue
        code, k, jt, jf = (*line, None, None)[:4]
        out.append(_ins(code, k, at[jt] - n - 1 if jt else 0, at[jf] - n - 1 if jf else 0))
        n += 1
    return b"".join(out)


def _checks(nr_socket: int, nr_socketpair: int, other: tuple[int, ...], tag: str,
            unix: bool) -> list[tuple[Any, ...]]:
    """One architecture's checks, the syscall number loaded: refuse ``other`` numbers and,
    unless ``unix``, ``socket(AF_UNIX)`` and ``socketpair(_, SOCK_DGRAM)``; allow the rest."""
    deny, allow = f"deny{tag}", f"allow{tag}"
    lines: list[tuple[Any, ...]] = [(_JEQ_K, nr, deny, None) for nr in other]
    if not unix:
        lines += [
            (_JEQ_K, nr_socketpair, f"pair{tag}", None),
            (_JEQ_K, nr_socket, None, allow),
            (_LD_W_ABS, _OFF_ARG0),
            (_JEQ_K, AF_UNIX, deny, allow),
            (f"pair{tag}",),
            # A datagram socket from socketpair can still sendto (or connect to) any
            # datagram socket on a path (journald's, /dev/log, sd_notify's): refused.
            (_LD_W_ABS, _OFF_ARG1),
            (_AND_K, SOCK_TYPE_MASK),
            (_JEQ_K, SOCK_DGRAM, deny, allow),
        ]
    else:
        lines.append((_RET_K, SECCOMP_RET_ALLOW))
    lines += [
        (deny,), (_RET_K, SECCOMP_RET_ERRNO | errno.EACCES),
        (allow,), (_RET_K, SECCOMP_RET_ALLOW),
    ]
    return lines


@cache
def program(unix_sockets: bool = False) -> bytes | None:
    """The filter's BPF instructions (``struct sock_filter[]``), or None on another architecture.

    Always refused: the kernel keyrings (``add_key``, ``request_key``, ``keyctl``:
    not namespaced, and a task would hold the zygote's session keyring, with
    whatever its login put there). Unless ``unix_sockets``: creating UNIX
    sockets, datagram pairs and io_urings.
    """
    native = _NATIVE.get(platform.machine())
    if native is None:
        return None
    arch, nr_socket, nr_socketpair, keyring = native
    other = keyring if unix_sockets else (*keyring, _NR_IO_URING_SETUP)
    lines: list[tuple[Any, ...]] = [
        (_LD_W_ABS, _OFF_ARCH),
        (_JEQ_K, arch, None, "other_arch"),
        (_LD_W_ABS, _OFF_NR),
    ]
    if arch == _AUDIT_ARCH_X86_64:
        lines.append((_JGE_K, _X32_BIT, "deny", None))  # every x32 system call
    lines += _checks(nr_socket, nr_socketpair, other, "", unix_sockets)
    lines.append(("other_arch",))
    if arch == _AUDIT_ARCH_X86_64:
        i386, nr_socket32, nr_socketpair32, keyring32, nr_socketcall = _I386
        other32 = keyring32 if unix_sockets else (*keyring32, nr_socketcall, _NR_IO_URING_SETUP)
        lines += [(_JEQ_K, i386, None, "allow32"), (_LD_W_ABS, _OFF_NR)]
        lines += _checks(nr_socket32, nr_socketpair32, other32, "32", unix_sockets)
    else:
        lines.append((_RET_K, SECCOMP_RET_ALLOW))  # another arch entry: allow
    return _assemble(lines)


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@cache
def prepared(unix_sockets: bool = False) -> tuple[Any, Any] | None:
    """The filter as a ``struct sock_fprog`` and its buffer, made once (the zygote warms it):
    building them in each task cost ~0.2 ms of copy-on-write faults."""
    prog = program(unix_sockets)
    if prog is None:
        return None
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return buf, ctypes.byref(fprog)


def install(unix_sockets: bool = False) -> str:
    """Install the filter (:func:`program`) in the calling process; return ``""`` or why it is not in force.

    Call after ``prctl(PR_SET_NO_NEW_PRIVS)`` (without it an unprivileged
    process may not install a filter).
    """
    made = prepared(unix_sockets)
    if made is None:
        return f"no seccomp filter for {platform.machine()}"
    if _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, made[1], 0, 0) != 0:
        err = ctypes.get_errno()
        return f"seccomp refused: {errno.errorcode.get(err, err)}"
    return ""
