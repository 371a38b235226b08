"""The zygote's side before a task's fork: probe the kernel once, make the task's directories.

Runs in the zygote (single-threaded) or ``loadmaster sandbox``; nothing here
runs in a task process.
"""

from __future__ import annotations

import os
import warnings
from functools import cache

from loadmaster.errors import SandboxError
from loadmaster.node.sandbox import landlock, namespaces, seccomp
from loadmaster.node.sandbox.cleanup import collect
from loadmaster.node.sandbox.paths import _PROC_RIGHTS, _static_fd_runs, _static_path_rules
from loadmaster.node.sandbox.spec import LOGGER_NAME, QUIET_ENV, Capabilities, Sandbox, SandboxDirs, SandboxWarning

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any


quiet = False
"""Set by a zygote whose executor has already warned, once, in the user's process (not in
the environment: the tasks would inherit it)."""

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
    if missing and not (quiet or os.environ.get(QUIET_ENV)):
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


def prepare(policy: Sandbox, parent_dir: str, task_id: int, slot: Any = None, ruleset: bool = True) -> SandboxDirs:
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
    directories measured slower.) ``ruleset=False``: no Landlock ruleset is
    made for the task (its slot's forker holds one, ``process/slotforker.py``).

    Raises:
        SandboxError: ``parent_dir`` cannot be created or written (with the OS error).
    """
    if slot is not None:  # its directories were made with it, and its work directory bound in it
        if policy.enabled:
            _warm(policy, parent_dir)
        if slot.pids is not None:
            try:
                slot.pids.before_task(policy.max_processes)
            except OSError as exc:
                raise SandboxError(f"cannot set the process limit of the slot's pids cgroup: {exc}") from exc
        return SandboxDirs(root=slot.root, workdir=slot.workdir, tmpdir=slot.tmpdir, shm=slot.shmdir, slot=slot,
                           parent=parent_dir,
                           ruleset=prepared_ruleset(policy, parent_dir, _slot_rule_fds(slot)) if ruleset else None)
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


_prepared: list[Any] = []  # the ruleset made for the last task forked (closed here at the next)


def _slot_rule_fds(slot: Any) -> tuple[int, ...]:
    """``O_PATH`` fds of a slot's work directory, ``/tmp`` and ``/dev/shm``, opened once per slot."""
    fds: tuple[int, ...] | None = getattr(slot, "rule_fds", None)
    if fds is None:
        opened = []
        for d in (slot.workdir, slot.tmpdir, slot.shmdir):
            try:
                opened.append(landlock.open_path(d))
            except OSError:
                pass
        fds = tuple(opened)
        slot.rule_fds = fds
        slot.dir_fds = (*slot.dir_fds, *fds)  # closed with the slot
    return fds


def prepared_ruleset(policy: Sandbox, sandboxes_dir: str, own: tuple[int, ...] = ()) -> Any:
    """A fresh Landlock ruleset holding the static rules (and the rules for ``own``, the
    task's own directories, read-write), for the one task about to be forked.

    Made in the zygote, where adding ~35 rules costs only the system calls; in
    the task process the same loop cost ~0.25 ms more in copy-on-write faults.
    A ruleset is one kernel object shared by every process holding its fd, so
    each task gets one of its own: the zygote closes its copy when it prepares
    the next task (the child holds its own fd, adds its own rules, enforces and
    closes it). None when Landlock is off or unavailable.
    """
    while _prepared:
        _prepared.pop().close()
    abi = capabilities().landlock_abi
    if not (policy.enabled and policy.landlock and abi):
        return None
    from loadmaster.node.sandbox.child import new_ruleset

    try:
        rs = new_ruleset(policy, abi)
        rs.allow_prepared(_static_path_rules(sandboxes_dir, rs.handled_fs))
        for fd in own:
            rs.allow_fd(fd, landlock.WRITE_RIGHTS)
        rs.own_rules = bool(own)
        rs.proc_rule = landlock.SettableRule(rs.handled_fs, _PROC_RIGHTS)
    except OSError:
        return None  # the child builds its own and reports what failed
    _prepared.append(rs)
    return rs


def _warm(policy: Sandbox, sandboxes_dir: str) -> None:
    """Compute in the zygote what every child's :func:`enter` would otherwise compute again."""
    abi = capabilities().landlock_abi
    seccomp.prepared(policy.unix_sockets)
    if policy.landlock and abi:
        _static_fd_runs(sandboxes_dir)
        _static_path_rules(sandboxes_dir, landlock.fs_rights_for_abi(abi))


