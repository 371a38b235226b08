"""The ledger's on-disk record: its entries, its state, and the checked file format.

Who runs this code: every ledger user, inside the locked section of
:mod:`loadmaster.node.ledger.store` (and once without the lock, for a hint
of what to sleep on).

A record file is ``LOADMASTER-LEDGER <version> <length> <sha256>\\n`` then a
JSON body: the held reservations, the queue of waiting tickets, the next id.
The node's ``record`` and each process's ``holders/<pid>-<starttime>.json``
share this format; :func:`decode_record` verifies length and checksum, so a
torn or corrupt file is recognised, never trusted.

This module reads and writes no files (``store`` does); it only turns a state
into bytes and back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1
"""Version written in every record header; a record of another version is rebuilt."""

MAGIC = b"LOADMASTER-LEDGER"


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
class LedgerState:
    """The record's content. Mutated only inside a locked section."""

    next_id: int = 1
    holds: list[LedgerEntry] = field(default_factory=list)
    waits: list[LedgerEntry] = field(default_factory=list)

    def copy(self) -> LedgerState:
        """Return a copy whose lists can be changed without touching this one."""
        return LedgerState(self.next_id, list(self.holds), list(self.waits))

    def to_json(self) -> dict[str, Any]:
        """Return the JSON body of a record holding this state."""
        return {
            "next_id": self.next_id,
            "holds": [asdict(e) for e in self.holds],
            "waits": [asdict(e) for e in self.waits],
        }

    @classmethod
    def from_json(cls, obj: Any) -> LedgerState:
        """Return the state in a decoded record body.

        Raises:
            ValueError: ``obj`` is not a record body or holds a bad entry.
        """
        if not isinstance(obj, dict) or not isinstance(obj.get("next_id"), int):
            raise ValueError("the body is not a ledger record")
        holds = [LedgerEntry.from_dict(d) for d in obj.get("holds", [])]
        waits = sorted((LedgerEntry.from_dict(d) for d in obj.get("waits", [])), key=by_id)
        return cls(obj["next_id"], holds, waits)

    def projection(self) -> dict[str, LedgerState]:
        """Split the entries by holder file key."""
        out: dict[str, LedgerState] = {}
        for e in self.holds:
            out.setdefault(e.key, LedgerState(0)).holds.append(e)
        for e in self.waits:
            out.setdefault(e.key, LedgerState(0)).waits.append(e)
        return out


def by_id(entry: LedgerEntry) -> int:
    """Sort key: queue order (lower ids were queued earlier)."""
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


__all__ = ["FORMAT_VERSION", "MAGIC", "LedgerEntry", "LedgerState", "by_id", "decode_record", "encode_record"]
