"""One 50 MiB input to 8 emulated nodes: peer transfers against Dask's broadcast and the submitter alone.

As root. Builds ``EmulatedNodes`` (tests/cluster/netnodes.py): 8 nodes in
network namespaces, each link shaped to ``--rate`` Mbit/s up and down (tbf,
burst rate x 4 ms), and shapes the submitter's own link the same way (the
submitter is a machine with one such link). Each node's Dask worker (memory
manager off) runs a transfer server on the node's address over a cache of its
own; the bench (the client) runs the submitter's transfer server for the file
and the :class:`~loadmaster.data.transfer.planner.TransferPlanner`, and submits
one Dask task per node that stages the input through
:class:`~loadmaster.data.transfer.peer.PeerFetcher` and reads it whole. The
file never goes through Dask's scheduler or data plane in the ``planned``
modes. Per repeat, in one run:

- ``planned``: sources chosen by the planner (submitter limit 1, node limit 1:
  a pipelined chain);
- ``same_bytes``: the same bytes under another path, planned again (moves 0 bytes);
- ``star``: every node pulls from the submitter at once;
- ``dask_broadcast``: ``client.scatter(data, broadcast=True)`` with Dask's active
  memory manager off and the workers' memory limit off, then one task per node reads it;
- ``executor``: loadmaster's ``Executor`` on the same nodes (its Dask backend:
  each node's host process serves its cache, the executor serves the file and
  plans the sources with its defaults, submitter limit 1 and node limit 2), one
  task per node (it asks for the node's cores) declaring ``File(path)``; fresh
  bytes each repeat, then ``executor_same_bytes``: a copy of them under
  another path (moves 0 bytes);
- ``killed``: ``planned`` again into fresh caches, and the first node (the
  chain's source) killed (SIGKILL, its whole worker) when it holds half the
  file; the planner drops it, its task re-runs on a surviving node;
- ``executor_killed``: the ``executor`` mode on fresh bytes, and the node the
  submitter is sending to (it relays to the next node of the chain) killed
  when half the file is in its cache: SIGKILL to everything in the node's
  cgroup (its Dask worker, its node runtime's host process serving the
  transfers, its task). The node behind it resumes from another holder at the
  received offset; the executor places the killed node's task again. Counts
  failed tasks, lost and re-staged attempts from the reports, and the link bytes.

Bytes are counted on the links (``/sys/class/net/*/statistics``: each node's
``eth0``, the submitter's veth), and from our own servers' counters. Prints
ratios against the targets and writes ``bench/results/data.json``.

    flock /tmp/lm-bench.lock env PYTHONPATH=src .venv/bin/python bench/data.py --repeats 3

The ``planned`` modes drive the transfer layer from plain Dask tasks; the
``executor`` modes go through loadmaster's Executor end to end (its startup
is not counted). Numbers depend on the machine's load (2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.cluster import netnodes  # noqa: E402
from tests.cluster.transfers import node_start, node_stop, node_task  # noqa: E402

from loadmaster.data.digest import hash_file  # noqa: E402
from loadmaster.data.transfer.planner import SUBMITTER, TransferPlanner  # noqa: E402
from loadmaster.data.transfer.protocol import new_secret  # noqa: E402
from loadmaster.data.transfer.server import FileCatalog, TransferServer  # noqa: E402

RESULTS = os.path.join(HERE, "results", "data.json")
MiB = 1 << 20


def dask_read(data: bytes) -> dict[str, Any]:
    """The broadcast baseline's task: the bytes are there; read them."""
    from distributed import get_worker

    return {"node": get_worker().name, "end": time.time(), "read": len(data)}


def executor_read(src: Any) -> dict[str, Any]:
    """The Executor mode's task: read the staged input whole (on its node, from its cache)."""
    with open(src, "rb") as fh:
        n = 0
        while chunk := fh.read(1 << 20):
            n += len(chunk)
    return {"node": os.environ.get("LOADMASTER_NODE_NAME", ""), "end": time.time(), "read": n}


