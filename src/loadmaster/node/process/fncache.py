"""The zygote's cache of unpickled functions, and the client's mirror of it.

A zygote unpickles each distinct function once and keeps it, so its children
start warm; without a bound, a stream of distinct callables (1,000
``functools.partial`` objects) grew a zygote by ~2 MB that every fork then
copied. The cache drops the least recently used entries (second chance, see
:class:`FnCache`) once it holds more
than ``max_entries`` functions or ``max_bytes`` of their pickled bytes (a proxy
for what they hold), down to three quarters of each bound at once.

The client sends a function's bytes only with the first order that needs
them on a zygote. It cannot ask the zygote what it still holds, so it keeps a
mirror: the same :class:`FnCache`, fed the same sequence (one :meth:`use` per
order with a function, in the order the orders go down the pipe; the zygote
calls it as each order arrives, before any is started), evicts exactly the
same keys, and a function the zygote dropped is sent again with its next order.

Imported by the zygote: stdlib only, no ``collections`` (a plain dict keeps
insertion order; a use moves its key to the end).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

MAX_ENTRIES = 256
MAX_BYTES = 64 << 20


class FnCache:
    """Least recently used first out (second chance: a use marks an entry, eviction spares
    a marked one once and clears its mark), bounded by entries and by bytes.

    A use writes nothing when the entry is marked already: in the zygote every page
    written while a child lives is a copy-on-write fault, and a strict LRU list is a
    write per order (one function serving many tasks is the usual case).
    """

    __slots__ = ("entries", "evictions", "max_bytes", "max_entries", "size")

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.entries: dict[int, list[Any]] = {}  # key -> [pickled size, value, used since last sweep]
        self.size = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.evictions = 0

    def get(self, key: int) -> Any:
        """The value of ``key`` (``None`` if absent), marked as used."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if not entry[2]:
            entry[2] = True
        return entry[1]

    def put(self, key: int, nbytes: int, value: Any) -> int:
        """Add ``key`` (absent); drop others, oldest unmarked first, if over a bound; return how many."""
        entries = self.entries
        entries[key] = [nbytes, value, False]
        self.size += nbytes
        if len(entries) <= self.max_entries and self.size <= self.max_bytes:
            return 0
        keep_n, keep_b = self.max_entries * 3 // 4, self.max_bytes * 3 // 4
        dropped = 0
        while len(entries) > 1 and (len(entries) > keep_n or self.size > keep_b):
            oldest = next(iter(entries))
            entry = entries.pop(oldest)
            if oldest == key or entry[2]:  # the one just added, or used since: a second chance
                entry[2] = False
                entries[oldest] = entry
                continue
            self.size -= entry[0]
            dropped += 1
        self.evictions += dropped
        return dropped

    def use(self, key: int, fn_bytes: bytes) -> bool:
        """The client's side: note an order using ``key``; whether its bytes must go with it."""
        if self.get(key) is not None:
            return False
        self.put(key, len(fn_bytes), True)
        return True

    def __len__(self) -> int:
        return len(self.entries)
