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
from loadmaster.node.sandbox.paths import _static_fd_runs, _static_path_rules
from loadmaster.node.sandbox.spec import LOGGER_NAME, QUIET_ENV, Capabilities, Sandbox, SandboxDirs, SandboxWarning

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

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
    if slot is not None:  # its directories were made with it, and its work directory bound in it
        if policy.enabled:
            _warm(policy, parent_dir)
        if slot.pids is not None:
            try:
                slot.pids.before_task(policy.max_processes)
            except OSError as exc:
                raise SandboxError(f"cannot set the process limit of the slot's pids cgroup: {exc}") from exc
        return SandboxDirs(root=slot.root, workdir=slot.workdir, tmpdir=slot.tmpdir, shm=slot.shmdir, slot=slot,
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
    if not policy.unix_sockets:
        seccomp.prepared()
    if policy.landlock and abi:
        _static_fd_runs(sandboxes_dir)
        _static_path_rules(sandboxes_dir, landlock.fs_rights_for_abi(abi))


