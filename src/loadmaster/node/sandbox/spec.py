"""The sandbox's data: the policy (``Sandbox``), a task's directories, what was in force, what was left.

Pure data, no system calls: imported by the client (``loadmaster.Sandbox``),
the zygote and the task process alike. The work is done by
``prepare.py`` (zygote, before the fork), ``child.py`` (the task process),
``cleanup.py`` (zygote, after the task) and ``denials.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, fields

from loadmaster.errors import SandboxError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

# logging and re are imported where used: the zygote imports this module, and
# logging's at-fork hooks alone cost ~300 µs per fork (see MACHINE-FACTS.md).
LOGGER_NAME = "loadmaster.node.sandbox.policy"

#: Environment variable naming protections to pretend are missing, comma
#: separated: ``landlock``, ``namespaces``. For tests and misbehaving kernels.
DISABLE_ENV = "LOADMASTER_SANDBOX_DISABLE"


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
            A root task is limited by its namespace slot's pids cgroup
            (``pids.max``) instead, where the node has one (cgroup v1
            ``pids``, root).
        tmp_size: the most bytes the private ``/tmp`` (and, apart, the
            private ``/dev/shm``) may hold: each is a tmpfs of this size in
            the task's namespace slot, its pages charged to the task's memory;
            a task that writes more gets ``ENOSPC`` ("No space left on
            device") and its report ``leftovers.tmp_full``. ``None``: a
            directory on the sandbox's disk, with no limit but the disk's.
        unix_sockets: allow creating UNIX-domain sockets. Default False: a
            seccomp filter refuses ``socket(AF_UNIX, ...)`` (and
            ``io_uring_setup``), so no UNIX socket on a path (docker's,
            dbus's) is reachable; ``socketpair`` stays allowed
            (``multiprocessing`` pools and pipes work, a ``Manager`` does not).

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
    tmp_size: int | None = 1 << 30
    unix_sockets: bool = False

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
        size = self.tmp_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 4096):
            raise SandboxError(f"Sandbox.tmp_size: {size!r} is not a size in bytes >= 4096 (or None for no limit)")

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
    ruleset: Any = None  # a Landlock ruleset with the static rules, made by the zygote for this task only

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
        max_processes: the process-count limit in force (``RLIMIT_NPROC`` in the
            task's user namespace, or its slot's pids cgroup as root), or None.
        read_only_view: everything outside the task's work directory, private
            ``/tmp``, ``/dev/shm`` and declared outputs was a read-only mount
            (no ``chmod``, ``chown``, ``utime``, ``setxattr`` there).
        unix_sockets: the task could create UNIX-domain sockets (False: the
            seccomp filter refused them).
        tmp_size: the size limit of the private ``/tmp`` (a tmpfs), or None.
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
    read_only_view: bool = False
    unix_sockets: bool = True
    tmp_size: int | None = None

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
        if self.read_only_view:
            parts.append("read-only outside the sandbox")
        if not self.unix_sockets:
            parts.append("no UNIX sockets")
        if self.max_processes is not None:
            parts.append(f"at most {self.max_processes} processes")
        if self.tmp_size is not None:
            parts.append(f"/tmp at most {self.tmp_size >> 20} MiB")
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
            "max_processes": self.max_processes, "read_only_view": self.read_only_view,
            "unix_sockets": self.unix_sockets, "tmp_size": self.tmp_size,
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
        tmp_full: the private ``/tmp`` or ``/dev/shm`` (a tmpfs of ``tmp_size``)
            was full when the task ended: a write of the task failed with ``ENOSPC``.
        forks_refused: forks the slot's pids cgroup refused during the task
            (root; None where no pids cgroup was in force).
        peak_processes: the most processes and threads the task's tree had at
            once, by the slot's pids cgroup, when known (a new peak of the
            cgroup, or the limit when a fork was refused). When a fork was
            refused the report's ``max_processes`` is raised to it (sampling
            alone misses processes of a fork bomb).
    """

    files: int = 0
    bytes: int = 0
    largest: tuple[tuple[str, int], ...] = ()
    errors: tuple[str, ...] = ()
    tmp_full: bool = False
    forks_refused: int | None = None
    peak_processes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "largest": [list(x) for x in self.largest],
            "errors": list(self.errors),
            "tmp_full": self.tmp_full,
            "forks_refused": self.forks_refused,
            "peak_processes": self.peak_processes,
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

