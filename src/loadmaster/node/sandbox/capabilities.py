"""Dropping every Linux capability of a sandboxed process, through ctypes.

Who runs this code: the forked task process (and ``loadmaster sandbox``'s
child), single-threaded, after the namespaces are entered (joining them needs
``CAP_SYS_ADMIN``) and before Landlock and user code.

What it does (:func:`drop_all`): empties the bounding set
(``PR_CAPBSET_DROP`` for every capability up to ``cap_last_cap``), the
ambient set, and the effective, permitted and inheritable sets (``capset``).
With ``no_new_privs`` (set by Landlock) nothing an ``exec`` runs can get them
back, a root task included: it keeps uid 0 (files it owns, such as most of
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

PR_CAPBSET_DROP = 24
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


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 40


def drop_all() -> str:
    """Drop every capability of the calling thread; return ``""`` or what could not be dropped."""
    problems = []
    if _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        problems.append(f"ambient set: {os.strerror(ctypes.get_errno())}")
    # PR_CAPBSET_DROP needs CAP_SETPCAP: a process without it has nothing to drop there that
    # matters, as it cannot gain capabilities back under no_new_privs either.
    for cap in range(_last_cap() + 1):
        if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _capset(ctypes.byref(header), data) != 0:
        problems.append(f"capset: {os.strerror(ctypes.get_errno())}")
    return "; ".join(problems)


def effective() -> int:
    """This process's effective capability mask (``CapEff`` in ``/proc/self/status``)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0
