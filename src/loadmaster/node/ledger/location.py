"""Where the node's memory ledger lives, and whether it may live there.

Who runs this code: :class:`~loadmaster.node.ledger.book.MemoryLedger`'s
constructor (through :func:`prepare_dir`), and ``loadmaster reserve`` /
``loadmaster ledger`` through it.

Reads: ``$LOADMASTER_LEDGER``, ``$XDG_RUNTIME_DIR``, ``statfs`` of the
directory (or its nearest existing ancestor) and ``lstat`` of the directory.
Writes: the directory itself and its ``holders/`` and ``wake/`` subdirectories
(mode 0700).

The ledger's safety rests on ``flock`` being node-wide, so a directory on a
network (or FUSE) file system is refused: flock there is emulated, advisory
across clients only, or silently local. A directory that someone else owns or
may write is refused too: whoever can write there can forge or erase
reservations.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from loadmaster.errors import LedgerError

ENV_VAR = "LOADMASTER_LEDGER"
"""Environment variable naming the ledger directory (overrides the default)."""

TMPFS_MAGIC = 0x01021994

NETWORK_FS_MAGIC: dict[int, str] = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x19830326: "beegfs",
    0x01021997: "9p",
    0x00C36400: "ceph",
    0x65735546: "fuse",
    0x5346414F: "afs",
    0x6B414653: "kafs",
    0x7461636F: "ocfs2",
    0x01161970: "gfs2",
    0x20030528: "orangefs",
    0x73757245: "coda",
    0x564C: "ncp",
    0xAAD7AAEA: "panfs",
}
"""statfs ``f_type`` magics of file systems shared between nodes (or, for FUSE,
whose locking is up to a user-space server): flock there is emulated, advisory
across clients only, or silently local, so the ledger refuses them."""


def fs_magic(path: str | os.PathLike[str]) -> int:
    """Return the ``statfs`` ``f_type`` of the file system holding ``path``.

    Raises:
        OSError: ``statfs`` failed (e.g. the path does not exist).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(os.fspath(path)), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def check_fs_type(path: str | os.PathLike[str], magic: int) -> None:
    """Refuse a ledger directory on a network (or FUSE) file system.

    This is the decision only; :func:`check_local_fs` measures ``magic``.

    Raises:
        LedgerError: ``magic`` is one of :data:`NETWORK_FS_MAGIC`.
    """
    name = NETWORK_FS_MAGIC.get(magic)
    if name is None:
        return
    raise LedgerError(
        f"the memory ledger cannot live at {os.fspath(path)!r}: it is on a {name} file system "
        f"(statfs type {magic:#x}), where file locks are emulated, lost on reconnects or not "
        f"shared with other clients, so two processes could both believe they hold the lock. "
        f"Set {ENV_VAR} to a directory on a node-local file system (e.g. /dev/shm/loadmaster-"
        f"{os.geteuid()} or /tmp/loadmaster-{os.geteuid()})."
    )


def check_local_fs(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` (or its nearest existing ancestor) on a network file system.

    Raises:
        LedgerError: see :func:`check_fs_type`.
    """
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    check_fs_type(path, fs_magic(probe))


def default_ledger_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the ledger directory: ``$LOADMASTER_LEDGER``, else a per-user one on tmpfs.

    Order: ``$LOADMASTER_LEDGER``; ``/dev/shm/loadmaster-<uid>`` when ``/dev/shm``
    is a writable tmpfs; ``$XDG_RUNTIME_DIR/loadmaster-ledger``; ``/tmp/loadmaster-<uid>``.
    ``$TMPDIR`` is deliberately not used: batch systems often make it per job,
    which would split the node's ledger.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    uid = os.geteuid()
    shm = Path("/dev/shm")
    try:
        if os.access(shm, os.W_OK | os.X_OK) and fs_magic(shm) == TMPFS_MAGIC:
            return shm / f"loadmaster-{uid}"
    except OSError:
        pass
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg) / "loadmaster-ledger"
    return Path("/tmp") / f"loadmaster-{uid}"


def prepare_dir(path: str | os.PathLike[str]) -> Path:
    """Create (mode 0700) or check the ledger directory and its subdirectories.

    Raises:
        LedgerError: on a network file system, a symlink, not a directory, owned by
            another user, or writable by group or others.
    """
    directory = Path(os.path.abspath(path))
    check_local_fs(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # the umask may have taken bits away
    except FileExistsError:
        pass
    except OSError as exc:
        raise LedgerError(
            f"cannot create the memory ledger directory {str(directory)!r}: {exc}. "
            f"Set {ENV_VAR} to a writable node-local directory."
        ) from exc
    st = os.lstat(directory)
    why = ""
    if stat.S_ISLNK(st.st_mode):
        why = "it is a symbolic link (someone else may have planted it)"
    elif not stat.S_ISDIR(st.st_mode):
        why = "it is not a directory"
    elif st.st_uid != os.geteuid():
        why = f"it is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"it is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        raise LedgerError(
            f"refusing the memory ledger directory {str(directory)!r}: {why}; anyone who can "
            f"write there can forge or erase reservations. Remove it, or set {ENV_VAR} to a "
            f"directory of your own with mode 0700."
        )
    for sub in ("holders", "wake"):
        os.makedirs(directory / sub, mode=0o700, exist_ok=True)
    return directory


__all__ = [
    "ENV_VAR",
    "NETWORK_FS_MAGIC",
    "TMPFS_MAGIC",
    "check_fs_type",
    "check_local_fs",
    "default_ledger_dir",
    "fs_magic",
    "prepare_dir",
]
