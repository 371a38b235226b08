"""``loadmaster cache``: what this node's cache of declared files holds, and its budget.

Runs in its own process (the command line). Opens the node's content-addressed
cache (``data/cache.py``; opening sweeps what dead writers left, as any user
of the cache would) and lists its entries, least recently used first: digest,
size, state, last use, the names (submitter paths) it was seen under.
``--evict BYTES`` frees that much (unpinned entries only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

NAME = "cache"
HELP = "list what this node's cache of declared files holds (digest, size, last use, names) and its budget"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--dir``, ``--json`` and ``--evict``."""
    parser.add_argument("--dir", metavar="DIR",
                        help="the cache (default: $LOADMASTER_CACHE, else /var/tmp/loadmaster-UID/cache)")
    parser.add_argument("--json", action="store_true", help="print the entries as JSON")
    parser.add_argument("--evict", metavar="BYTES", help="evict least recently used entries to free this much")


def run(args: argparse.Namespace) -> int:
    """Print the listing; return 0, or 78 when the cache cannot be opened."""
    import os

    from loadmaster.data.cache import Cache, default_root
    from loadmaster.errors import DataError
    from loadmaster.sizes import format_duration, format_size, parse_size

    root = os.path.abspath(args.dir or default_root())
    if not os.path.isdir(root):
        print(f"loadmaster cache: no cache at {root} (nothing declared on this node yet)", file=sys.stderr)
        return 78
    try:
        cache = Cache(root)
    except OSError as exc:
        print(f"loadmaster cache: cannot open {root}: {exc}", file=sys.stderr)
        return 78
    budget = cache.budget
    if args.evict:
        cache.budget = max(0, cache.used() - parse_size(args.evict, what="evict"))  # this process only
        try:
            freed = cache.evict(0)
        except DataError as exc:
            print(f"loadmaster cache: {exc}", file=sys.stderr)
            return 1
        print(f"evicted {format_size(freed)}")
    entries = cache.entries()
    used = sum(e.size for e in entries)
    if args.json:
        json.dump({"dir": root, "used": used, "budget": budget, "entries": [
            {"digest": e.digest, "size": e.size, "kind": e.kind, "state": e.state, "last_use": e.last_use,
             "names": list(e.names)} for e in entries]}, sys.stdout, indent=2)
        print()
        return 0
    print(f"cache {root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {format_size(used)} "
          f"of a {format_size(budget)} budget (the node runtime's: Executor(cache_budget=...))")
    now = time.time()
    rows = [("DIGEST", "SIZE", "KIND", "STATE", "USED", "NAMES")]
    for e in entries:
        rows.append((e.digest[:16], format_size(e.size), e.kind, e.state,
                     format_duration(max(0.0, now - e.last_use)) + " ago", ", ".join(e.names) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0
