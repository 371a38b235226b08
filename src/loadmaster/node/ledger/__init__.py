"""The node-wide memory ledger, one job per module.

- ``book``: the booking API (:class:`~loadmaster.node.ledger.book.MemoryLedger`:
  reserve, try, track, release, snapshot);
- ``admission``: one executor's share of the ledger, held in chunks;
- ``store``: the lock-guarded, crash-safe read-modify-write of the record;
- ``record``: the entries and the checked on-disk format;
- ``liveness``: entries of dead processes are dropped (crashed holders never leak);
- ``policy``: the admission rule and its inputs from ``/proc``;
- ``wake``: waiting without busy-spinning (wake-up pipes, pidfds);
- ``location``: which directory, and refusing an unsafe one.
"""
