"""Where this process sits in the cgroup file systems, read from ``/proc``.

Who runs this code: the node runtime (capacity detection at start, the monitor
when it sets up per-task memory cgroups). Nothing here runs in the hot path of
a forked child; every call reads a few small files and returns.

Reads: ``<proc_root>/<pid>/cgroup`` (which cgroup of each hierarchy the process
belongs to) and ``<proc_root>/<pid>/mountinfo`` (where each hierarchy is
mounted and which part of it the mount shows). Writes nothing, except
:func:`can_create_child`, which creates and at once removes one empty,
uniquely named child directory.

How a directory is found. A v1 hierarchy is known by its controllers
(``memory``, ``cpu``...; ``/proc/self/cgroup`` lines such as
``4:memory:/process_api/abc``); the v2 hierarchy by the line ``0::/path``.
The process's directory is ``mount point + (path - mount root)``: the mount
root (field 4 of ``mountinfo``) is not ``/`` in a container that bind-mounts
only its own cgroup. When the path is not under the mount root (a cgroup
namespace seen from outside, a process moved after the mount), the directory
cannot be known and ``None`` is returned.

``cgroup_root`` re-roots mount points: a mount point under the conventional
``/sys/fs/cgroup`` is looked up under ``cgroup_root`` instead, so tests can
point at a prepared tree. When ``mountinfo`` is unreadable, the conventional
layout under ``cgroup_root`` is assumed (``<root>/<controller>`` for v1,
``<root>/unified`` or ``<root>`` itself for v2).

This module does *not* cover: reading limits (see ``capacity``), creating the
per-task cgroups the monitor uses, or cgroup delegation through systemd.

See also: ``loadmaster.node.capacity``, the kernel's
``Documentation/admin-guide/cgroup-v1/`` and ``cgroup-v2.rst``.
"""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CGROUP_ROOT",
    "CgroupMembership",
    "CgroupMount",
    "can_create_child",
    "controller_mount",
    "own_dir",
    "own_unified_dir",
    "read_memberships",
    "read_mounts",
    "unified_dir",
    "up_to_mount",
    "v1_dir",
]

DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
"""Where distributions mount the cgroup file systems; re-rooted by ``cgroup_root``."""


@dataclass(frozen=True)
class CgroupMembership:
    """One line of ``/proc/<pid>/cgroup``.

    Attributes:
        hierarchy_id: 0 for the v2 (unified) hierarchy, > 0 for a v1 one.
        controllers: the v1 controllers of that hierarchy, e.g. ``("cpu", "cpuacct")``
            or ``("name=systemd",)``; empty for v2.
        path: the cgroup's path inside its hierarchy, e.g. ``"/process_api/abc"``.
    """

    hierarchy_id: int
    controllers: tuple[str, ...]
    path: str


@dataclass(frozen=True)
class CgroupMount:
    """A cgroup file system in ``/proc/<pid>/mountinfo``.

    Attributes:
        mount_point: where it is mounted (already re-rooted under ``cgroup_root``).
        root: the directory of the hierarchy this mount shows (``"/"`` usually).
        version: 1 or 2.
        controllers: v1 controllers from the super options (``memory``,
            ``name=systemd``); empty for v2.
    """

    mount_point: str
    root: str
    version: int
    controllers: frozenset[str]


