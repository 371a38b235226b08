"""The node-wide memory ledger: reservations shared by every loadmaster process on a node.

Who runs this code: any process on the node that is about to start a task — the
executor's scheduler thread (through :meth:`MemoryLedger.try_reserve`, which
never waits for other reservations), ``loadmaster reserve`` (through the
blocking, FIFO :meth:`MemoryLedger.reserve`), other workflows and other Slurm
jobs of the same user. It never runs in a zygote or a task's forked child.

::

    process A ─┐                     <dir>/lock             flock(LOCK_EX) around changes
    process B ─┼── flock ── read ──▶ <dir>/record           header + JSON: holds, queue
    process C ─┘   change   write ─▶ <dir>/holders/P-S.json each process's own entries
                   notify  ───────▶ <dir>/wake/<ticket>    one FIFO per waiter (wake-up)

Reads and writes, all in one directory (mode 0700, owned by the user):

- ``lock``: an empty file; ``flock(LOCK_EX)`` on a fresh open file description
  guards every read-modify-write of the record, so threads of one process
  exclude each other too (POSIX ``fcntl`` locks would not: they belong to the
  process and vanish when *any* of its descriptors of the file is closed). The
  kernel drops the lock when its holder dies, even by SIGKILL.
- ``record``: ``LOADMASTER-LEDGER <version> <length> <sha256>\\n`` then a JSON
  body: the held reservations, the queue of waiting tickets, the next id. It is
  replaced whole (write to ``record.tmp``, then ``rename``), and its length and
  checksum are verified on every read. A record that is missing, torn or corrupt
  is never trusted: it is rebuilt from the holder files (a warning is logged).
- ``holders/<pid>-<starttime>.json``: the same format, holding only the entries
  of that process. Written after the record in the same locked section, only
  when they changed. They exist so the record can be rebuilt from the live
  holders; entries of dead processes are dropped while rebuilding.
- ``wake/<ticket>``: a named pipe per waiter, opened read-write by its waiter.
  Whoever removes a hold or a ticket writes a byte into every waiter's pipe.
- ``/proc/<pid>/stat`` (field 22, start time) of every entry's process, to
  reclaim entries whose process died; ``/proc/meminfo`` (``MemAvailable``);
  ``/proc/<pid>/smaps_rollup`` of tracked task trees (their memory in use).

Waiting, without busy-spinning: a waiter sleeps in ``poll()`` on its own pipe
(written whenever a hold or ticket goes away) and on a pidfd of every process
ahead of it (readable the moment that process dies, even by SIGKILL, even when
it is not our child). These two cover every event that can let a waiter in,
except one: memory freed by processes outside the ledger. Only when a waiter is
blocked by the node's available memory does it re-check on a bounded
exponential backoff (5 ms doubling to :attr:`MemoryLedger.memory_recheck_max_s`,
50 ms): there is no event for "MemAvailable rose", and a 50 ms delay is small
next to a task's run. Otherwise a slow safety re-check
(:attr:`MemoryLedger.safety_recheck_s`, 1 s) covers what has no event (a
process in a PID namespace where ``pidfd_open`` fails).

Admission rule (the whole policy is :func:`admission_refusal`): a request of
``r`` bytes is admitted when its ticket is the oldest live ticket (FIFO; a
non-blocking :meth:`~MemoryLedger.try_reserve` is admitted only when no ticket
waits at all) and both hold::

    H + r <= C          # H: sum of live reservations, C: this process's memory capacity
    r + U <= A          # A: MemAvailable now, U: reserved but not yet used by holders

``U`` is the sum over held reservations of ``max(0, reserved - in use)``; the
memory a reservation uses is known only when its holder said which process
tree runs under it (:meth:`Reservation.track`, ``loadmaster reserve`` tracks
its command); an untracked reservation counts as wholly unused (safe: it may be
counted twice, once in ``U`` and once outside ``A``). Together this is
``H + r <= min(C, (H - U) + A)``: memory in use by reserved tasks is already
outside ``A``, memory reserved but not yet touched is not.

Crash reclamation: an entry stays while its process (pid *and* start time, so a
reused pid does not keep it) or its tracked process is alive and not a zombie.
Every locked section first drops the others.

This module does *not* cover: deciding how much a task needs (the planner),
enforcing it (the monitor), ledgers shared across PID namespaces (pids there
cannot be checked: give each namespace its own ``LOADMASTER_LEDGER``), or
processes with different memory grants sharing one ledger (each checks ``H + r``
against its own capacity). Network file systems are refused (see
:func:`check_local_fs`).

See also: ``docs/ledger.md``, ``loadmaster reserve``, ``loadmaster ledger``.
"""

