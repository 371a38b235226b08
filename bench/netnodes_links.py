"""Rates of the emulated nodes' shaped links (tests/cluster/netnodes.py), as root.

Builds ``EmulatedNodes`` for each node count, then, ``--repeats`` times each: one node
sends to the host alone (up), the host sends to one node (down), and every node sends
to the host at once (up, all links). Prints and writes to
``bench/results/netnodes_links.json``: the start-up time of the nodes, per-link rates
(median of the repeats) as a fraction of the set rate, and for the all-at-once case
the slowest link (the *last* node's completion: TCP shares a tbf link unevenly).

    flock /tmp/lm-bench.lock .venv/bin/python bench/netnodes_links.py --nodes 1,4,8 --rate 100

Not a test: the numbers depend on the machine's load (2 cores carry 8 x 200 Mbit/s at most).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.cluster import netnodes  # noqa: E402

RESULTS = os.path.join(HERE, "results", "netnodes_links.json")


def main() -> None:
    """Parse arguments, run the transfers, print and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1,4,8", help="comma-separated node counts (default 1,4,8)")
    ap.add_argument("--rate", type=float, default=100, help="link rate in Mbit/s (default 100)")
    ap.add_argument("--mib", type=float, default=8, help="MiB per transfer (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported (default 3)")
    args = ap.parse_args()
    reason = netnodes.unavailable_reason()
    if reason:
        raise SystemExit(f"netnodes_links: {reason}")
    nbytes = int(args.mib * (1 << 20))
    rows = []
    for n in (int(x) for x in args.nodes.split(",")):
        t0 = time.monotonic()
        with netnodes.EmulatedNodes(n, rate_mbit=args.rate) as nodes:
            start_s = time.monotonic() - t0
            client = nodes.client()
            up1, down1, all_min, all_med = [], [], [], []
            for _ in range(args.repeats):
                up1.append(netnodes.transfer(nodes, client, 0, nbytes, "up").mbit_s)
                down1.append(netnodes.transfer(nodes, client, n - 1, nbytes, "down").mbit_s)
                many = netnodes.transfer_many(nodes, client, range(n), nbytes, "up")
                all_min.append(min(t.mbit_s for t in many))
                all_med.append(statistics.median(t.mbit_s for t in many))
            t1 = time.monotonic()
        row = {
            "nodes": n,
            "rate_mbit": args.rate,
            "mib": args.mib,
            "start_s": round(start_s, 2),
            "teardown_s": round(time.monotonic() - t1, 2),
            "up_one_mbit": round(statistics.median(up1), 1),
            "down_one_mbit": round(statistics.median(down1), 1),
            "up_all_slowest_mbit": round(statistics.median(all_min), 1),
            "up_all_median_mbit": round(statistics.median(all_med), 1),
            "runs": {"up_one": up1, "down_one": down1, "up_all_slowest": all_min, "up_all_median": all_med},
        }
        rows.append(row)
        r = args.rate
        print(
            f"{n} nodes at {r:g} Mbit/s: start {start_s:.1f} s; one link up {row['up_one_mbit']} "
            f"({row['up_one_mbit'] / r:.2f}x), down {row['down_one_mbit']} ({row['down_one_mbit'] / r:.2f}x); "
            f"all {n} up at once: slowest {row['up_all_slowest_mbit']} ({row['up_all_slowest_mbit'] / r:.2f}x), "
            f"median {row['up_all_median_mbit']} Mbit/s"
        )
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}, f, indent=1)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
