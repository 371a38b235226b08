"""Per-task sandboxes (the package's entry point): a fresh work directory, a private ``/tmp``, Landlock file rules.

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

Also: a loopback-only network namespace when the network is off, every
capability dropped (``capabilities.py``), root tasks included, a read-only
view of everything outside the sandbox (``namespaces.read_only_view``), no
UNIX sockets (``seccomp.py``), a process limit (``RLIMIT_NPROC``, or a pids
cgroup per slot as root: ``ns_slots.py``) and a size-limited tmpfs ``/tmp``.

What this package does *not* cover: memory, CPU and time limits and
measurement (the monitor), PID namespaces. A root task keeps uid 0 without
capabilities (Landlock binds it too, but
``/etc`` is readable whole, including ``/etc/shadow``). See
``docs/sandbox.md`` (threat model) for costs and limits.

The code is split by job: ``spec.py`` (the dataclasses), ``paths.py`` (which
paths the rules cover), ``prepare.py`` (zygote, before the fork), ``child.py``
(the task process), ``cleanup.py`` (zygote, after the task), ``denials.py``;
this module gathers their public names.
"""

from __future__ import annotations

from loadmaster.node.sandbox.child import enter
from loadmaster.node.sandbox.cleanup import collect
from loadmaster.node.sandbox.denials import denied_path, denied_paths_in_text
from loadmaster.node.sandbox.paths import (
    DEVICE_RW_PATHS,
    PROC_SYS_READ_PATHS,
    SYSTEM_READ_PATHS,
    cwd_may_be_written,
    python_paths_under_tmp,
)
from loadmaster.node.sandbox.prepare import capabilities, default_parent_dir, prepare
from loadmaster.node.sandbox.spec import (
    DISABLE_ENV,
    LOGGER_NAME,
    QUIET_ENV,
    Capabilities,
    Leftovers,
    Sandbox,
    SandboxDirs,
    SandboxState,
    SandboxWarning,
)

__all__ = [
    "DEVICE_RW_PATHS", "DISABLE_ENV", "LOGGER_NAME", "PROC_SYS_READ_PATHS", "QUIET_ENV", "SYSTEM_READ_PATHS",
    "Capabilities", "Leftovers", "Sandbox", "SandboxDirs", "SandboxState", "SandboxWarning", "capabilities",
    "collect", "cwd_may_be_written", "default_parent_dir", "denied_path", "denied_paths_in_text", "enter",
    "prepare", "python_paths_under_tmp",
]
