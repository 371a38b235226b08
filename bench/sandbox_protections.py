"""Per-task CPU cost of issue 14's additions to a sandboxed task process, step by step.

Run: ``PYTHONPATH=src .venv/bin/python bench/sandbox_protections.py [--forks 200]``
(wrap in ``flock /tmp/lm-bench.lock`` on a shared machine). Each step runs in
a freshly forked child (as in a task process), timed with ``thread_time``
(CPU of the child's thread); medians over ``--forks`` children. Steps:
``capabilities.drop_all``, the two ``close_range`` calls of
``taskproc._close_all_but``, ``setsid``; and, in this process, encoding and
decoding one ``protocol.child_report``. Writes
``bench/results/sandbox_protections.json`` and prints the medians in µs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import time

from loadmaster.node.process.protocol import child_report, read_child_report
from loadmaster.node.sandbox import capabilities

HERE = os.path.dirname(os.path.abspath(__file__))
BOX = {"enabled": True, "private_tmp": True, "fs_rules": True, "network_rules": True, "scoped": True,
       "namespaces": "user+mount", "workdir": "/var/tmp/x/work", "tmpdir": "/tmp", "landlock_abi": 7,
       "notes": [], "caps_dropped": True, "net_namespace": True, "max_processes": 1024}


def in_child(step: object, forks: int) -> float:
    """Median CPU µs of ``step()`` in a forked child."""
    out = []
    for _ in range(forks):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            t = time.thread_time_ns()
            step()  # type: ignore[operator]
            os.write(w, struct.pack("q", time.thread_time_ns() - t))
            os._exit(0)
        os.close(w)
        out.append(struct.unpack("q", os.read(r, 8))[0])
        os.close(r)
        os.waitpid(pid, 0)
    return statistics.median(out) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--forks", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "sandbox_protections.json"))
    args = ap.parse_args()
    res = {
        "drop_all_us": in_child(capabilities.drop_all, args.forks),
        "close_range_us": in_child(lambda: (os.closerange(3, 4), os.closerange(5, 1 << 30)), args.forks),
        "setsid_us": in_child(os.setsid, args.forks),
    }
    n = 10000
    t = time.thread_time_ns()
    for _ in range(n):
        blob = child_report(1, 4, 0, b"", BOX)
    e = time.thread_time_ns()
    for _ in range(n):
        read_child_report(blob)
    res["child_report_encode_us"] = (e - t) / n / 1000
    res["child_report_decode_us"] = (time.thread_time_ns() - e) / n / 1000
    res["load_average"] = os.getloadavg()[0]
    res["when"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    for k, v in res.items():
        print(f"{k:28} {v:.2f}" if isinstance(v, float) else f"{k:28} {v}")


if __name__ == "__main__":
    main()