# ── the client side ──────────────────────────────────────────────────────────


def shape_host(nodes: netnodes.EmulatedNodes, rate_mbit: float) -> None:
    """Shape the submitter's link like a node's (its uplink here, its downlink at the switch)."""
    bps = int(rate_mbit * 1e6)
    burst = max(int(bps * 0.004 / 8), 4096)
    tbf = ["root", "tbf", "rate", f"{bps}bit", "burst", str(burst), "latency", "400ms"]
    netnodes._run("tc", "qdisc", "add", "dev", nodes.host_if, *tbf)
    netnodes._run("ip", "netns", "exec", nodes.switch_ns, "tc", "qdisc", "add", "dev", "host", *tbf)


def counters(nodes: netnodes.EmulatedNodes) -> dict[str, Any]:
    """Link byte counters: each node's eth0 (rx, tx) and the submitter's veth (tx, rx)."""
    base = f"/sys/class/net/{nodes.host_if}/statistics/"
    with open(base + "tx_bytes") as a, open(base + "rx_bytes") as b:
        host = (int(a.read()), int(b.read()))
    per = [nodes.link_counters(i) for i in range(len(nodes))]
    return {"host_tx": host[0], "host_rx": host[1], "rx": [c.rx_bytes for c in per], "tx": [c.tx_bytes for c in per]}


