"""Measurement scenarios of issue 3, run as root and as an ordinary user; prints JSON.

Usage: python measure.py OUTFILE [figures]

``figures``: only the spike, no-op and shell-child figures (the VM: not the 1.5 GiB hog).
"""

from __future__ import annotations

import json
import sys
import time

import loadmaster

MiB = 1 << 20


def touch(mb: int, hold_s: float) -> int:
    """Touch ``mb`` MiB page by page, hold it ``hold_s`` seconds, free it."""
    import numpy as np

    a = np.ones(mb * MiB, dtype=np.uint8)
    time.sleep(hold_s)
    n = int(a.nbytes)
    del a
    return n


def noop() -> None:
    return None


def main(out: str, figures_only: bool = False) -> None:
    py = sys.executable
    result: dict[str, object] = {}
    with loadmaster.Executor(history=":memory:", preload=["numpy"]) as ex:
        spike = ex.submit(touch, 300, 0.05)
        spike.result()
        nop = ex.submit(noop)
        nop.result()
        child = ex.submit_command(
            f"{py} -c 'b = bytearray(200 * 1024 * 1024); import time; time.sleep(0.05)'; echo done"
        )
        child.result()
        for name, f in (("spike300", spike), ("noop", nop), ("child200", child)):
            assert f.report is not None
            result[name] = f.report.peak_memory
            result[name + "_method"] = f.report.measure_method.value
    if figures_only:
        with open(out, "w") as fh:
            json.dump(result, fh)
        return
    with loadmaster.Executor(history=":memory:", memory="1GiB") as ex:
        hog = ex.options(category="hog").submit(touch, 1536, 0.5)
        small = [ex.options(category="small").submit(touch, 50, 0.1) for _ in range(6)]
        try:
            hog.result()
            result["hog"] = "finished"
        except loadmaster.ResourceExhausted as exc:
            result["hog"] = {"resource": exc.resource, "limit": exc.limit, "used": exc.used,
                             "attempts": exc.report.attempts if exc.report else None}
        result["small_ok"] = sum(1 for f in small if f.exception() is None)
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] == ["figures"])
