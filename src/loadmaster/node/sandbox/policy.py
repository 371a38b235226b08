"""Per-task sandboxes: a fresh work directory, a private ``/tmp``, Landlock file rules.

Process model::

    zygote (parent side, single-threaded)          task process (forked child)
    ------------------------------------          ---------------------------
    prepare(policy, parent_dir, task_id)
      mkdir <root>/{work,tmp,shm}
      capabilities(): probe once, warn once
      open O_PATH fds of system paths once  ──fork──▶ enter(policy, dirs, inputs, outputs)
                                                        chdir(work); TMPDIR, HOME
                                                        namespaces + private /tmp (namespaces.py)
                                                        Landlock rules, restrict_self (landlock.py)
                                                        ... user code ...
    collect(dirs)   ◀── after the whole tree ended ──  _exit
      count files, bytes, largest; rmtree

* :func:`prepare` runs in the zygote before the fork: a few ``mkdir`` calls;
  on first use it also probes the kernel (:func:`capabilities`, one throwaway
  fork) and warns once when a protection is missing.
* :func:`enter` runs in the forked child, single-threaded, before user code.
  Order matters: working directory and environment first, then the mount
  namespace and bind mounts (``unshare`` refuses a multithreaded process and
  Landlock forbids ``mount``), Landlock last. It never raises because the
  kernel lacks a feature; the returned :class:`SandboxState` says what is in
  force.
* :func:`collect` runs in the zygote (or the node runtime) after the task's
  whole process tree has ended: it reports what the task left behind as
  :class:`Leftovers` and removes the sandbox directory.

What the Landlock rules allow (everything else is denied, including ``/home``,
``/root``, ``/srv``, ``/mnt``, other tasks' sandboxes, listing ``/proc`` and
other processes' ``/proc/<pid>``):

* read and execute: ``/usr``, ``/bin``, ``/sbin``, ``/lib*``, ``/etc``,
  ``/opt``, the Python installation (``sys.prefix``, ``sys.base_prefix``) and
  every ``sys.path`` entry, so the interpreter's lazy imports keep working;
* read: a few global ``/proc`` files, the task's own ``/proc/<pid>``, parts of
  ``/sys`` a normal program reads (CPU topology, cgroup limits);
* read and write: ``/dev/null``, ``/dev/zero``, ``/dev/full``, ``/dev/random``,
  ``/dev/urandom``, ``/dev/tty``, ``/dev/pts``; the task's sandbox (work
  directory, private ``/tmp``, private ``/dev/shm``);
* the policy's ``allow_read``/``allow_write`` and the task's declared
  ``inputs`` (read) and ``outputs`` (write);
* TCP connect/bind only if ``network=True`` (or the port is listed), on
  kernels with Landlock ABI >= 4; signals and abstract UNIX sockets are
  scoped to the task on ABI >= 6.

Also: a loopback-only network namespace when the network is off, and every
capability dropped (``capabilities.py``), root tasks included.

What this module does *not* cover: resource limits and measurement (the
monitor), PID namespaces, seccomp, a read-only view of the file system. A
root task keeps uid 0 without capabilities (Landlock binds it too, but
``/etc`` is readable whole, including ``/etc/shadow``). See
``docs/sandbox.md`` (threat model) for costs and limits.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import os
import resource
import stat
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from functools import cache

from loadmaster.errors import SandboxError
from loadmaster.node.sandbox import capabilities as caps
from loadmaster.node.sandbox import landlock, namespaces

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

# logging and re are imported where used: the zygote imports this module, and
# logging's at-fork hooks alone cost ~300 µs per fork (see MACHINE-FACTS.md).
LOGGER_NAME = "loadmaster.node.sandbox.policy"

#: Environment variable naming protections to pretend are missing, comma
#: separated: ``landlock``, ``namespaces``. For tests and misbehaving kernels.
DISABLE_ENV = "LOADMASTER_SANDBOX_DISABLE"

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


class SandboxWarning(UserWarning):
    """Warned once per process when the kernel lacks a protection the policy asked for."""


def _paths(value: Iterable[str | os.PathLike[str]], what: str) -> tuple[str, ...]:
    if isinstance(value, str | os.PathLike):
        value = (value,)
    out = []
    for p in value:
        if not isinstance(p, str | os.PathLike):
            raise SandboxError(f"Sandbox.{what}: {p!r} is not a path; give str or pathlib.Path")
        s = os.fspath(p)
        if not s or "\0" in s:
            raise SandboxError(f"Sandbox.{what}: {s!r} is empty or contains a NUL byte")
        out.append(os.path.abspath(s))
    return tuple(out)


@dataclass(frozen=True)
class Sandbox:
    """The sandbox policy of a task or an executor (public as ``loadmaster.Sandbox``).

    Attributes:
        enabled: False runs the task with no sandbox at all (no work directory either).
        private_tmp: give the task its own ``/tmp`` and ``/dev/shm`` through a
            mount namespace (needs user namespaces when not root).
        landlock: enforce file (and network) rules with Landlock.
        allow_read: extra paths (files or directories) the task may read.
        allow_write: extra paths the task may read and write (directories: the
            whole tree beneath).
        network: allow the network. Default False: the task runs in a
            loopback-only network namespace (no TCP, UDP or netlink to the
            node) and, on Landlock ABI >= 4, under TCP rules; UNIX sockets on
            a path are not covered.
        allow_connect_ports: TCP ports the task may connect to even with ``network=False``.
        fresh_home: set ``HOME`` to the task's work directory (``/home`` and
            ``/root`` are denied, so programs that write caches under ``~``
            write them into the sandbox, where they are collected).
        scope_signals: forbid signals to processes outside the task's tree
            (Landlock ABI >= 6).
        max_processes: the most processes (and threads) the task's tree may
            have at once (``RLIMIT_NPROC``, counted in the task's own user
            namespace: enforced for ordinary users; ``None`` for no limit).
            A root task has no user namespace and is not limited this way.

    Relative paths are made absolute against the current directory when the
    policy is created.

    Raises:
        SandboxError: a path is not a string/PathLike, is empty, or a port is out of range.
    """

    enabled: bool = True
    private_tmp: bool = True
    landlock: bool = True
    allow_read: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    network: bool = False
    allow_connect_ports: tuple[int, ...] = ()
    fresh_home: bool = True
    scope_signals: bool = True
    max_processes: int | None = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_read", _paths(self.allow_read, "allow_read"))
        object.__setattr__(self, "allow_write", _paths(self.allow_write, "allow_write"))
        ports = tuple(self.allow_connect_ports)
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise SandboxError(f"Sandbox.allow_connect_ports: {port!r} is not a TCP port 1-65535")
        object.__setattr__(self, "allow_connect_ports", ports)
        n = self.max_processes
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise SandboxError(f"Sandbox.max_processes: {n!r} is not a positive int (or None for no limit)")

    @classmethod
    def coerce(cls, value: Sandbox | bool | dict[str, Any] | None) -> Sandbox:
        """Accept a ``Sandbox``, ``True``/``None`` (the default policy), ``False`` (off), or a dict.

        Raises:
            SandboxError: unknown keys or a value of another type.
        """
        if value is None or value is True:
            return cls()
        if value is False:
            return cls(enabled=False)
        if isinstance(value, Sandbox):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise SandboxError(
                    f"sandbox: unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}"
                )
            return cls(**value)
        raise SandboxError(f"sandbox: {value!r} is not a Sandbox, a bool, or a dict of its fields")


@dataclass(frozen=True)
class SandboxDirs:
    """The directories of one task's sandbox, created by :func:`prepare`.

    ``root`` holds ``work`` (the task's working directory) and, for a task with
    a namespace of its own, ``tmp`` (its private ``/tmp``) and ``shm`` (its
    private ``/dev/shm``). A task that runs in a namespace *slot* uses the
    slot's ``tmp`` and ``shm`` instead (emptied after each task): ``slot`` is
    then set.
    """

    root: str
    workdir: str
    tmpdir: str
    shm: str = ""
    slot: Any = None
    parent: str = ""  # the directory that holds every sandbox (default: root's parent)

    @property
    def shmdir(self) -> str:
        """The directory mounted on ``/dev/shm`` for the task."""
        return self.shm or os.path.join(self.root, "shm")


@dataclass(frozen=True)
class SandboxState:
    """Which protections were in force for one task (goes into the task's report).

    Attributes:
        enabled: the policy asked for a sandbox.
        private_tmp: ``/tmp`` (and ``/dev/shm``) were private mounts.
        namespaces: ``"mount"`` (root), ``"user+mount"`` (unprivileged), or ``""``.
        landlock_abi: the kernel's Landlock ABI version, 0 if none was used.
        fs_rules: Landlock file rules were enforced.
        network_rules: Landlock TCP rules were enforced (``network=False`` on ABI >= 4).
        scoped: Landlock signal/abstract-socket scoping was enforced (ABI >= 6).
        workdir: the task's working directory.
        tmpdir: ``TMPDIR`` as the task sees it (``/tmp`` when private).
        notes: one line per protection that was asked for but not in force, with the reason.
        caps_dropped: every capability was dropped (bounding, ambient, effective,
            permitted, inheritable sets), root tasks included.
        net_namespace: the task ran in a network namespace with loopback only
            (``network=False`` and no ``allow_connect_ports``).
        max_processes: the process-count limit in force (``RLIMIT_NPROC``), or None.
    """

    enabled: bool
    private_tmp: bool = False
    namespaces: str = ""
    landlock_abi: int = 0
    fs_rules: bool = False
    network_rules: bool = False
    scoped: bool = False
    workdir: str = ""
    tmpdir: str = ""
    notes: tuple[str, ...] = ()
    caps_dropped: bool = False
    net_namespace: bool = False
    max_processes: int | None = None

    def summary(self) -> str:
        """One line naming the protections in force, e.g. ``private /tmp, Landlock ABI 7 (fs)``."""
        if not self.enabled:
            return "no sandbox"
        parts = []
        parts.append(f"private /tmp ({self.namespaces} namespace)" if self.private_tmp else "shared /tmp")
        if self.fs_rules:
            kinds = ["fs"] + (["net"] if self.network_rules else []) + (["scope"] if self.scoped else [])
            parts.append(f"Landlock ABI {self.landlock_abi} ({', '.join(kinds)})")
        else:
            parts.append("no file rules")
        parts.append("no capabilities" if self.caps_dropped else "capabilities kept")
        if self.net_namespace:
            parts.append("loopback-only network namespace")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        # Spelled out rather than through dataclasses.fields(): this runs in every task
        # process, where each page of Python it touches is a copy-on-write fault.
        return {
            "enabled": self.enabled, "private_tmp": self.private_tmp, "namespaces": self.namespaces,
            "landlock_abi": self.landlock_abi, "fs_rules": self.fs_rules, "network_rules": self.network_rules,
            "scoped": self.scoped, "workdir": self.workdir, "tmpdir": self.tmpdir, "notes": list(self.notes),
            "caps_dropped": self.caps_dropped, "net_namespace": self.net_namespace,
            "max_processes": self.max_processes,
        }


@dataclass(frozen=True)
class Leftovers:
    """What a task left in its sandbox when it ended (found and removed by :func:`collect`).

    Attributes:
        files: regular files (and symlinks, sockets, fifos) left, directories not counted.
        bytes: their total apparent size.
        largest: up to 5 ``(path, bytes)``, largest first; paths are relative to the
            sandbox root: ``tmp/...`` was in the task's ``/tmp``, ``work/...`` in its
            work directory, ``shm/...`` in its ``/dev/shm``.
        errors: what could not be removed, one line each (empty when all is gone).
    """

    files: int = 0
    bytes: int = 0
    largest: tuple[tuple[str, int], ...] = ()
    errors: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "largest": [list(x) for x in self.largest],
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class Capabilities:
    """What this node's kernel lets a sandbox use, probed once per process."""

    landlock_abi: int
    namespaces_error: str = ""

    @property
    def namespaces(self) -> bool:
        """True when a private mount namespace can be created here."""
        return not self.namespaces_error


QUIET_ENV = "LOADMASTER_SANDBOX_QUIET"
"""Set by an executor for its zygotes: it has already warned, once, in the user's process."""


@cache
def _landlock_abi() -> int:
    """The kernel's Landlock ABI, probed once per process (in the zygote, by :func:`prepare`)."""
    return landlock.abi_version()


@cache
def capabilities() -> Capabilities:
    """Probe Landlock (one syscall) and namespaces (one throwaway fork) once; warn once if missing.

    Call from the zygote before forking tasks (:func:`prepare` does); the
    result is inherited by every forked child. The warning goes both to the
    ``loadmaster.node.sandbox.policy`` logger and to :mod:`warnings` as
    :class:`SandboxWarning`.
    """
    abi = _landlock_abi()
    ns_error = namespaces.probe()
    caps = Capabilities(abi, ns_error)
    missing = []
    if not abi:
        missing.append("Landlock is unavailable (no file-access rules: tasks can read and write what their user can)")
    if ns_error:
        missing.append(f"mount namespaces are unavailable ({ns_error}; /tmp is shared, TMPDIR is private)")
    if missing and not os.environ.get(QUIET_ENV):
        msg = (
            "loadmaster sandbox degraded on this node: "
            + "; ".join(missing)
            + (". Tasks still run; each report says which protections were in force.")
        )
        import logging

        logging.getLogger(LOGGER_NAME).warning(msg)
        warnings.warn(msg, SandboxWarning, stacklevel=3)
    return caps


def default_parent_dir() -> str:
    """Return the default directory under which task sandboxes are created.

    ``/var/tmp/loadmaster-<uid>/sandboxes``: a disk-backed place outside
    ``/tmp`` (a sandbox under ``/tmp`` still works, with one more bind mount).
    """
    return os.path.join("/var/tmp", f"loadmaster-{os.getuid()}", "sandboxes")


def prepare(policy: Sandbox, parent_dir: str, task_id: int, slot: Any = None) -> SandboxDirs:
    """Create the task's sandbox directories (parent side, before the fork).

    ``parent_dir`` is created if missing (mode 0700). The sandbox root is
    ``<parent_dir>/task-<task_id>-<pid>-<n>``, mode 0700, so other users
    cannot reach it. Also warms :func:`capabilities` and the cached system
    path descriptors so each forked child inherits them.

    With ``slot`` (a :class:`namespaces.NamespaceSlot`), nothing is made: the
    task joins the slot's namespace, whose ``/tmp`` and ``/dev/shm`` are the
    slot's directories, and works in the slot's work directory; all three are
    emptied by :func:`collect` after each task. (Making and removing a fresh
    directory per task cost ~0.3 ms here, and the I/O of tasks in brand-new
    directories measured slower.)

    Raises:
        SandboxError: ``parent_dir`` cannot be created or written (with the OS error).
    """
    if slot is not None:
        root = os.path.dirname(slot.tmpdir)
        work = os.path.join(root, "work")
        try:
            os.makedirs(work, 0o700, exist_ok=True)
        except OSError as exc:
            raise SandboxError(f"cannot create the sandbox work directory {work!r}: {exc}") from exc
        if policy.enabled:
            _warm(policy, parent_dir)
        return SandboxDirs(root=root, workdir=work, tmpdir=slot.tmpdir, shm=slot.shmdir, slot=slot,
                           parent=parent_dir)
    name = f"task-{task_id}-{os.getpid()}"
    root = os.path.join(parent_dir, name)
    try:
        try:
            os.mkdir(root, 0o700)
        except FileNotFoundError:
            os.makedirs(parent_dir, 0o700, exist_ok=True)
            os.mkdir(root, 0o700)
        except FileExistsError:  # a retry of the same task: start clean
            collect(SandboxDirs(root, os.path.join(root, "work"), os.path.join(root, "tmp")))
            os.mkdir(root, 0o700)
        for sub in ("work", "tmp", "shm"):
            os.mkdir(os.path.join(root, sub), 0o700)
    except OSError as exc:
        raise SandboxError(
            f"cannot create the sandbox of task {task_id} under {parent_dir!r}: {exc}. "
            "Give the executor a writable sandbox directory on a local disk."
        ) from exc
    if policy.enabled:
        _warm(policy, os.path.dirname(root))
    return SandboxDirs(root=root, workdir=os.path.join(root, "work"), tmpdir=os.path.join(root, "tmp"))


def _warm(policy: Sandbox, sandboxes_dir: str) -> None:
    """Compute in the zygote what every child's :func:`enter` would otherwise compute again."""
    abi = capabilities().landlock_abi
    if policy.landlock and abi:
        _static_fd_runs(sandboxes_dir)
        _static_path_rules(sandboxes_dir, landlock.fs_rights_for_abi(abi))


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


def enter(
    policy: Sandbox,
    dirs: SandboxDirs,
    *,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
) -> SandboxState:
    """Put the calling process into its sandbox (child side, before user code).

    Call in the forked task process, single-threaded. Changes the working
    directory to ``dirs.workdir``, sets ``TMPDIR``/``TMP``/``TEMP`` (and
    ``HOME`` if ``policy.fresh_home``), makes ``/tmp`` and ``/dev/shm`` private
    mounts, then enforces Landlock rules. Declared ``inputs`` become readable,
    ``outputs`` writable: a directory for its whole tree; a file that does not
    exist yet is created empty so that a rule can name it (a path ending in
    ``/`` is created as a directory).

    Never raises for a missing kernel feature: the returned state lists what
    is in force and why the rest is not.

    Raises:
        SandboxError: ``dirs.workdir`` is missing (``prepare`` was not called).
    """
    if not policy.enabled:
        return SandboxState(enabled=False, workdir=os.getcwd(), tmpdir=os.environ.get("TMPDIR", "/tmp"))
    notes: list[str] = []
    try:
        os.chdir(dirs.workdir)
    except OSError as exc:
        raise SandboxError(f"sandbox work directory {dirs.workdir!r} is unusable: {exc}; call prepare() first") from exc

    # The task's own directories, opened while their paths still name them
    # (the private /tmp may hide them when the sandbox lives under /tmp).
    own_fds: list[int] = []
    if policy.landlock:
        for d in (dirs.workdir, dirs.tmpdir, dirs.shmdir):
            with contextlib.suppress(OSError):
                own_fds.append(landlock.open_path(d))

    # Declared paths under /tmp or /dev/shm would vanish behind the private
    # mounts: they are held open (inside the new namespace, before /tmp is
    # covered) and bound back at their own paths after.
    declared_tmp: list[tuple[str, bool]] = []
    if policy.private_tmp:
        for p in (*policy.allow_read, *inputs, *policy.allow_write, *outputs):
            p_abs = os.path.abspath(p)
            if not (_under(p_abs, "/tmp") or _under(p_abs, "/dev/shm")) or _under(p_abs, dirs.root):
                continue
            if not os.path.lexists(p_abs) and (p in outputs or p in policy.allow_write):
                _create_output(p, p_abs, notes)
            declared_tmp.append((p_abs, p in outputs or p in policy.allow_write))

    # 1. Namespaces and mounts (Landlock would forbid mount afterwards).
    ns_kind = ""
    private = False
    # Network off: a network namespace with loopback only (UDP, netlink and the node's
    # abstract sockets are out of reach, not only TCP). Tasks allowed some TCP ports keep
    # the node's network, with Landlock's TCP rules.
    private_net = not policy.network and not policy.allow_connect_ports
    net_ns = False
    if policy.private_tmp and dirs.slot is not None and not declared_tmp:
        try:
            ns_kind = namespaces.join_slot(dirs.slot, network=not private_net)
            net_ns = private_net and dirs.slot.net_fd is not None
            os.chdir(dirs.workdir)
            private = True
        except OSError as exc:
            notes.append(f"private /tmp not in force: {exc}")
    elif policy.private_tmp:
        try:
            ns_kind = namespaces.enter_mount_namespace()
            if private_net:
                try:
                    namespaces.enter_network_namespace()
                    net_ns = True
                except OSError as exc:
                    notes.append(f"no network namespace: {exc}")
            held = namespaces.hold([*python_paths_under_tmp(), *(p for p, _ in declared_tmp)])
            namespaces.bind(dirs.tmpdir, "/tmp")
            private = True
            if os.path.isdir("/dev/shm"):
                namespaces.bind(dirs.shmdir, "/dev/shm")
            if _under(dirs.workdir, "/tmp") or _under(dirs.workdir, "/dev/shm"):
                # The sandbox itself lives under /tmp (or /dev/shm), now hidden:
                # make the work directory reachable at its own path again.
                # The cwd (entered above) still names the hidden directory.
                hidden = os.open(".", os.O_PATH | os.O_CLOEXEC)
                try:
                    os.makedirs(dirs.workdir, exist_ok=True)
                    namespaces.bind(f"/proc/self/fd/{hidden}", dirs.workdir)
                finally:
                    os.close(hidden)
                os.chdir(dirs.workdir)
            notes.extend(namespaces.rebind(held))
        except OSError as exc:
            notes.append(f"private /tmp not in force: {exc}")
    else:
        notes.append("private /tmp off by policy")
    tmp_seen = "/tmp" if private else dirs.tmpdir

    # 2. Environment the task sees.
    env = os.environ
    for var in ("TMPDIR", "TMP", "TEMP"):
        if env.get(var) != tmp_seen:  # setting costs the child more than looking
            env[var] = tmp_seen
    env["PWD"] = dirs.workdir
    if policy.fresh_home:
        env["HOME"] = dirs.workdir
    tempfile_mod = sys.modules.get("tempfile")
    if tempfile_mod is not None:
        tempfile_mod.tempdir = None  # type: ignore[attr-defined]  # forget the zygote's cached choice

    # 3a. A process-count limit. RLIMIT_NPROC counts the real uid's processes in the
    # caller's user namespace: in the slot's (or the task's own) user namespace that is
    # the task's tree alone. Without a user namespace it would count every process of
    # the uid on the node (root's included), so it is not set there.
    nproc = False
    if policy.max_processes is not None and ns_kind == "user+mount" and private:
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (policy.max_processes, policy.max_processes))
            nproc = True
        except (OSError, ValueError) as exc:
            notes.append(f"no process-count limit: {exc}")

    # 3. No capabilities (root keeps uid 0 but no privilege; joining namespaces needed them).
    dropped_note = caps.drop_all()
    if dropped_note:
        notes.append(f"capabilities not all dropped: {dropped_note}")

    # 4. Landlock, last.
    abi = 0
    fs_rules = net_rules = scoped = False
    if not policy.landlock:
        notes.append("Landlock off by policy")
    else:
        abi = _landlock_abi()
        if not abi:
            notes.append("Landlock unavailable on this kernel (or disabled): no file-access rules")
        else:
            try:
                net_rules, scoped = _restrict(policy, dirs, own_fds, abi, private, inputs, outputs, notes)
                fs_rules = True
            except OSError as exc:
                notes.append(f"Landlock not in force: {exc}")
    for fd in own_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    return SandboxState(
        enabled=True,
        private_tmp=private,
        namespaces=ns_kind if private else "",
        landlock_abi=abi,
        fs_rules=fs_rules,
        network_rules=net_rules,
        scoped=scoped,
        workdir=dirs.workdir,
        tmpdir=tmp_seen,
        notes=tuple(notes),
        caps_dropped=not dropped_note,
        net_namespace=net_ns,
        max_processes=policy.max_processes if nproc else None,
    )


def _env_stubs(dirs: SandboxDirs) -> set[str]:
    """The directories in a slot's tmp/shm on which the Python environment is bound back.

    Outside the slot's namespace they look empty; removing one would detach the
    environment inside the namespace, so :func:`collect` keeps them.
    """
    stubs = set()
    for p in python_paths_under_tmp():
        top, host = ("/tmp", dirs.tmpdir) if _under(p, "/tmp") else ("/dev/shm", dirs.shmdir)
        rel = os.path.relpath(p, top)
        while rel not in ("", "."):
            stubs.add(os.path.join(host, rel))
            rel = os.path.dirname(rel)
    return stubs


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


def _restrict(
    policy: Sandbox,
    dirs: SandboxDirs,
    own_fds: list[int],
    abi: int,
    private: bool,
    inputs: Sequence[str],
    outputs: Sequence[str],
    notes: list[str],
) -> tuple[bool, bool]:
    """Build and enforce the task's ruleset; returns (network rules, scoping) in force."""
    handled_net = 0 if policy.network else landlock.net_rights_for_abi(abi)
    scoped = 0
    if abi >= 6:
        if policy.scope_signals:
            scoped |= landlock.SCOPE_SIGNAL
        if not policy.network:
            scoped |= landlock.SCOPE_ABSTRACT_UNIX_SOCKET
    rs = landlock.Ruleset(abi, handled_fs=landlock.fs_rights_for_abi(abi), handled_net=handled_net, scoped=scoped)
    try:
        sandboxes_dir = dirs.parent or os.path.dirname(dirs.root)
        rs.allow_prepared(_static_path_rules(sandboxes_dir, rs.handled_fs))
        rs.allow_path("/proc/self", _PROC_RIGHTS)  # this task's own /proc/<pid>
        # Rules attach to inodes, and the private /tmp is a bind mount whose root
        # is the tmp directory itself: name each directory, not their parent.
        for fd in own_fds:
            rs.allow_fd(fd, landlock.WRITE_RIGHTS)
        if not private and not policy.private_tmp:
            # /tmp was not asked to be private: the task may use the shared one.
            rs.allow_path("/tmp", landlock.WRITE_RIGHTS)
        elif not private:
            notes.append("shared /tmp is denied by Landlock; TMPDIR points to the task's own directory")
        if not private and os.path.isdir("/dev/shm"):
            rs.allow_path("/dev/shm", landlock.WRITE_RIGHTS)
        for p in (*policy.allow_read, *inputs):
            p_abs = os.path.abspath(p)
            if not os.path.lexists(p_abs):
                notes.append(f"declared input {p!r} does not exist: no rule added")
            for q in _around(p_abs, sandboxes_dir):
                rs.allow_path(q, landlock.READ_RIGHTS)
        for p in (*policy.allow_write, *outputs):
            p_abs = os.path.abspath(p)
            if not os.path.lexists(p_abs):
                _create_output(p, p_abs, notes)
            if not os.path.lexists(p_abs):
                notes.append(f"declared output {p!r} cannot be created: no rule added")
            for q in _around(p_abs, sandboxes_dir):
                rs.allow_path(q, landlock.WRITE_RIGHTS)
        for port in policy.allow_connect_ports:
            rs.allow_port(port, landlock.ACCESS_NET_CONNECT_TCP)
        rs.restrict_self()
    finally:
        rs.close()
    # The task need not hold these. Closed by runs of consecutive fds, found by the
    # zygote: a loop of closes here cost ~0.3 ms per task in copy-on-write faults.
    for low, high in _static_fd_runs(sandboxes_dir):
        os.closerange(low, high + 1)
    _static_rules.cache_clear()
    _static_fd_runs.cache_clear()
    _static_path_rules.cache_clear()
    return bool(rs.handled_net), bool(rs.scoped)


def _create_output(p: str, p_abs: str, notes: list[str]) -> None:
    try:
        if p.endswith("/"):
            os.makedirs(p_abs, exist_ok=True)
        else:
            os.close(os.open(p_abs, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
    except OSError as exc:
        notes.append(f"declared output {p!r}: {exc}")


def collect(dirs: SandboxDirs, *, keep: int = 5) -> Leftovers:
    """Report what the task left in its sandbox, then remove the sandbox (parent side).

    Call after the task's whole process tree has ended (a process still
    writing would race the removal). One walk counts and removes: symlinks are
    counted and removed, never followed; directories the task made unreadable
    or unwritable are given back to their owner (mode 0700) to be emptied.
    Never raises; what could not be removed is listed in ``Leftovers.errors``.
    """
    files = total = 0
    biggest: list[tuple[int, str]] = []
    errors: list[str] = []
    root = dirs.root
    stack = [root]
    kept: set[str] = set()
    if dirs.slot is not None:  # a slot's directories are emptied, not removed
        kept = {root, dirs.workdir, dirs.tmpdir, dirs.shmdir, *_env_stubs(dirs)}
    seen_dirs: list[str] = []
    while stack:
        d = stack.pop()
        seen_dirs.append(d)
        try:
            it = os.scandir(d)
        except PermissionError:
            with contextlib.suppress(OSError):
                os.chmod(d, 0o700)
            try:
                it = os.scandir(d)
            except OSError as exc:
                errors.append(f"{d}: {exc}")
                continue
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"{d}: {exc}")
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                    continue
                files += 1
                total += st.st_size
                item = (st.st_size, entry.path)
                if len(biggest) < keep:
                    heapq.heappush(biggest, item)
                elif item > biggest[0]:
                    heapq.heapreplace(biggest, item)
                _remove(os.unlink, entry.path, errors)
    for d in reversed(seen_dirs):  # children were found after their parents
        if d not in kept:
            _remove(os.rmdir, d, errors)

    largest = tuple((os.path.relpath(p, root), n) for n, p in sorted(biggest, reverse=True))
    return Leftovers(files=files, bytes=total, largest=largest, errors=tuple(errors))


def _remove(func: Any, path: str, errors: list[str]) -> None:
    try:
        func(path)
    except FileNotFoundError:
        pass
    except PermissionError:
        try:
            os.chmod(os.path.dirname(path), 0o700)
            func(path)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    except OSError as exc:
        errors.append(f"{path}: {exc}")


def denied_path(exc: BaseException, state: SandboxState | None = None) -> str | None:
    """Return the path the sandbox probably denied, if ``exc`` (or its causes) shows one.

    Run in the task process on an exception that escaped user code (the
    executor's child records it in the report). A ``PermissionError`` (EACCES
    or EPERM) is attributed to the sandbox when Landlock was in force and the
    ordinary permission bits would have allowed the access: ``access(2)``
    checks the bits but not Landlock, so it tells the two apart. Denials the
    task caught and handled itself are not seen (see ``docs/sandbox.md``).
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, PermissionError) and e.errno in (errno.EACCES, errno.EPERM):
            path = e.filename if isinstance(e.filename, str) else None
            if path and (state is None or state.fs_rules) and _bits_allow(path):
                return path
        e = e.__cause__ or e.__context__
    return None


def _bits_allow(path: str) -> bool:
    if os.path.isdir(path):
        return os.access(path, os.R_OK | os.X_OK)
    if os.path.lexists(path):
        return os.access(path, os.R_OK) or os.access(path, os.W_OK)
    parent = os.path.dirname(path) or "."
    return os.access(parent, os.W_OK | os.X_OK)  # creation refused


_DENIED_RE = r"(/[^\s:'\"`]*)['\"`]?\s*[:)]?\s*Permission denied"


def denied_paths_in_text(text: str, state: SandboxState | None = None) -> tuple[str, ...]:
    """Return the paths in a command's ``Permission denied`` lines that the sandbox denied.

    For shell-command tasks, whose ``PermissionError`` never reaches Python.
    A heuristic: a path counts when the permission bits would have allowed
    the access (see :func:`denied_path`). Run it where the task ran, while
    the files still exist.
    """
    if state is not None and not state.fs_rules:
        return ()
    out: list[str] = []
    import re

    for m in re.finditer(_DENIED_RE, text):
        p = m.group(1)
        if p not in out and _bits_allow(p):
            out.append(p)
    return tuple(out)
