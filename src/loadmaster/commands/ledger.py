"""``loadmaster ledger``: show who holds and who waits for memory on this node.

Runs in its own process (the command line). Takes one snapshot of the node's
memory ledger (:mod:`loadmaster.node.ledger.book`; this reclaims entries of dead
processes, and rebuilds a corrupt record, as any ledger user would) and prints
it as a table or as JSON. It reserves nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from loadmaster.errors import LedgerError

NAME = "ledger"
HELP = "show who holds and who waits for memory in this node's ledger"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` and ``--ledger``."""
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.add_argument(
        "--ledger",
        metavar="DIR",
        help="ledger directory (default: $LOADMASTER_LEDGER, else /dev/shm/loadmaster-UID)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the snapshot; return 0, or 78 when the ledger cannot be used."""
    from loadmaster.node.ledger.book import MemoryLedger
    from loadmaster.sizes import format_duration, format_size

    try:
        snap = MemoryLedger(args.ledger).snapshot()
    except LedgerError as exc:
        print(f"loadmaster ledger: {exc}", file=sys.stderr)
        return 78
    if args.json:
        json.dump(snap.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    print(
        f"ledger {snap.path}: capacity {format_size(snap.capacity_bytes)}, "
        f"held {format_size(snap.held_bytes)}, free {format_size(snap.free_bytes)}, "
        f"MemAvailable {format_size(snap.available_bytes)}"
    )
    if not snap.holders and not snap.waiters:
        print("nobody holds or waits for memory")
        return 0
    rows = [("STATE", "ID", "PID", "MEMORY", "FOR", "LABEL")]
    for state, entries in (("holds", snap.holders), ("waits", snap.waiters)):
        for e in entries:
            age = format_duration(max(0.0, snap.taken_at - e.since))
            rows.append((state, str(e.id), str(e.pid), format_size(e.nbytes), age, e.label))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    return 0
