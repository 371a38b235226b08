"""``loadmaster nodes``: each node's capacity, what is free and what runs there.

Runs in its own process (the command line). Without ``--scheduler`` or
``--cluster``: this machine. With one: every worker of that Dask cluster
runs :func:`loadmaster.backends.dask.targets.node_probe` (``client.run``),
and workers of one node (one host, network namespace and Slurm job, as the
Dask backend counts them) are shown as one row, so a host's cores are
counted once. What runs is what the node's memory ledger holds: each
executor's or job's reservation (label, pid, bytes), and how many loadmaster
node hosts listen there. It reserves nothing and starts no node runtime.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

NAME = "nodes"
HELP = "show each node's capacity, what is free and what runs (this machine, or a Dask cluster)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--scheduler``, ``--cluster`` and ``--json``."""
    parser.add_argument("--scheduler", metavar="ADDR", help="a Dask scheduler's address, e.g. tcp://host:8786")
    parser.add_argument("--cluster", metavar="SPEC",
                        help="start a cluster for this command, e.g. slurm:cores=1,memory=2GB,jobs=2 "
                             "(see docs/cluster.md)")
    parser.add_argument("--json", action="store_true", help="print the nodes as JSON")


def gather(scheduler: str | None, cluster: str | None) -> list[dict[str, Any]]:
    """One dict per node (see :func:`~loadmaster.backends.dask.targets.node_probe`), plus its workers."""
    from loadmaster.backends.dask.targets import node_probe, open_target

    with open_target(scheduler, cluster) as target:
        if target is None:
            probe = node_probe()
            probe["workers"] = []
            return [probe]
        from distributed import Client

        with Client(target, timeout=60) as client:
            client.wait_for_workers(1, timeout=300)
            replies: dict[str, dict[str, Any]] = client.run(node_probe)
    nodes: dict[str, dict[str, Any]] = {}
    for worker, probe in sorted(replies.items()):
        node = nodes.setdefault(probe["key"], {**probe, "workers": []})
        node["workers"].append(worker)
    return list(nodes.values())


def _row(node: dict[str, Any]) -> str:
    from loadmaster.sizes import format_size

    cap = node["capacity"]
    ledger = node.get("ledger", {})
    held = int(ledger.get("held_bytes", 0))
    mem = int(cap.get("memory") or 0)
    runs = ", ".join(f"{h['label'] or '?'} (pid {h['pid']}) {format_size(h['nbytes'])}"
                     for h in ledger.get("holders", ())) or "nothing"
    if "error" in ledger:
        runs = f"ledger unreadable: {ledger['error']}"
    workers = f"{len(node['workers'])} worker(s)" if node["workers"] else "this machine"
    return (f"{node['host']:<20} {workers:<14} cores {cap.get('cores') or 0:g}  memory {format_size(mem)}  "
            f"free {format_size(max(0, mem - held))}  node hosts {node.get('runtimes', 0)}\n"
            f"{'':<20} runs: {runs}")


def run(args: argparse.Namespace) -> int:
    """Print the nodes; 0, or 2 when the cluster cannot be named or reached."""
    from loadmaster.errors import LoadmasterError

    try:
        nodes = gather(args.scheduler, args.cluster)
    except (LoadmasterError, OSError, TimeoutError) as exc:
        print(f"loadmaster nodes: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(nodes, indent=1))
        return 0
    for node in nodes:
        print(_row(node))
    return 0