from __future__ import annotations

import ctypes
import enum
import fcntl
import hashlib
import json
import logging
import os
import select
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from loadmaster.errors import InvalidSpec, LedgerError, LedgerTimeout
from loadmaster.node.measure import procfs
from loadmaster.sizes import format_size

logger = logging.getLogger("loadmaster.node.ledger.book")

T = TypeVar("T")

ENV_VAR = "LOADMASTER_LEDGER"
"""Environment variable naming the ledger directory (overrides the default)."""

FORMAT_VERSION = 1
"""Version written in every record header; a record of another version is rebuilt."""

MAGIC = b"LOADMASTER-LEDGER"

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


# ---------------------------------------------------------------- file system checks


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


# ---------------------------------------------------------------- processes and memory


def process_start_time(pid: int) -> int | None:
    """Return the start time of ``pid`` (field 22 of ``/proc/<pid>/stat``, clock ticks
    since boot), or None when it does not exist or is a zombie (it holds no memory)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # fields[0] is field 3 (state)
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def mem_available() -> int:
    """Return ``MemAvailable`` of ``/proc/meminfo`` in bytes."""
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith(b"MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise LedgerError("/proc/meminfo has no MemAvailable line (Linux 3.14 or later needed)")


def tree_usage_bytes(pid: int) -> int:
    """Return the memory in use by ``pid`` and its descendants: the sum of their
    proportional set sizes (shared pages split between sharers), RSS where
    ``smaps_rollup`` cannot be read."""
    total = 0
    for p in procfs.tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup", "rb") as f:
                data = f.read()
            i = data.index(b"\nPss:")
            total += int(data[i + 5 : data.index(b"kB", i)]) * 1024
        except (OSError, ValueError):
            total += procfs.memory_marks(p)[1]
    return total


# ---------------------------------------------------------------- record format


@dataclass(frozen=True)
class LedgerEntry:
    """One held reservation or one waiting ticket in the record.

    Attributes:
        id: unique in the ledger; a ticket keeps its id when it is admitted. Lower
            ids queued earlier.
        pid, start_time: the process that made it (start time from
            ``/proc/<pid>/stat`` field 22, so a reused pid is not mistaken for it).
        nbytes: reserved (or asked for) bytes.
        label: free text for people (a task's category, a command).
        since: wall-clock time (``time.time()``) it was made or queued.
        track_pid, track_start_time: the process whose tree uses the memory, or 0.
    """

    id: int
    pid: int
    start_time: int
    nbytes: int
    label: str
    since: float
    track_pid: int = 0
    track_start_time: int = 0

    @classmethod
    def from_dict(cls, d: Any) -> LedgerEntry:
        """Return the entry in ``d``.

        Raises:
            ValueError: a field is missing or of the wrong type.
        """
        if not isinstance(d, dict):
            raise ValueError(f"an entry is {type(d).__name__}, not an object")
        try:
            entry = cls(**d)
        except TypeError as exc:
            raise ValueError(f"bad entry {d!r}: {exc}") from None
        for name in ("id", "pid", "start_time", "nbytes", "track_pid", "track_start_time"):
            value = getattr(entry, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"bad {name} {value!r} in entry {d!r}")
        if not isinstance(entry.label, str) or not isinstance(entry.since, int | float):
            raise ValueError(f"bad label or since in entry {d!r}")
        return entry

    @property
    def key(self) -> str:
        """The name of its process's holder file, ``<pid>-<start_time>``."""
        return f"{self.pid}-{self.start_time}"


@dataclass
class _State:
    """The record's content. Mutated only inside a locked section."""

    next_id: int = 1
    holds: list[LedgerEntry] = field(default_factory=list)
    waits: list[LedgerEntry] = field(default_factory=list)

    def copy(self) -> _State:
        return _State(self.next_id, list(self.holds), list(self.waits))

    def to_json(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "holds": [asdict(e) for e in self.holds],
            "waits": [asdict(e) for e in self.waits],
        }

    @classmethod
    def from_json(cls, obj: Any) -> _State:
        if not isinstance(obj, dict) or not isinstance(obj.get("next_id"), int):
            raise ValueError("the body is not a ledger record")
        holds = [LedgerEntry.from_dict(d) for d in obj.get("holds", [])]
        waits = sorted((LedgerEntry.from_dict(d) for d in obj.get("waits", [])), key=_by_id)
        return cls(obj["next_id"], holds, waits)

    def projection(self) -> dict[str, _State]:
        """Split the entries by holder file key."""
        out: dict[str, _State] = {}
        for e in self.holds:
            out.setdefault(e.key, _State(0)).holds.append(e)
        for e in self.waits:
            out.setdefault(e.key, _State(0)).waits.append(e)
        return out


def _by_id(entry: LedgerEntry) -> int:
    return entry.id


def encode_record(obj: Any) -> bytes:
    """Return ``obj`` as a record: a header with version, body length and SHA-256, then JSON."""
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(body).hexdigest().encode()
    return b"%s %d %d %s\n" % (MAGIC, FORMAT_VERSION, len(body), digest) + body


def decode_record(data: bytes) -> Any:
    """Return the JSON body of a record after checking its header.

    Raises:
        ValueError: says what is wrong (empty, not a record, other version, torn, corrupt).
    """
    if not data:
        raise ValueError("the file is empty")
    head, sep, body = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 4 or parts[0] != MAGIC:
        raise ValueError("no ledger header")
    if parts[1] != str(FORMAT_VERSION).encode():
        raise ValueError(f"format version {parts[1]!r}, expected {FORMAT_VERSION}")
    if not parts[2].isdigit() or int(parts[2]) != len(body):
        raise ValueError(f"torn: the header says {parts[2]!r} bytes, {len(body)} follow")
    if hashlib.sha256(body).hexdigest().encode() != parts[3]:
        raise ValueError("checksum mismatch")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ValueError(f"unreadable JSON ({exc})") from None


# ---------------------------------------------------------------- admission


class Blocked(enum.Enum):
    """Why a request is not admitted yet (decides how its waiter sleeps)."""

    QUEUE = "queue"
    CAPACITY = "capacity"
    MEMORY = "memory"


def admission_refusal(
    request: int, *, held: int, capacity: int, available: int, unused: int
) -> tuple[Blocked, str] | None:
    """Return why ``request`` bytes do not fit now, or None when they do.

    The rule (see the module docstring): ``held + request <= capacity`` and
    ``request + unused <= available``.
    """
    if held + request > capacity:
        return Blocked.CAPACITY, (
            f"the ledger holds {format_size(held)} of its {format_size(capacity)} capacity, "
            f"{format_size(max(0, capacity - held))} free"
        )
    if request + unused > available:
        return Blocked.MEMORY, (
            f"the node has {format_size(available)} available (MemAvailable), of which "
            f"{format_size(unused)} is reserved by holders but not yet in use"
        )
    return None


@dataclass(frozen=True)
class LedgerSnapshot:
    """What the ledger holds and who waits, as seen by one process at ``taken_at``.

    ``capacity_bytes`` is the capacity of the process that took it;
    ``free_bytes = max(0, capacity_bytes - held_bytes)``.
    """

    path: str
    capacity_bytes: int
    held_bytes: int
    free_bytes: int
    available_bytes: int
    holders: tuple[LedgerEntry, ...]
    waiters: tuple[LedgerEntry, ...]
    taken_at: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (``loadmaster ledger --json`` prints it)."""
        return asdict(self)


class Reservation:
    """Memory held in the ledger until :meth:`release` (or the end of a ``with`` block).

    Attributes: ``id``, ``nbytes``, ``label``, ``pid`` and ``start_time`` (its holder).
    """

    def __init__(self, ledger: MemoryLedger, entry: LedgerEntry) -> None:
        self._ledger = ledger
        self.id = entry.id
        self.nbytes = entry.nbytes
        self.label = entry.label
        self.pid = entry.pid
        self.start_time = entry.start_time
        self.released = False

    def release(self) -> None:
        """Give the memory back (idempotent)."""
        self._ledger.release(self)

    def track(self, pid: int) -> None:
        """Say that the process tree of ``pid`` uses this reservation.

        The ledger then counts only the part it has not touched yet as unused, and
        keeps the reservation while ``pid`` lives even if the holder dies.
        """
        self._ledger._track(self, pid)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Reservation {self.id} {format_size(self.nbytes)} {self.label!r} {state}>"


class MemoryLedger:
    """A handle on the node's memory ledger directory.

    Settings are read once here: the directory (``path``, else
    ``$LOADMASTER_LEDGER``, else :func:`default_ledger_dir`) and the capacity
    (``capacity_bytes``, else ``detect_capacity().memory`` of this process).
    ``memory_available`` is the seam through which ``MemAvailable`` is read
    (tests give a function; default :func:`mem_available`).

    Thread-safe; each call takes the node-wide lock for about a millisecond.

    Raises (from the constructor):
        LedgerError: the directory is refused (see :func:`prepare_dir`).
    """

    safety_recheck_s: float = 1.0
    """A waiter re-checks at least this often even without a wake-up (for deaths
    that pidfds cannot report)."""

    memory_recheck_max_s: float = 0.05
    """Cap of the backoff of a waiter blocked only by the node's available memory."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        capacity_bytes: int | None = None,
        memory_available: Callable[[], int] | None = None,
    ) -> None:
        self.path = prepare_dir(default_ledger_dir() if path is None else path)
        self._record = self.path / "record"
        self._lock = self.path / "lock"
        self._holders = self.path / "holders"
        self._wake = self.path / "wake"
        if capacity_bytes is None:
            from loadmaster.node.capacity import detect_capacity

            cap = detect_capacity(self.path)
            self.capacity_bytes = cap.memory
            self.capacity_source = cap.sources.get("memory", "detect_capacity()")
        else:
            self.capacity_bytes = int(capacity_bytes)
            self.capacity_source = "capacity_bytes argument"
        self._available = memory_available or mem_available
        self._me_cache: tuple[int, int] | None = None

    # ------------------------------------------------------------ public API

    def reserve(
        self, nbytes: int, *, timeout_s: float | None = None, label: str = ""
    ) -> Reservation:
        """Wait until ``nbytes`` fit (in FIFO order with every other waiter) and hold them.

        Raises:
            InvalidSpec: ``nbytes`` is negative.
            LedgerError: ``nbytes`` exceeds the capacity (it could never fit).
            LedgerTimeout: not admitted within ``timeout_s``; the message names the
                request, what is free, and who holds and waits.
        """
        self._check_request(nbytes)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        me = self._me()
        ticket = LedgerEntry(0, me[0], me[1], int(nbytes), label, time.time())
        fifo: int | None = None

        def enqueue(state: _State) -> LedgerEntry | tuple[Blocked, str]:
            nonlocal ticket, fifo
            ticket = replace(ticket, id=state.next_id)
            state.next_id += 1
            state.waits.append(ticket)
            outcome = self._admit(state, ticket)
            if not isinstance(outcome, LedgerEntry):
                fifo = self._open_fifo(ticket.id)
            return outcome

        pidfds: dict[tuple[int, int], int] = {}
        admitted = False
        try:
            outcome = self._transact(enqueue)
            delay_s = 0.005
            while not isinstance(outcome, LedgerEntry):
                blocked, _why = outcome
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if blocked is Blocked.MEMORY:
                    wait_s, delay_s = delay_s, min(delay_s * 2, self.memory_recheck_max_s)
                else:
                    wait_s, delay_s = self.safety_recheck_s, 0.005
                if deadline is not None:
                    wait_s = min(wait_s, deadline - now)
                assert fifo is not None
                self._sleep(fifo, pidfds, ticket, wait_s)
                outcome = self._transact(lambda s: self._readmit(s, ticket))
            if isinstance(outcome, LedgerEntry):
                admitted = True
                return Reservation(self, outcome)
            raise self._timeout(ticket, timeout_s)
        finally:
            for fd in pidfds.values():
                os.close(fd)
            if fifo is not None:
                os.close(fifo)
            if not admitted:
                self._transact(lambda s: self._drop_ticket(s, ticket))
            if fifo is not None:
                try:
                    os.unlink(self._wake / str(ticket.id))
                except FileNotFoundError:
                    pass

    def try_reserve(self, nbytes: int, *, label: str = "") -> Reservation | None:
        """Hold ``nbytes`` if they fit now and no other request waits; else return None.

        Never waits for other reservations (only for the lock, held briefly by
        whoever changes the record).

        Raises:
            InvalidSpec: ``nbytes`` is negative.
            LedgerError: ``nbytes`` exceeds the capacity (it could never fit).
        """
        self._check_request(nbytes)
        me = self._me()

        def attempt(state: _State) -> LedgerEntry | None:
            if state.waits:
                return None
            entry = LedgerEntry(state.next_id, me[0], me[1], int(nbytes), label, time.time())
            if self._refusal(state, entry) is not None:
                return None
            state.next_id += 1
            state.holds.append(entry)
            return entry

        entry = self._transact(attempt)
        return None if entry is None else Reservation(self, entry)

    def release(self, reservation: Reservation) -> None:
        """Give a reservation's memory back and wake the waiters (idempotent)."""
        if reservation.released:
            return
        reservation.released = True

        def drop(state: _State) -> None:
            for i, e in enumerate(state.holds):
                if (e.id, e.pid, e.start_time) == (
                    reservation.id,
                    reservation.pid,
                    reservation.start_time,
                ):
                    del state.holds[i]
                    return
            logger.debug("reservation %d was no longer in the ledger", reservation.id)

        self._transact(drop)

    def snapshot(self) -> LedgerSnapshot:
        """Return the live holders and waiters (dead ones are reclaimed first)."""
        state = self._transact(lambda s: s.copy())
        held = sum(e.nbytes for e in state.holds)
        return LedgerSnapshot(
            path=str(self.path),
            capacity_bytes=self.capacity_bytes,
            held_bytes=held,
            free_bytes=max(0, self.capacity_bytes - held),
            available_bytes=self._available(),
            holders=tuple(sorted(state.holds, key=_by_id)),
            waiters=tuple(state.waits),
            taken_at=time.time(),
        )

    # ------------------------------------------------------------ admission

    def _check_request(self, nbytes: int) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise InvalidSpec(f"memory reservation: {nbytes!r} is not a whole number of bytes")
        if nbytes > self.capacity_bytes:
            raise LedgerError(
                f"cannot reserve {format_size(nbytes)}: this process's memory capacity is "
                f"{format_size(self.capacity_bytes)} (from {self.capacity_source}), so it "
                f"could never fit. Ask for less, or run where more memory is granted."
            )

    def _refusal(self, state: _State, entry: LedgerEntry) -> tuple[Blocked, str] | None:
        """Apply :func:`admission_refusal` to ``entry`` against the holds of ``state``."""
        held = sum(e.nbytes for e in state.holds)
        available = self._available()
        # Cheap first: everything held counted as unused. Measure trees only if that fails.
        if admission_refusal(
            entry.nbytes, held=held, capacity=self.capacity_bytes, available=available, unused=held
        ) is None:
            return None
        unused = 0
        for e in state.holds:
            alive = e.track_pid and process_start_time(e.track_pid) == e.track_start_time
            used = tree_usage_bytes(e.track_pid) if alive else 0
            unused += max(0, e.nbytes - used)
        return admission_refusal(
            entry.nbytes,
            held=held,
            capacity=self.capacity_bytes,
            available=available,
            unused=unused,
        )

    def _admit(self, state: _State, ticket: LedgerEntry) -> LedgerEntry | tuple[Blocked, str]:
        """Turn ``ticket`` into a hold if it is first in the queue and fits."""
        ahead = [w for w in state.waits if w.id < ticket.id]
        if ahead:
            first = ahead[0]
            return Blocked.QUEUE, (
                f"{len(ahead)} older request(s) wait ahead of it (first: pid {first.pid} "
                f"asking {format_size(first.nbytes)} for {first.label!r})"
            )
        refusal = self._refusal(state, ticket)
        if refusal is not None:
            return refusal
        state.waits = [w for w in state.waits if w.id != ticket.id]
        state.holds.append(ticket)
        return ticket

    def _readmit(self, state: _State, ticket: LedgerEntry) -> LedgerEntry | tuple[Blocked, str]:
        if not any(w.id == ticket.id for w in state.waits):
            # Lost in a rebuild (our holder file was unreadable): queue again in our place.
            logger.warning("ticket %d was missing from the ledger; queued again", ticket.id)
            state.waits = sorted([*state.waits, ticket], key=_by_id)
        return self._admit(state, ticket)

    @staticmethod
    def _drop_ticket(state: _State, ticket: LedgerEntry) -> None:
        state.waits = [w for w in state.waits if w.id != ticket.id]

    def _timeout(self, ticket: LedgerEntry, timeout_s: float | None) -> LedgerTimeout:
        def describe(state: _State) -> str:
            others = [w for w in state.waits if w.id != ticket.id]
            probe = _State(state.next_id, state.holds, others)
            held = sum(e.nbytes for e in state.holds)
            blocked = self._admit(probe.copy(), ticket)
            why = "it would fit now" if isinstance(blocked, LedgerEntry) else blocked[1]
            holders = "; ".join(
                f"pid {e.pid} holds {format_size(e.nbytes)} for {e.label!r} "
                f"since {time.time() - e.since:.1f} s"
                for e in sorted(state.holds, key=lambda e: -e.nbytes)[:5]
            )
            return (
                f"could not reserve {format_size(ticket.nbytes)} for {ticket.label!r} within "
                f"{timeout_s:g} s in the memory ledger {str(self.path)!r}: {why}. Asked "
                f"{format_size(ticket.nbytes)}; free "
                f"{format_size(max(0, self.capacity_bytes - held))} of "
                f"{format_size(self.capacity_bytes)} capacity; MemAvailable "
                f"{format_size(self._available())}; held by: {holders or 'nobody'}"
                f"{f' (and {len(state.holds) - 5} more)' if len(state.holds) > 5 else ''}. "
                f"Next: allow a longer timeout, ask for less, or see `loadmaster ledger`."
            )

        return LedgerTimeout(self._transact(describe))

    def _track(self, reservation: Reservation, pid: int) -> None:
        start = process_start_time(pid)
        if start is None:
            return

        def set_track(state: _State) -> None:
            state.holds = [
                replace(e, track_pid=pid, track_start_time=start)
                if (e.id, e.pid) == (reservation.id, reservation.pid)
                else e
                for e in state.holds
            ]

        self._transact(set_track)

    # ------------------------------------------------------------ waiting

    def _open_fifo(self, ticket_id: int) -> int:
        path = self._wake / str(ticket_id)
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:  # left by a dead waiter of a lost record
            os.unlink(path)
            os.mkfifo(path, 0o600)
        # Read-write: we are our own writer, so poll() never reports a hang-up.
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def _sleep(
        self, fifo: int, pidfds: dict[tuple[int, int], int], ticket: LedgerEntry, wait_s: float
    ) -> None:
        """Sleep until a wake-up byte, the death of a process ahead, or ``wait_s``."""
        state = self._peek()
        watch: set[tuple[int, int]] = set()
        for e in state.holds + [w for w in state.waits if w.id < ticket.id]:
            if process_start_time(e.pid) == e.start_time:
                watch.add((e.pid, e.start_time))
            elif e.track_pid and process_start_time(e.track_pid) == e.track_start_time:
                watch.add((e.track_pid, e.track_start_time))  # its holder died, its task lives
            else:
                return  # dead: the next locked section reclaims it, re-check at once
        for key in list(pidfds):
            if key not in watch:
                os.close(pidfds.pop(key))
        for key in watch - pidfds.keys():
            try:
                fd = os.pidfd_open(key[0])
            except OSError:
                return  # gone since: re-check at once
            if process_start_time(key[0]) != key[1]:
                os.close(fd)
                return  # the pid now names another process: the one we wanted is dead
            pidfds[key] = fd
        poller = select.poll()
        poller.register(fifo, select.POLLIN)
        for fd in pidfds.values():
            poller.register(fd, select.POLLIN)
        poller.poll(max(0.0, wait_s) * 1000)
        try:
            while os.read(fifo, 4096):
                pass
        except BlockingIOError:
            pass

    def _notify(self, state: _State) -> None:
        for w in state.waits:
            try:
                fd = os.open(self._wake / str(w.id), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # no reader (dead) or no pipe yet
            try:
                os.write(fd, b"!")
            except OSError:
                pass  # pipe full: a wake-up is already pending
            finally:
                os.close(fd)

    # ------------------------------------------------------------ the record

    def _me(self) -> tuple[int, int]:
        pid = os.getpid()
        if self._me_cache is None or self._me_cache[0] != pid:
            start = process_start_time(pid)
            assert start is not None
            self._me_cache = (pid, start)
        return self._me_cache

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # A fresh open file description per section, so threads exclude each other.
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _peek(self) -> _State:
        """Read the record without the lock, for choosing what to sleep on (a hint only)."""
        try:
            return _State.from_json(decode_record(self._record.read_bytes()))
        except (OSError, ValueError):
            return _State()

    def _transact(self, change: Callable[[_State], T]) -> T:
        """Under the lock: load (rebuild if needed), reclaim the dead, apply ``change``,
        write what changed, wake the waiters if anything went away."""
        with self._locked():
            old, dirty = self._load()
            state = old.copy()
            self._reclaim(state)
            result = change(state)
            if dirty or state != old:
                self._commit(old, state)
            gone_holds = {e.id for e in old.holds} - {e.id for e in state.holds}
            gone_waits = {e.id for e in old.waits} - {e.id for e in state.waits}
            if gone_holds or gone_waits:
                self._notify(state)
            return result

    def _load(self) -> tuple[_State, bool]:
        try:
            data = self._record.read_bytes()
        except FileNotFoundError:
            return self._rebuild(None), True
        try:
            return _State.from_json(decode_record(data)), False
        except ValueError as exc:
            return self._rebuild(str(exc)), True

    def _rebuild(self, why: str | None) -> _State:
        """Return the state made from the holder files (the caller writes it)."""
        state = _State()
        for child in sorted(self._holders.iterdir()):
            if not child.name.endswith(".json"):
                continue
            try:
                part = _State.from_json(decode_record(child.read_bytes()))
            except (OSError, ValueError) as exc:
                logger.warning(
                    "ledger holder file %s is unreadable (%s); its entries are lost", child, exc
                )
                child.unlink(missing_ok=True)
                continue
            state.holds += part.holds
            state.waits += part.waits
        state.waits.sort(key=_by_id)
        ids = [e.id for e in state.holds + state.waits]
        state.next_id = max(ids, default=0) + 1
        if why is not None:
            logger.warning(
                "ledger record %s was not trusted (%s); rebuilt from the holder files: "
                "%d reservation(s), %d waiter(s) before dropping dead processes",
                self._record,
                why,
                len(state.holds),
                len(state.waits),
            )
        tickets = {str(w.id) for w in state.waits}
        for pipe in self._wake.iterdir():
            if pipe.name not in tickets:
                pipe.unlink(missing_ok=True)
        return state

    def _reclaim(self, state: _State) -> None:
        starts: dict[int, int | None] = {}

        def alive(pid: int, start: int) -> bool:
            if pid not in starts:
                starts[pid] = process_start_time(pid)
            return starts[pid] == start

        def keep(e: LedgerEntry) -> bool:
            if alive(e.pid, e.start_time) or (
                e.track_pid and alive(e.track_pid, e.track_start_time)
            ):
                return True
            logger.info(
                "reclaimed %s %s by pid %d (start time %d) for %r since %.1f s: process gone",
                "reservation of" if e in state.holds else "request for",
                format_size(e.nbytes),
                e.pid,
                e.start_time,
                e.label,
                time.time() - e.since,
            )
            return False

        state.holds = [e for e in state.holds if keep(e)]
        live_waits = [e for e in state.waits if keep(e)]
        for e in state.waits:
            if e not in live_waits:
                (self._wake / str(e.id)).unlink(missing_ok=True)
        state.waits = live_waits

    def _commit(self, old: _State, new: _State) -> None:
        try:
            self._write(self._record, encode_record(new.to_json()))
            before, after = old.projection(), new.projection()
            for key in before.keys() | after.keys():
                if before.get(key) == after.get(key):
                    continue
                path = self._holders / f"{key}.json"
                if key in after:
                    self._write(path, encode_record(after[key].to_json()))
                else:
                    path.unlink(missing_ok=True)
        except OSError as exc:
            raise LedgerError(
                f"cannot write the memory ledger in {str(self.path)!r}: {exc}. "
                f"Free space there (it is usually tmpfs) or set {ENV_VAR} elsewhere."
            ) from exc

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        # Under the lock, so one temporary name per directory is enough; a leftover of a
        # killed writer is simply overwritten.
        tmp = path.parent / ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)


__all__ = [
    "ENV_VAR",
    "Blocked",
    "LedgerEntry",
    "LedgerSnapshot",
    "MemoryLedger",
    "Reservation",
    "admission_refusal",
    "check_fs_type",
    "check_local_fs",
    "decode_record",
    "default_ledger_dir",
    "encode_record",
    "fs_magic",
    "prepare_dir",
    "process_start_time",
]
