"""Dropping every Linux capability of a sandboxed process, through ctypes.

Who runs this code: the forked task process (and ``loadmaster sandbox``'s
child), single-threaded, after the namespaces are entered (joining them needs
``CAP_SYS_ADMIN``) and before Landlock and user code.

What it does (:func:`drop_all`): sets ``no_new_privs``, empties the ambient
set and the effective, permitted and inheritable sets (``capset``). Under
``no_new_privs`` nothing an ``exec`` runs can get them back, a root task
included: it keeps uid 0 (files it owns, such as most of
``/etc``, stay owned by it) but loses raw and netlink sockets, ``mount``,
``setns``, ``TIOCSTI`` on any terminal, ``CAP_DAC_OVERRIDE`` and the rest.

In an unprivileged user namespace the process's capabilities are those of
that namespace only; they are dropped all the same.

What it does *not* cover: uid 0's ownership of files (the read-only view and
Landlock are for that), seccomp.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_capset = _libc.capset
_capset.restype = ctypes.c_int


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


# Built once where this module is imported (the zygote): the child only passes them.
_HEADER = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
_EMPTY = (_Data * 2)()


def drop_all() -> str:
    """Drop every capability of the calling thread, for good; return ``""`` or what failed.

    Three syscalls: ``no_new_privs`` (so no ``exec``, of a setuid program or
    by uid 0, can give any back: under it the kernel caps an exec's permitted
    set at the caller's, which is then empty), the ambient set cleared, and
    ``capset`` to empty effective, permitted and inheritable sets. The
    bounding set is left as it is: with an empty permitted set and
    ``no_new_privs`` it can grant nothing, and emptying it cost ~40 calls.
    """
    problems = []
    if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        problems.append(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        problems.append(f"ambient set: {os.strerror(ctypes.get_errno())}")
    if _capset(ctypes.byref(_HEADER), _EMPTY) != 0:
        problems.append(f"capset: {os.strerror(ctypes.get_errno())}")
    return "; ".join(problems)


def effective() -> int:
    """This process's effective capability mask (``CapEff`` in ``/proc/self/status``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0