def _unescape_mountinfo(text: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) that ``mountinfo`` uses."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        chunk = text[i : i + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and all(c in "01234567" for c in chunk[1:]):
            out.append(chr(int(chunk[1:], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _rebase(mount_point: str, cgroup_root: str) -> str:
    """Return ``mount_point`` re-rooted from ``/sys/fs/cgroup`` to ``cgroup_root``."""
    if cgroup_root == DEFAULT_CGROUP_ROOT:
        return mount_point
    if mount_point == DEFAULT_CGROUP_ROOT:
        return cgroup_root
    if mount_point.startswith(DEFAULT_CGROUP_ROOT + "/"):
        return cgroup_root + mount_point[len(DEFAULT_CGROUP_ROOT) :]
    return mount_point


def read_memberships(proc_root: str = "/proc", pid: int | str = "self") -> list[CgroupMembership]:
    """Parse ``<proc_root>/<pid>/cgroup``.

    Malformed lines are skipped. A path may contain ``:`` (only the first two
    separate fields).

    Raises:
        OSError: the file cannot be read (no such process, no ``/proc``).
    """
    with open(os.path.join(proc_root, str(pid), "cgroup"), encoding="utf-8",
              errors="surrogateescape") as fh:
        text = fh.read()
    out: list[CgroupMembership] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        try:
            hid = int(parts[0])
        except ValueError:
            continue
        controllers = tuple(c for c in parts[1].split(",") if c)
        out.append(CgroupMembership(hid, controllers, parts[2]))
    return out


def read_mounts(
    proc_root: str = "/proc", pid: int | str = "self", *, cgroup_root: str = DEFAULT_CGROUP_ROOT
) -> list[CgroupMount]:
    """Return the cgroup mounts listed in ``<proc_root>/<pid>/mountinfo``.

    Mount points under ``/sys/fs/cgroup`` are re-rooted under ``cgroup_root``.

    Raises:
        OSError: the file cannot be read.
    """
    with open(os.path.join(proc_root, str(pid), "mountinfo"), encoding="utf-8",
              errors="surrogateescape") as fh:
        text = fh.read()
    out: list[CgroupMount] = []
    for line in text.splitlines():
        # id parent major:minor root mount_point options [optional...] - fstype source super
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype = tail[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        root = _unescape_mountinfo(fields[3])
        mount_point = _rebase(_unescape_mountinfo(fields[4]), cgroup_root)
        if fstype == "cgroup2":
            out.append(CgroupMount(mount_point, root, 2, frozenset()))
        else:
            options = frozenset(tail[2].split(",")) - {"rw", "ro"}
            out.append(CgroupMount(mount_point, root, 1, options))
    return out


def _join_under(mount: CgroupMount, path: str) -> str | None:
    """Return the directory of cgroup ``path`` inside ``mount``, or None if not shown."""
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    rel = path[len(root) :].strip("/")
    return os.path.join(mount.mount_point, rel) if rel else mount.mount_point


def _matching_mounts(
    controller: str | None, proc_root: str, cgroup_root: str
) -> list[CgroupMount]:
    """Return the mounts of v1 ``controller`` (or of v2 when None), latest mount first.

    A later mount on the same point hides an earlier one (a container runtime
    bind-mounting a sub-cgroup over ``/sys/fs/cgroup/memory``), so it is tried first.
    """
    try:
        mounts = read_mounts(proc_root, cgroup_root=cgroup_root)
    except OSError:
        if controller is None:
            guesses = [cgroup_root, os.path.join(cgroup_root, "unified")]
            return [
                CgroupMount(g, "/", 2, frozenset())
                for g in guesses
                if os.path.exists(os.path.join(g, "cgroup.controllers"))
            ][:1]
        guess = os.path.join(cgroup_root, controller)
        if os.path.isdir(guess) and not os.path.exists(os.path.join(guess, "cgroup.controllers")):
            return [CgroupMount(guess, "/", 1, frozenset({controller}))]
        return []
    if controller is None:
        found = [m for m in mounts if m.version == 2]
    else:
        found = [m for m in mounts if m.version == 1 and controller in m.controllers]
    return found[::-1]


def _locate(mounts: list[CgroupMount], path: str) -> tuple[str, str] | None:
    """Return ``(directory, mount point)`` of cgroup ``path`` in the first mount that shows it.

    A mount whose computed directory exists wins; else the first that could show the path.
    """
    fallback: tuple[str, str] | None = None
    for mount in mounts:
        directory = _join_under(mount, path)
        if directory is None:
            continue
        if os.path.isdir(directory):
            return directory, mount.mount_point
        fallback = fallback or (directory, mount.mount_point)
    return fallback


def controller_mount(
    controller: str, *, proc_root: str = "/proc", cgroup_root: str = DEFAULT_CGROUP_ROOT
) -> CgroupMount | None:
    """Return the visible v1 mount of ``controller`` (e.g. ``"memory"``), or None if not mounted.

    When several mounts carry the controller, the latest (the one not hidden) is
    returned. Falls back to ``<cgroup_root>/<controller>`` (root ``/``) when
    ``mountinfo`` cannot be read but that directory exists.
    """
    mounts = _matching_mounts(controller, proc_root, cgroup_root)
    return mounts[0] if mounts else None


def v1_dir(
    controller: str, *, proc_root: str = "/proc", cgroup_root: str = DEFAULT_CGROUP_ROOT
) -> tuple[str, str] | None:
    """Return ``(own directory, mount point)`` of this process in v1 ``controller``.

    None when the controller is not mounted as v1, the process is not in that
    hierarchy, or its cgroup lies outside what every mount shows.
    """
    mounts = _matching_mounts(controller, proc_root, cgroup_root)
    if not mounts:
        return None
    try:
        memberships = read_memberships(proc_root)
    except OSError:
        return None
    for member in memberships:
        if member.hierarchy_id > 0 and controller in member.controllers:
            return _locate(mounts, member.path)
    return None


def own_dir(
    controller: str, *, proc_root: str = "/proc", cgroup_root: str = DEFAULT_CGROUP_ROOT
) -> str | None:
    """Return this process's directory in the v1 hierarchy of ``controller``, or None.

    Example on a hybrid host: ``own_dir("memory")`` ->
    ``"/sys/fs/cgroup/memory/process_api/<id>"``.
    """
    found = v1_dir(controller, proc_root=proc_root, cgroup_root=cgroup_root)
    return None if found is None else found[0]


def unified_dir(
    *, proc_root: str = "/proc", cgroup_root: str = DEFAULT_CGROUP_ROOT
) -> tuple[str, str] | None:
    """Return ``(own directory, mount point)`` of this process in the v2 hierarchy, or None."""
    mounts = _matching_mounts(None, proc_root, cgroup_root)
    if not mounts:
        return None
    try:
        memberships = read_memberships(proc_root)
    except OSError:
        return None
    for member in memberships:
        if member.hierarchy_id == 0 and not member.controllers:
            return _locate(mounts, member.path)
    return None


def own_unified_dir(
    *, proc_root: str = "/proc", cgroup_root: str = DEFAULT_CGROUP_ROOT
) -> str | None:
    """Return this process's directory in the v2 (unified) hierarchy, or None.

    On a hybrid host this is under ``/sys/fs/cgroup/unified``; on a pure v2
    host under ``/sys/fs/cgroup``. Whether a controller (memory, cpu) is
    enabled there is a separate question: see ``cgroup.controllers``.
    """
    found = unified_dir(proc_root=proc_root, cgroup_root=cgroup_root)
    return None if found is None else found[0]


def up_to_mount(directory: str, mount_point: str) -> list[str]:
    """Return ``directory`` and its parents up to and including ``mount_point``, deepest first.

    Returns just ``[directory]`` if it does not lie under ``mount_point``.
    """
    directory = os.path.normpath(directory)
    mount_point = os.path.normpath(mount_point)
    out = [directory]
    if directory != mount_point and not directory.startswith(mount_point.rstrip("/") + "/"):
        return out
    while directory != mount_point:
        directory = os.path.dirname(directory)
        out.append(directory)
    return out


def can_create_child(
    controller: str, *, proc_root: str = "/proc", cgroup_root: str = DEFAULT_CGROUP_ROOT
) -> bool:
    """Return True if this process can create a child cgroup of its own ``controller`` cgroup.

    ``controller`` is a v1 controller name (``"memory"``, ``"cpu"``), or
    ``"unified"`` for this process's v2 directory. The test is real: a child
    named ``loadmaster-probe-<pid>-<random>`` is created with ``mkdir`` and
    removed at once. Returns False when the directory is unknown, the write
    is refused (not root, no delegation, read-only mount), or the child could
    not be removed (it is left behind only then, and is empty).
    """
    if controller == "unified":
        directory = own_unified_dir(proc_root=proc_root, cgroup_root=cgroup_root)
    else:
        directory = own_dir(controller, proc_root=proc_root, cgroup_root=cgroup_root)
    if directory is None or not os.access(directory, os.W_OK | os.X_OK):
        return False
    probe = os.path.join(directory, f"loadmaster-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    try:
        os.rmdir(probe)
    except OSError as exc:
        return exc.errno == errno.ENOENT
    return True
