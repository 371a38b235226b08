"""What crosses the seam about declared files: the order's part and the report's part.

Built by the executor (client) and read by the node runtime (``data/stage.py``);
plain frozen dataclasses of strings and ints, so they pickle with the standard
pickler over any backend. The node never unpickles a task's bytes to find them.

Does not cover: hashing (``data/digest.py``), the cache (``data/cache.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Source:
    """Where a digest can be read: ``path`` on ``host``, held by ``node``.

    ``node`` is ``"client"`` for the submitter's own file, else the name of a
    node whose cache holds it (``path`` is then that cache's entry).
    ``address`` (``"ip:port"``) is that holder's transfer server, or ``""``
    when only a process on ``host`` can read it (``data/transfer/``).
    """

    node: str
    host: str
    path: str
    address: str = ""


@dataclass(frozen=True, slots=True)
class InputRef:
    """One declared input: its content name and where it can be fetched from.

    Attributes:
        key: the submitter's absolute path (what ``File(path)`` named).
        digest: the content's name (``data/digest.py``).
        size: bytes (a directory: the sum of its files).
        kind: ``"file"`` or ``"dir"``.
        sources: where to read it, best first.
    """

    key: str
    digest: str
    size: int
    kind: str
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True, slots=True)
class OutputRef:
    """One declared output: the submitter's absolute path, and whether it stays in the node's cache only."""

    key: str
    keep: bool = False


@dataclass(frozen=True, slots=True)
class DataOrder:
    """An order's declared files (``Order.data``).

    ``argv`` maps a command's argv positions to the key of the input or
    output there (the node puts the staged path in).
    """

    inputs: tuple[InputRef, ...] = ()
    outputs: tuple[OutputRef, ...] = ()
    argv: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Staged:
    """How one input reached the task: ``hit`` (already cached: 0 bytes) or fetched from ``source``."""

    key: str
    digest: str
    size: int
    hit: bool
    bytes_copied: int
    source: str  # "cache", or the node the bytes came from ("client" for the submitter's file)
    seconds: float
    via: tuple[tuple[str, int], ...] = ()  # (node, bytes) per source of a transfer resumed elsewhere
    started_at: float = 0.0  # wall clock (time.time()) when staging this input began on the node


@dataclass(frozen=True, slots=True)
class Produced:
    """One output after the task: its digest and size, kept in the cache, copied back or not."""

    key: str
    digest: str
    size: int
    kind: str
    kept: bool
    copied_back: bool


@dataclass(frozen=True, slots=True)
class DataReport:
    """What the node did with a task's declared files (``Done.data``, ``TaskReport.data``).

    Attributes:
        node, host: where (``host`` as the node sees itself).
        cache_dir: that node's cache (for a later task that wants what it holds).
        inputs: one :class:`Staged` per input.
        outputs: one :class:`Produced` per output written (none when the task failed).
        staging_time: seconds spent staging inputs before the task started.
        output_time: seconds spent caching and copying back outputs after it ended.
        error: why a declared file failed (the task then fails with it), or ``""``.
    """

    node: str
    host: str
    cache_dir: str
    inputs: tuple[Staged, ...] = ()
    outputs: tuple[Produced, ...] = ()
    staging_time: float = 0.0
    output_time: float = 0.0
    error: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def bytes_fetched(self) -> int:
        """Bytes moved into the cache for this task's inputs (0 when all were hits)."""
        return sum(s.bytes_copied for s in self.inputs)

    @property
    def transfer_time(self) -> float:
        """Seconds spent fetching the inputs that were not in the cache."""
        return sum(s.seconds for s in self.inputs if not s.hit)

    @property
    def fetched_from(self) -> dict[str, int]:
        """Bytes fetched per source node (``"client"`` for the submitter)."""
        out: dict[str, int] = {}
        for s in self.inputs:
            for node, n in (s.via or ((s.source, s.bytes_copied),) if s.bytes_copied else ()):
                out[node] = out.get(node, 0) + n
        return out

    @property
    def cache_hits(self) -> int:
        """How many inputs were in the cache already."""
        return sum(1 for s in self.inputs if s.hit)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "node": self.node, "host": self.host, "cache_dir": self.cache_dir,
            "bytes_fetched": self.bytes_fetched, "cache_hits": self.cache_hits,
            "transfer_time": self.transfer_time, "fetched_from": self.fetched_from,
            "staging_time": self.staging_time, "output_time": self.output_time, "error": self.error,
            "inputs": [{"key": s.key, "digest": s.digest, "size": s.size, "hit": s.hit,
                        "bytes_copied": s.bytes_copied, "source": s.source, "seconds": s.seconds,
                        "via": [list(v) for v in s.via], "started_at": s.started_at}
                       for s in self.inputs],
            "outputs": [{"key": p.key, "digest": p.digest, "size": p.size, "kind": p.kind,
                         "kept": p.kept, "copied_back": p.copied_back} for p in self.outputs],
        }