def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Counters ``b - a``."""
    return {"submitter_sent": b["host_tx"] - a["host_tx"],
            "node_received": [y - x for x, y in zip(a["rx"], b["rx"], strict=True)],
            "node_sent": [y - x for x, y in zip(a["tx"], b["tx"], strict=True)]}


class Bench:
    """One EmulatedNodes, the submitter's server, and the modes (see the module docstring)."""

    def __init__(self, nodes: netnodes.EmulatedNodes, path: str, rate_mbit: float) -> None:
        self.nodes, self.path, self.rate = nodes, path, rate_mbit
        self.client = nodes.client()
        self.secret = new_secret()
        self.size = os.path.getsize(path)
        self.digest = hash_file(path)
        self.files = FileCatalog()
        self.files.add(self.digest, path)
        self.sub = TransferServer(self.secret, files=self.files, host=nodes.host_address)
        self.runs = 0
        self.addr = {nd.name: nd.worker_address for nd in nodes}

    def _start(self, alive: list[str]) -> tuple[str, dict[str, str]]:
        self.runs += 1
        run = f"r{self.runs}"
        got = self.client.run(node_start, run, self.secret.hex(), workers=[self.addr[n] for n in alive])
        by_addr = {v: k for k, v in self.addr.items()}
        return run, {by_addr[w]: a for w, a in got.items()}

    def _stop(self, run: str, alive: list[str]) -> None:
        self.client.run(node_stop, run, workers=[self.addr[n] for n in alive])

    def planned(self, *, kill: bool = False, run: str | None = None, servers: dict[str, str] | None = None,
                path: str | None = None) -> dict[str, Any]:
        """The planner's distribution (optionally killing the chain's source half way)."""
        names = [nd.name for nd in self.nodes]
        own = run is None
        if run is None or servers is None:
            run, servers = self._start(names)
        p = TransferPlanner(submitter_limit=1, source_limit=1, dest_limit=1, timeout_s=300)
        p.add_submitter("submitter", self.sub.address)
        for n in names:
            p.add_node(n, n, servers[n])
        p.declare(self.digest)
        before, sent0 = counters(self.nodes), self.sub.bytes_sent
        t0 = time.time()
        plans, futs = {}, {}
        for n in names:
            try:
                r = p.plan(self.digest, self.size, n)
            except LookupError:
                r = None  # n holds it already (a second run): nothing to move
            plans[n] = r
            srcs = [(s.node, s.host, s.address) for s in r.sources] if r else []
            futs[n] = self.client.submit(node_task, run, self.secret.hex(), self.digest, self.size, srcs,
                                         path or self.path, workers=[self.addr[n]], pure=False)
        for n, r in plans.items():
            if r is not None:
                futs[n].add_done_callback(lambda f, r=r: p.release(r, "done" if f.status == "finished" else "failed"))
        killed, rerun = "", None
        if kill:
            killed = plans_first = next(n for n, r in plans.items() if r and r.source.node == SUBMITTER)
            part = os.path.join(str(self.nodes[names.index(plans_first)].dirs.cache), run, "partial", self.digest)
            end = time.monotonic() + 120
            while time.monotonic() < end:
                try:
                    if os.path.getsize(part) >= self.size // 2:
                        break
                except FileNotFoundError:
                    pass
                time.sleep(0.01)  # watching the node's partial entry grow on the shared disk
            self.nodes.kill_worker(names.index(killed))
            p.remove_node(killed)  # what the client does when the backend says the node left
            futs[killed].cancel()
            # Its task re-runs on a surviving node (that node holds the input already, or gets it planned).
            other = next(n for n in names if n != killed)
            rerun = self.client.submit(node_task, run, self.secret.hex(), self.digest, self.size,
                                       [(SUBMITTER, "submitter", self.sub.address)], self.path,
                                       workers=[self.addr[other]], pure=False)
        results, failed = [], 0
        for n, f in futs.items():
            if n == killed:
                continue
            try:
                results.append(f.result(timeout=300))
            except Exception as exc:  # a task that failed is counted, not hidden
                failed += 1
                results.append({"node": n, "error": repr(exc)})
        if rerun is not None:
            results.append({**rerun.result(timeout=300), "rerun_of": killed})
        after = counters(self.nodes)
        ok = [r for r in results if "end" in r]
        out = {"mode": "killed" if kill else "planned", "last_done_s": max(r["end"] for r in ok) - t0,
               "tasks": len(results), "failed": failed, "killed": killed,
               "bytes_moved": sum(r["bytes_moved"] for r in ok), "submitter_server_sent": self.sub.bytes_sent - sent0,
               "links": delta(before, after), "edges": [(x[1], x[2], x[3]) for x in p.log],
               "limits_left": [(r.source.node, r.dest) for r in p.live()], "per_node": results}
        if own:
            self._stop(run, [n for n in names if n != killed])
        return out

    def planned_twice(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``planned``, then the same bytes under another path into the same caches."""
        names = [nd.name for nd in self.nodes]
        run, servers = self._start(names)
        first = self.planned(run=run, servers=servers)
        other = self.path + ".copy"
        shutil.copyfile(self.path, other)
        second = self.planned(run=run, servers=servers, path=other)
        second["mode"] = "same_bytes"
        os.unlink(other)
        self._stop(run, names)
        return first, second

    def star(self) -> dict[str, Any]:
        """Every node pulls from the submitter at once."""
        names = [nd.name for nd in self.nodes]
        run, _servers = self._start(names)
        before, sent0 = counters(self.nodes), self.sub.bytes_sent
        t0 = time.time()
        futs = [self.client.submit(node_task, run, self.secret.hex(), self.digest, self.size,
                                   [(SUBMITTER, "submitter", self.sub.address)], self.path,
                                   workers=[self.addr[n]], pure=False) for n in names]
        res = [f.result(timeout=600) for f in futs]
        after = counters(self.nodes)
        self._stop(run, names)
        return {"mode": "star", "last_done_s": max(r["end"] for r in res) - t0, "failed": 0,
                "submitter_server_sent": self.sub.bytes_sent - sent0, "links": delta(before, after)}

    def executor(self, ex: Any, path: str, mode: str = "executor") -> dict[str, Any]:
        """loadmaster's Executor: one task per node declares ``File(path)``; the executor plans the transfers."""
        from loadmaster import File

        whole = ex.node.cores  # a task fills a node: each node runs one
        tr = ex._life.transfers
        before, sent0, log0 = counters(self.nodes), tr.server.bytes_sent, len(tr.planner.log)
        t0 = time.time()
        futs = [ex.options(resources={"cores": whole}).submit(executor_read, File(path))
                for _ in range(len(self.nodes))]
        res = [f.result(timeout=600) for f in futs]
        after = counters(self.nodes)
        reports = [f.report for f in futs]
        return {"mode": mode, "last_done_s": max(r["end"] for r in res) - t0, "tasks": len(res), "failed": 0,
                "nodes": sorted(r["node"] for r in res),
                "bytes_moved": sum(r.data.bytes_fetched for r in reports if r is not None and r.data is not None),
                "submitter_server_sent": tr.server.bytes_sent - sent0, "links": delta(before, after),
                "edges": [(x[1], x[2], x[3]) for x in tr.planner.log[log0:]], "unplanned": tr.unplanned}

    def executor_killed(self, ex: Any, path: str) -> dict[str, Any]:
        """``executor``, and the node the submitter sends to killed (its whole cgroup) when it holds half the file."""
        from loadmaster import File
        from loadmaster.data.transfer.planner import SUBMITTER

        whole = ex.node.cores
        tr = ex._life.transfers
        digest, size = hash_file(path), os.path.getsize(path)
        names = [nd.name for nd in self.nodes]
        before, sent0, log0 = counters(self.nodes), tr.server.bytes_sent, len(tr.planner.log)
        t0 = time.time()
        futs = [ex.options(resources={"cores": whole}).submit(executor_read, File(path))
                for _ in range(len(self.nodes))]
        victim, end = "", time.monotonic() + 120
        while not victim and time.monotonic() < end:
            victim = next((r.dest for r in tr.planner.live() if r.digest == digest and r.source.node == SUBMITTER), "")
            time.sleep(0.005)  # watching for the planner's first reservation
        part = os.path.join(str(self.nodes[names.index(victim)].dirs.cache), "partial", digest)
        while time.monotonic() < end:
            try:
                if os.path.getsize(part) >= size // 2:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.005)  # watching the node's partial entry grow on the shared disk
        held = os.path.getsize(part) if os.path.exists(part) else -1
        self.nodes.kill_worker(names.index(victim))
        res, failed = [], 0
        for f in futs:
            try:
                res.append(f.result(timeout=600))
            except Exception as exc:  # a task that failed is counted, not hidden
                failed += 1
                res.append({"error": repr(exc)})
        after = counters(self.nodes)
        reports = [f.report for f in futs]
        ok = [r for r in res if "end" in r]
        return {"mode": "executor_killed", "last_done_s": max(r["end"] for r in ok) - t0, "tasks": len(res),
                "failed": failed, "killed": victim, "killed_at_bytes": held,
                "nodes": sorted(r.get("node", "") for r in ok),
                "lost": sum(len(r.extra.get("lost", ())) for r in reports if r is not None),
                "restaged": sum(len(r.extra.get("restaged", ())) for r in reports if r is not None),
                "attempts": [r.attempts for r in reports if r is not None],
                "resumed": [r.data.fetched_from for r in reports
                            if r is not None and r.data is not None and len(r.data.fetched_from) > 1],
                "bytes_moved": sum(r.data.bytes_fetched for r in reports if r is not None and r.data is not None),
                "submitter_server_sent": tr.server.bytes_sent - sent0, "links": delta(before, after),
                "edges": [(x[1], x[2], x[3]) for x in tr.planner.log[log0:]], "limits_left": len(tr.planner.live())}

    def dask_broadcast(self) -> dict[str, Any]:
        """``scatter(broadcast=True)``, then one task per node reads the bytes."""
        with open(self.path, "rb") as fh:
            data = fh.read()
        before = counters(self.nodes)
        t0 = time.time()
        [fut] = self.client.scatter([data], broadcast=True, timeout=600)
        res = self.client.gather([self.client.submit(dask_read, fut, workers=[a], pure=False)
                                  for a in self.addr.values()])
        t1 = time.time()
        after = counters(self.nodes)
        self.client.cancel([fut])
        del data
        return {"mode": "dask_broadcast", "last_done_s": max(max(r["end"] for r in res), t1) - t0, "failed": 0,
                "links": delta(before, after)}


def main() -> None:
    """Parse arguments, run the modes ``--repeats`` times, print ratios, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--rate", type=float, default=100, help="Mbit/s per link, each way (default 100)")
    ap.add_argument("--mib", type=float, default=50, help="the input's size in MiB (default 50)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="planned,executor,star,dask_broadcast,executor_killed",
                    help="killed and executor_killed each kill a node: give one of them per run")
    ap.add_argument("--out", default=RESULTS, help=f"the JSON written (default {RESULTS})")
    args = ap.parse_args()
    reason = netnodes.unavailable_reason()
    if reason:
        raise SystemExit(f"data bench: {reason}")
    modes = args.modes.split(",")
    # Dask's active memory manager off (scheduler and workers inherit this): it deletes broadcast copies
    # and re-replicates them (distributed #8657), which made one scatter run for minutes here.
    os.environ["DASK_DISTRIBUTED__SCHEDULER__ACTIVE_MEMORY_MANAGER__START"] = "False"
    size = int(args.mib * MiB)
    ideal = size * 8 / (args.rate * 1e6)
    rows: list[dict[str, Any]] = []
    load0 = os.getloadavg()
    # A memory cgroup per node (generous: it limits nothing here) so that killing a node kills all of it:
    # its Dask worker and the node runtime's host process, which runs in a session of its own.
    with netnodes.EmulatedNodes(args.nodes, rate_mbit=args.rate, memory_limit="4GiB",
                                worker_memory_limit="0") as nodes:
        shape_host(nodes, args.rate)
        path = os.path.join(str(nodes.base_dir), "input.bin")
        with open(path, "wb") as fh:
            for _ in range(int(args.mib)):
                fh.write(os.urandom(MiB))
            fh.write(os.urandom(size - int(args.mib) * MiB))
        bench = Bench(nodes, path, args.rate)
        ex = None
        if "executor" in modes or "executor_killed" in modes:
            from loadmaster import Executor

            ex = Executor(history=":memory:", sandbox=False, backend=nodes.scheduler_address)
        for rep in range(args.repeats):
            if "planned" in modes:
                a, b = bench.planned_twice()
                rows += [a, b]
            if "star" in modes:
                rows.append(bench.star())
            if "dask_broadcast" in modes:
                rows.append(bench.dask_broadcast())
            if ex is not None and "executor" in modes:  # fresh bytes each repeat, then a copy of them
                fresh = f"{path}.{rep}"
                with open(fresh, "wb") as fh:
                    for _ in range(int(args.mib)):
                        fh.write(os.urandom(MiB))
                    fh.write(os.urandom(size - int(args.mib) * MiB))
                rows.append(bench.executor(ex, fresh))
                shutil.copyfile(fresh, fresh + ".copy")
                rows.append(bench.executor(ex, fresh + ".copy", "executor_same_bytes"))
            if "killed" in modes and rep == args.repeats - 1 and "executor_killed" not in modes:
                rows.append(bench.planned(kill=True))  # last: the killed node's worker stays dead
            if ex is not None and "executor_killed" in modes and rep == args.repeats - 1:
                fresh = f"{path}.k"
                with open(fresh, "wb") as fh:
                    fh.write(os.urandom(size))
                rows.append(bench.executor_killed(ex, fresh))  # last: the killed node stays dead
            for r in rows[-7:]:
                if r.get("repeat") is None:
                    r["repeat"] = rep
                    print(f"[{rep}] {r['mode']:>15}: last done {r['last_done_s']:6.2f} s, submitter sent "
                          f"{r['links']['submitter_sent'] / size:5.2f} files, failed {r['failed']}", flush=True)
        bench.sub.close()
        if ex is not None:
            ex.shutdown()
    load1 = os.getloadavg()

    def med(mode: str, key: str = "last_done_s") -> float | None:
        xs = [r[key] for r in rows if r["mode"] == mode]
        return statistics.median(xs) if xs else None

    summary: dict[str, Any] = {"nodes": args.nodes, "rate_mbit": args.rate, "size": size, "ideal_s": ideal,
                               "repeats": args.repeats, "load_before": load0, "load_after": load1}
    for m in ("planned", "same_bytes", "star", "dask_broadcast", "killed", "executor", "executor_same_bytes",
              "executor_killed"):
        summary[f"{m}_s"] = med(m)
    xr = [r for r in rows if r["mode"] == "executor"]
    if xr:
        summary["executor_vs_ideal"] = summary["executor_s"] / ideal
        summary["executor_submitter_sent_files"] = statistics.median(r["links"]["submitter_sent"] / size for r in xr)
        summary["executor_server_sent_files"] = statistics.median(r["submitter_server_sent"] / size for r in xr)
        summary["executor_node_received_files"] = [
            statistics.median(r["links"]["node_received"][i] / size for r in xr) for i in range(args.nodes)]
        xs = [r for r in rows if r["mode"] == "executor_same_bytes"]
        summary["executor_same_bytes_moved"] = max(r["bytes_moved"] for r in xs) if xs else None
    pl = [r for r in rows if r["mode"] == "planned"]
    if pl:
        summary["planned_vs_ideal"] = summary["planned_s"] / ideal
        summary["submitter_sent_files"] = statistics.median(r["links"]["submitter_sent"] / size for r in pl)
        summary["node_received_files"] = [statistics.median(r["links"]["node_received"][i] / size for r in pl)
                                          for i in range(args.nodes)]
        if summary["dask_broadcast_s"]:
            summary["dask_vs_planned"] = summary["dask_broadcast_s"] / summary["planned_s"]
        if summary["star_s"]:
            summary["star_vs_planned"] = summary["star_s"] / summary["planned_s"]
    sb = [r for r in rows if r["mode"] == "same_bytes"]
    if sb:
        summary["same_bytes_moved"] = max(r["bytes_moved"] for r in sb)
        summary["same_bytes_link_rx_max"] = max(max(r["links"]["node_received"]) for r in sb)
    kl = [r for r in rows if r["mode"] == "killed"]
    if kl:
        k = kl[-1]
        summary["killed_bound_s"] = 2 * ideal + 2
        summary["killed_failed"] = k["failed"]
        summary["killed_received_files"] = sum(k["links"]["node_received"]) / size
        if pl:  # against an undisturbed run's bytes on the links (payload plus headers)
            once = statistics.median(x / size for r in pl for x in r["links"]["node_received"])
            summary["killed_extra_files"] = summary["killed_received_files"] - (args.nodes - 1) * once
    xk = [r for r in rows if r["mode"] == "executor_killed"]
    if xk:
        k = xk[-1]
        summary["executor_killed_bound_s"] = 2 * ideal + 2
        summary["executor_killed_vs_ideal"] = k["last_done_s"] / ideal
        summary["executor_killed_failed"] = k["failed"]
        summary["executor_killed_received_files"] = sum(k["links"]["node_received"]) / size
        if xr:  # against an undisturbed executor run's bytes on the links (payload, headers, Dask's traffic)
            once = statistics.median(x / size for r in xr for x in r["links"]["node_received"])
            summary["executor_killed_extra_files"] = summary["executor_killed_received_files"] - (args.nodes - 1) * once
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as out:
        json.dump({"summary": summary, "runs": rows}, out, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"planned: last node {summary.get('planned_s')} s = {summary.get('planned_vs_ideal')} x ideal "
          f"(target <= 1.5); Dask broadcast / planned = {summary.get('dask_vs_planned')} (target >= 4); "
          f"submitter sent {summary.get('submitter_sent_files')} files (target <= 1.1); "
          f"killed: {summary.get('killed_s')} s (bound {summary.get('killed_bound_s')}), "
          f"extra {summary.get('killed_extra_files')} files (target <= 1); "
          f"executor killed: {summary.get('executor_killed_s')} s (bound {summary.get('executor_killed_bound_s')}), "
          f"failed {summary.get('executor_killed_failed')}, extra {summary.get('executor_killed_extra_files')} files")


if __name__ == "__main__":
    main()
