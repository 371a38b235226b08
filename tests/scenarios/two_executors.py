"""One executor of the two-executor admission test; prints its reports as JSON lines.

Usage: python two_executors.py LEDGER_DIR OUT_JSON NTASKS HOLD_S
"""

from __future__ import annotations

import json
import os
import sys
import time

import loadmaster

MiB = 1 << 20


def touch(mb: int, hold_s: float) -> int:
    b = bytearray(mb * MiB)
    for i in range(0, len(b), 4096):
        b[i] = 1
    time.sleep(hold_s)
    return len(b)


def main(ledger: str, out: str, n: int, hold_s: float) -> None:
    with loadmaster.Executor(history=":memory:", ledger=ledger) as ex:
        print(json.dumps({"pid": os.getpid(), "memory": ex.node.memory}), flush=True)
        fs = [ex.options(resources={"memory": "600MiB", "cores": 0.5}).submit(touch, 500, hold_s) for _ in range(n)]
        rows = []
        for f in fs:
            f.result()
            assert f.report is not None
            rows.append({"start": f.report.started_at, "end": f.report.finished_at,
                         "alloc": f.report.allocation.memory, "peak": f.report.peak_memory})
    with open(out, "w") as fh:
        json.dump(rows, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
