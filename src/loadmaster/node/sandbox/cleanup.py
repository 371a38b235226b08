"""The zygote's side after a task: count what it left in its sandbox, remove it (:func:`collect`)."""

from __future__ import annotations

import contextlib
import heapq
import os
import stat

from loadmaster.node.sandbox.paths import _under, python_paths_under_tmp
from loadmaster.node.sandbox.spec import Leftovers, SandboxDirs

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

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
    # A slot's /tmp and /dev/shm may be tmpfs mounts in its namespace, reached through
    # fds the zygote holds (/proc/self/fd/N): walked as well, reported as tmp/ and shm/.
    outside = [(d, label) for d, label in ((dirs.tmpdir, "tmp"), (dirs.shmdir, "shm")) if not _under(d, root)]
    tmp_full = False
    forks_refused = peak_processes = None
    slot = dirs.slot
    if slot is not None:  # a slot's directories are emptied, not removed
        kept = {root, dirs.workdir, dirs.tmpdir, dirs.shmdir, *_env_stubs(dirs)}
        # The task can write only there (Landlock, the read-only view): the slot's root
        # (and, with tmpfs mounts, its unused tmp and shm directories) need no walk.
        stack = [dirs.workdir, *(d for d, _ in outside)] if outside else [dirs.workdir, dirs.tmpdir, dirs.shmdir]
        for d, _ in outside:
            with contextlib.suppress(OSError):
                fs = os.statvfs(d)
                tmp_full = tmp_full or fs.f_bavail * fs.f_frsize < 65536
        if slot.pids is not None:
            with contextlib.suppress(OSError, ValueError):
                forks_refused, peak_processes = slot.pids.after_task()
    seen_dirs: list[str] = []
    # A directory on another file system than the one it was found on is a mount point: the
    # Python environment bound back at its own path in a slot's /tmp (a checkout or venv under
    # /tmp), seen through the slot's tmpfs. It is not the task's: never walked, never emptied.
    devs: dict[str, int] = {}
    for top in stack:
        with contextlib.suppress(OSError):
            devs[top] = os.stat(top).st_dev
    while stack:
        d = stack.pop()
        seen_dirs.append(d)
        dev = devs.pop(d, None)
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
                    if dev is not None and st.st_dev != dev:
                        kept.add(entry.path)
                        continue
                    stack.append(entry.path)
                    devs[entry.path] = st.st_dev
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

    def label(p: str) -> str:
        for d, name in outside:
            if _under(p, d):
                return os.path.join(name, os.path.relpath(p, d))
        return os.path.relpath(p, root)

    largest = tuple((label(p), n) for n, p in sorted(biggest, reverse=True))
    return Leftovers(files=files, bytes=total, largest=largest, errors=tuple(errors), tmp_full=tmp_full,
                     forks_refused=forks_refused, peak_processes=peak_processes)


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


