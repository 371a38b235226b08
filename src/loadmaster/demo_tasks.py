"""The demo's workload: Python functions that really use memory, of several sizes.

Runs in forked task processes (the zygote imports this module once, so every
task starts from a warm, small process). Each function maps anonymous memory,
writes one byte per 4 KiB page so the kernel really backs it (and charges it
to the task), holds it for a while — as a real step would while it computes or
waits on I/O — and returns a small result. Nothing is written to disk.

Sizes are derived from the arguments alone (deterministic), so a category's
memory is learnable: ``align`` is about constant, ``simulate`` grows with its
``size`` argument, ``summarize`` is small.
"""

from __future__ import annotations

import mmap
import time

MiB = 1 << 20
PAGE = 4096


def touch(nbytes: int, hold_s: float) -> int:
    """Map ``nbytes`` of anonymous memory, fault every page in, hold it ``hold_s`` seconds.

    Returns the number of pages touched.
    """
    nbytes = max(PAGE, int(nbytes))
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        # One byte per page: the cheapest way to make the kernel back every page.
        for off in range(0, nbytes, PAGE):
            buf[off] = 1
        if hold_s > 0:
            time.sleep(hold_s)
        return nbytes // PAGE
    finally:
        buf.close()


def _spread(key: int, lo: float, hi: float) -> float:
    """Return a deterministic pseudo-random value in [lo, hi] for ``key``."""
    x = (key * 2654435761) % 2**32 / 2**32
    return lo + (hi - lo) * x


def align(sample: int) -> dict[str, int]:
    """An alignment-like step: ~120–180 MiB whatever the sample, held ~0.15–0.35 s."""
    mem = int(_spread(sample, 120, 180) * MiB)
    pages = touch(mem, _spread(sample + 7, 0.15, 0.35))
    return {"sample": sample, "pages": pages}


def simulate(size: int) -> dict[str, int]:
    """A simulation step whose memory grows with ``size`` (MiB of state): 20 + size MiB."""
    mem = (20 + int(size)) * MiB
    pages = touch(mem, 0.1 + size / 2000)
    return {"size": size, "pages": pages}


def summarize(part: int) -> int:
    """A small, quick step: ~8–16 MiB for ~30 ms."""
    touch(int(_spread(part, 8, 16) * MiB), 0.03)
    return part
