"""Which paths a task may use: the static rules (system, Python environment, /proc, devices).

Computed in the zygote (parent side) once per process: ``O_PATH`` descriptors
of the static paths, inherited by every forked task, and the rules made of
them (:func:`static_path_rules`). Also the path questions the rest of the
sandbox asks: is a working directory safe to open for writing
(:func:`cwd_may_be_written`), which parts of the Python environment lie under
``/tmp`` (:func:`python_paths_under_tmp`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from loadmaster.node.sandbox import landlock

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

# Read (and execute) for every task: the system and the Python environment.
SYSTEM_READ_PATHS: tuple[str, ...] = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
)
# What a normal program reads in /proc and /sys (the task's own /proc/<pid> is added in the child).
PROC_SYS_READ_PATHS: tuple[str, ...] = (
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/filesystems",
    "/proc/sys",
    "/sys/devices/system/cpu",
    "/sys/devices/system/node",
    "/sys/fs/cgroup",
    "/sys/kernel/mm/transparent_hugepage",
)
DEVICE_RW_PATHS: tuple[str, ...] = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/pts",
    "/dev/ptmx",
)
# Never granted through sys.path: granting one of these would open the whole tree.
_NEVER_VIA_SYS_PATH = frozenset({"/", "/home", "/root", "/proc", "/sys", "/dev", "/tmp", "/var"})

_DEVICE_RIGHTS = (
    landlock.ACCESS_FS_READ_FILE
    | landlock.ACCESS_FS_WRITE_FILE
    | landlock.ACCESS_FS_TRUNCATE
    | landlock.ACCESS_FS_IOCTL_DEV
    | landlock.ACCESS_FS_READ_DIR
)
_PROC_RIGHTS = landlock.ACCESS_FS_READ_FILE | landlock.ACCESS_FS_READ_DIR


@dataclass(frozen=True)
class _Rule:
    fd: int
    rights: int
    is_dir: bool


def _python_paths() -> list[str]:
    """The Python environment's directories a task may read.

    A ``sys.path`` entry that is a home directory or holds one (a script
    started in ``$HOME`` puts ``$HOME`` there; ``''`` is the current
    directory) is not granted whole: only what can be imported from it
    (``*.py`` files, extension modules, package directories with an
    ``__init__.py``), so ``~/.ssh`` and the like stay closed.
    """
    out = []
    homes = _homes()
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path):
        p = os.path.abspath(p or os.getcwd())
        if p in _NEVER_VIA_SYS_PATH:
            continue
        if any(_under(h, p) for h in homes):
            out.extend(_importables(p))
        else:
            out.append(p)
    return out


@cache
def _homes() -> frozenset[str]:
    """Home directories whose whole tree is never granted by a sys.path entry or a working directory."""
    found = {"/root", "/home", os.path.expanduser("~")}
    with contextlib.suppress(KeyError, ImportError):
        import pwd

        found.add(pwd.getpwuid(os.getuid()).pw_dir)
    return frozenset(os.path.realpath(h) for h in found if h and h != "/")


def _importables(directory: str) -> list[str]:
    """What ``import`` can take from ``directory``: modules and packages, no dot-entries, nothing else."""
    out: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                if os.path.exists(os.path.join(e.path, "__init__.py")):
                    out.append(e.path)
            elif e.name.endswith((".py", ".pyc", ".so", ".pth", ".zip")):
                out.append(e.path)
        except OSError:
            continue
    return out


def cwd_may_be_written(path: str) -> bool:
    """True when a command's chosen working directory may be made writable for it.

    Refused: ``/`` and the other top directories never granted whole, the
    system directories and anything under them, a home directory or one
    that holds a home. Such a directory stays as the other rules leave it.
    """
    real = os.path.realpath(path)
    if real in _NEVER_VIA_SYS_PATH or real in ("/boot", "/run", "/srv", "/mnt", "/media"):
        return False
    if any(_under(real, top) for top in (*SYSTEM_READ_PATHS, "/proc", "/sys", "/dev", "/boot")):
        return False
    return not any(_under(h, real) for h in _homes())


def _around(path: str, excluded: str) -> list[str]:
    """Return ``[path]``, or, when ``path`` contains ``excluded``, the entries that cover
    ``path`` except ``excluded`` (Landlock only allows, so "all but" is spelled out).

    Keeps a read grant on, say, the user's project directory from opening every
    task's sandbox created beneath it.
    """
    real, ex = os.path.realpath(path), os.path.realpath(excluded)
    if not _under(ex, real):
        return [path]
    if real == ex:
        return []
    out: list[str] = []
    try:
        names = os.listdir(real)
    except OSError:
        return []
    for name in names:
        child = os.path.join(real, name)
        if _under(ex, child):
            out.extend(_around(child, ex))
        else:
            out.append(child)
    return out


@cache
def _static_fd_runs(sandboxes_dir: str) -> tuple[tuple[int, int], ...]:
    """The static rules' fds as runs ``(first, last)`` of consecutive numbers (computed in the zygote)."""
    runs: list[list[int]] = []
    for fd in sorted(rule.fd for rule in _static_rules(sandboxes_dir)):
        if runs and fd == runs[-1][1] + 1:
            runs[-1][1] = fd
        else:
            runs.append([fd, fd])
    return tuple((low, high) for low, high in runs)


@cache
def _static_path_rules(sandboxes_dir: str, handled_fs: int) -> tuple[Any, ...]:
    """The static rules, ready for ``Ruleset.allow_prepared`` in a ruleset handling ``handled_fs``."""
    made = (landlock.path_rule(handled_fs, r.fd, r.rights, is_dir=r.is_dir) for r in _static_rules(sandboxes_dir))
    return tuple(attr for attr in made if attr is not None)


@cache
def _static_rules(sandboxes_dir: str) -> tuple[_Rule, ...]:
    """O_PATH fds (close-on-exec) of the paths every task may use, opened once per process.

    ``sandboxes_dir`` (the parent of every task's sandbox) is carved out of
    every grant that would contain it.
    """
    rules: list[_Rule] = []
    seen: set[str] = set()

    def add(paths: Iterable[str], rights: int) -> None:
        for top in paths:
            for p in _around(top, sandboxes_dir):
                if p in seen:
                    continue
                seen.add(p)
                try:
                    fd = landlock.open_path(p)
                except OSError:
                    continue
                rules.append(_Rule(fd, rights, stat.S_ISDIR(os.fstat(fd).st_mode)))

    add(SYSTEM_READ_PATHS, landlock.READ_RIGHTS)
    add(_python_paths(), landlock.READ_RIGHTS)
    add(PROC_SYS_READ_PATHS, _PROC_RIGHTS)
    add(DEVICE_RW_PATHS, _DEVICE_RIGHTS)
    return tuple(rules)



@functools.cache
def python_paths_under_tmp() -> tuple[str, ...]:
    """The Python environment's directories that lie under ``/tmp`` or ``/dev/shm``.

    A private ``/tmp`` would hide them (a virtualenv or a checkout made under
    ``/tmp``), so every task namespace binds them back at their own paths.
    """
    found = sorted({p for p in _python_paths() if _under(p, "/tmp") or _under(p, "/dev/shm")})
    return tuple(p for p in found if not any(q != p and _under(p, q) for q in found))


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


