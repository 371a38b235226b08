"""How right is each monitor's peak memory, and what does it cost per task?

Run: ``.venv/bin/python bench/monitor_accuracy.py [--repeats 3] [--quick]``
(as root for the kernel's ground truth and loadmaster's cgroup mode).
Writes ``bench/results/monitor_accuracy.json`` and prints a table of medians.

Who runs this: a person or CI job, by hand; nothing imports it. It starts its
own executors and subprocesses, one task at a time (never two at once, so
tasks do not disturb each other's measurement), and writes only the JSON, a
temporary directory for the tools' output files, and short-lived memory
cgroups under its own v1 memory cgroup.

Workloads are commands (argv lists, so every tool runs exactly the same
thing), built from a lean ``python3 -S -c`` that fills ``N`` MiB with
``b"x" * N`` (every page touched) and sleeps:

* ``noop``: ``/bin/true``.
* ``hold-20ms`` … ``hold-10s``: one process touches 300 MiB and holds it.
* ``spike``: touch 300 MiB, hold 50 ms, free it, idle 500 ms.
* ``tree-concurrent``: a shell whose three children touch 100, 150 and 200
  MiB at the same time (each holds 500 ms): 450 MiB at once.
* ``tree-sequential``: the same children one after another (200 ms holds).
* ``tree-seq-short``: the same, with 20 ms holds.
* ``cat-200mb``, ``sort-200mb``, ``xz9-200mb``: real programs on 200 MB files
  written to a temporary directory first (not in ``--quick``). There the
  ``kernel`` column charges the page cache of the files read and written, so it
  is not the truth; ``time-v`` is (one process each).

Tools, each run on every workload:

* ``bare``: ``subprocess.run(argv)``; no measurement, the wall-time baseline.
* ``kernel``: ground truth. The command runs in a fresh v1 memory cgroup made
  for this one run (a ``/bin/sh`` writes its pid to ``cgroup.procs`` and
  ``exec``\\s the command); its ``memory.max_usage_in_bytes`` is the kernel's
  peak for the whole tree, spikes included. Root only.
* ``loadmaster-cgroup``: ``Executor().submit_command(argv)`` (one memory
  cgroup slot per running task; the kernel's peak). Executors run with their
  defaults (the per-task sandbox included; ``--no-sandbox`` turns it off),
  a 3 GiB cap, an in-memory history and no node ledger.
* ``loadmaster-sampling``: ``Executor(measure="sampling")`` (the task
  process's own high-water mark plus its descendants' sampled ones).
* ``time-v``: ``/usr/bin/time -v``; "Maximum resident set size" is the
  largest single process's peak RSS (``wait4``'s ``ru_maxrss``), not the tree's.
* ``resource_monitor``: cctools' monitor with ``-i 1`` (its shortest polling
  interval; the default, up to 5 s, misses even a 1 s hold here) and
  ``--without-disk-footprint``; its summary's ``memory`` (MB, meaning MiB).
  Installed with ``apt-get install -y coop-computing-tools`` when missing and
  running as root; skipped with a note otherwise.

Reported per workload × tool, medians over the repeats: the peak in MiB, its
difference from the kernel's (MiB, and % when the kernel's peak is at least
10 MiB), the wall time the caller saw, and the overhead per task: the median
over repeats of that wall time minus ``bare``'s in the same repeat (the
no-op gets ``--overhead-repeats`` runs, 20 by default, since that is where the
overhead is not drowned by the task's own jitter). For loadmaster the
wall time is from ``submit_command`` to ``result()`` returning, with the
executor already started (its start-up is reported separately).

This does *not* cover: Python function tasks (see the tests), throughput
(``bench/throughput.py``), or machines without a v1 memory controller (the
kernel column is then empty and errors are not computed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

import loadmaster  # noqa: E402
from loadmaster.node.measure.cgroup_slots import own_memory_dir  # noqa: E402

MiB = 1 << 20
TASK_RESOURCES = {"cores": 1, "memory": "2GiB"}
"""Stated resources for loadmaster tasks, so its sizing policy plays no part."""
MIN_KERNEL_FOR_PCT = 10 * MiB
"""Below this kernel peak (the no-op's ~0.2 MiB) a percentage says nothing; only the MiB difference is shown."""
EXECUTOR_MEMORY = "3GiB"
"""Each executor's memory cap: room for the largest workload (~460 MiB) and the allocation above."""


# ── workloads ─────────────────────────────────────────────────────────────────
def workload_python() -> str:
    """The interpreter the workloads run: Debian's lean ``/usr/bin/python3`` when present."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else os.path.realpath(sys.executable)


def toucher_code(mib: int, hold_s: float, idle_after_free_s: float | None = None) -> str:
    """Python source that touches ``mib`` MiB, holds them ``hold_s``, optionally frees and idles."""
    code = f"import time;b=b'x'*({mib}<<20);time.sleep({hold_s})"
    if idle_after_free_s is not None:
        code += f";del b;time.sleep({idle_after_free_s})"
    return code


@dataclass(frozen=True)
class Workload:
    """One command every tool runs.

    Attributes:
        name: short name used in the table and JSON.
        argv: the command.
        touched_mib: the memory the workload itself touches at its highest
            (interpreters not included): the known part of the ground truth.
        description: one line for the table.
    """

    name: str
    argv: tuple[str, ...]
    touched_mib: float
    description: str


def make_workloads(py: str) -> list[Workload]:
    """Return every workload, shortest first."""
    one = [py, "-S", "-c"]

    def child(mib: int, hold_s: float) -> str:
        return shlex.join([py, "-S", "-c", toucher_code(mib, hold_s)])

    sizes = (100, 150, 200)
    conc = " & ".join(child(m, 0.5) for m in sizes) + " & wait"
    seq = "; ".join(child(m, 0.2) for m in sizes)
    seq_short = "; ".join(child(m, 0.02) for m in sizes)
    return [
        Workload("noop", ("/bin/true",), 0, "/bin/true"),
        Workload("hold-20ms", (*one, toucher_code(300, 0.02)), 300, "1 process, 300 MiB, hold 20 ms"),
        Workload("hold-200ms", (*one, toucher_code(300, 0.2)), 300, "1 process, 300 MiB, hold 200 ms"),
        Workload("hold-2s", (*one, toucher_code(300, 2.0)), 300, "1 process, 300 MiB, hold 2 s"),
        Workload("hold-10s", (*one, toucher_code(300, 10.0)), 300, "1 process, 300 MiB, hold 10 s"),
        Workload("spike", (*one, toucher_code(300, 0.05, 0.5)), 300,
                 "300 MiB for 50 ms, freed, then 500 ms idle"),
        Workload("tree-concurrent", ("/bin/sh", "-c", conc), sum(sizes),
                 "sh + 3 children at once: 100+150+200 MiB, hold 500 ms"),
        Workload("tree-sequential", ("/bin/sh", "-c", seq), max(sizes),
                 "sh + 3 children in turn: 100, 150, 200 MiB, hold 200 ms"),
        Workload("tree-seq-short", ("/bin/sh", "-c", seq_short), max(sizes),
                 "sh + 3 children in turn: 100, 150, 200 MiB, hold 20 ms"),
    ]


FILE_DIR = os.path.join(tempfile.gettempdir(), f"lm-bench-accuracy-files-{os.getpid()}")
FILE_BYTES = 200 * 10**6


def make_file_workloads() -> list[Workload]:
    """Real programs on 200 MB files (made on first use in ``FILE_DIR``): page cache is
    charged to the cgroup (the kernel column) but is not the task's memory."""
    text, zeros = os.path.join(FILE_DIR, "big.txt"), os.path.join(FILE_DIR, "zeros")
    return [
        Workload("cat-200mb", ("cat", text), 0, "cat of a 200 MB file (stdout captured)"),
        Workload("sort-200mb", ("env", "LC_ALL=C", "sort", "-S", "400M", "-o", "/dev/null", text), 0,
                 "sort -S 400M of 200 MB of base64 lines"),
        Workload("xz9-200mb", ("xz", "-9", "-T1", "-c", zeros), 0, "xz -9 -T1 of 200 MB of zeros"),
    ]


def ensure_files() -> None:
    """Write the file workloads' inputs once (200 MB of base64 lines, 200 MB of zeros)."""
    os.makedirs(FILE_DIR, exist_ok=True)
    text = os.path.join(FILE_DIR, "big.txt")
    if not os.path.exists(text):
        with open(text, "wb") as fh:
            subprocess.run(f"head -c 150000000 /dev/urandom | base64 | head -c {FILE_BYTES}",
                           shell=True, stdout=fh, check=True)
    with open(os.path.join(FILE_DIR, "zeros"), "wb") as fh:
        fh.truncate(FILE_BYTES)


QUICK_WORKLOADS = ("noop", "hold-20ms", "hold-200ms", "spike", "tree-concurrent", "tree-seq-short")


# ── tools ─────────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Run:
    """One workload run under one tool.

    Attributes:
        peak: the reported peak in bytes, or None when the tool reports none.
        wall_s: the wall time the caller saw, in seconds.
        method: how the peak was measured (loadmaster's method name, or the tool's).
        extra: tool-specific details for the JSON.
    """

    peak: int | None
    wall_s: float
    method: str
    extra: dict[str, Any]


class BenchError(RuntimeError):
    """A tool failed on a workload; the message carries the tool's output."""


def check(proc: subprocess.CompletedProcess[bytes], what: str) -> None:
    """Raise :class:`BenchError` with the stderr tail when ``proc`` failed."""
    if proc.returncode != 0:
        tail = (proc.stderr or b"")[-500:].decode(errors="replace")
        raise BenchError(f"{what}: exit status {proc.returncode}; stderr tail: {tail!r}")


def run_bare(argv: tuple[str, ...]) -> Run:
    """``subprocess.run(argv)``, timed; no measurement."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    check(proc, "bare")
    return Run(None, wall, "none", {})


class KernelTruth:
    """Runs a command in a fresh v1 memory cgroup per run and reads its peak."""

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.n = 0

    def run(self, argv: tuple[str, ...]) -> Run:
        """Create a cgroup, run ``argv`` inside it, read ``memory.max_usage_in_bytes``, remove it.

        Raises:
            BenchError: the command failed or the cgroup could not be removed.
        """
        self.n += 1
        cg = os.path.join(self.parent, f"bench-accuracy-{os.getpid()}-{self.n}")
        os.mkdir(cg)
        try:
            wrapped = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cg, *argv]
            t0 = time.perf_counter()
            proc = subprocess.run(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            wall = time.perf_counter() - t0
            check(proc, "kernel")
            with open(os.path.join(cg, "memory.max_usage_in_bytes")) as f:
                peak = int(f.read())
            with open(os.path.join(cg, "memory.usage_in_bytes")) as f:
                left = int(f.read())
        finally:
            remove_cgroup(cg)
        return Run(peak, wall, "cgroup-v1 max_usage_in_bytes", {"usage_after_bytes": left})


def remove_cgroup(path: str) -> None:
    """``rmdir`` a cgroup, retrying briefly while exiting processes are still charged to it.

    Raises:
        BenchError: it is still busy after a second.
    """
    deadline = time.monotonic() + 1.0
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"cannot remove benchmark cgroup {path}: {exc}; remove it by hand") from exc
            time.sleep(0.01)


class LoadmasterTool:
    """One long-lived :class:`loadmaster.Executor`; tasks run one at a time."""

    def __init__(self, measure: str, sandbox: bool | None) -> None:
        t0 = time.perf_counter()
        # ledger=False: the node-wide memory ledger would make this executor wait for
        # (and hold memory from) other loadmaster runs on this shared machine; tasks
        # here run one at a time, so admission has nothing to do.
        self.ex = loadmaster.Executor(memory=EXECUTOR_MEMORY, history=":memory:", measure=measure,
                                      label=f"bench-accuracy-{measure}", ledger=False, sandbox=sandbox)
        # The first task also pays for warming up the engine; run one before measuring.
        self.ex.submit_command(["/bin/true"], category="warmup", resources=TASK_RESOURCES).result()
        self.startup_s = time.perf_counter() - t0
        self.method = self.ex.measure_method.value
        self.sandbox = repr(self.ex.sandbox)

    def run(self, argv: tuple[str, ...], category: str) -> Run:
        """Submit ``argv``, wait for its result; the peak is ``future.report.peak_memory``.

        Raises:
            BenchError: the task failed.
        """
        t0 = time.perf_counter()
        fut = self.ex.submit_command(list(argv), category=category, resources=TASK_RESOURCES)
        try:
            fut.result()
        except loadmaster.TaskFailed as exc:
            raise BenchError(f"loadmaster ({self.method}): {exc}") from exc
        wall = time.perf_counter() - t0
        rep = fut.report
        assert rep is not None
        return Run(rep.peak_memory, wall, rep.measure_method.value,
                   {"task_wall_s": rep.wall_time, "max_processes": rep.max_processes,
                    "peak_charged": rep.peak_charged})

    def runner(self) -> Callable[[Workload, int], Run]:
        """Return the benchmark's runner for this tool."""
        return lambda w, i: self.run(w.argv, w.name)

    def close(self) -> None:
        """Shut the executor down."""
        self.ex.shutdown()


TIME_MAXRSS = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")


def run_time_v(argv: tuple[str, ...], out: str) -> Run:
    """``/usr/bin/time -v -o out argv``; the peak is its maximum RSS (KiB).

    Raises:
        BenchError: the command failed or time wrote no maximum RSS.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", "-o", out, *argv],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    check(proc, "/usr/bin/time -v")
    with open(out) as f:
        m = TIME_MAXRSS.search(f.read())
    if m is None:
        raise BenchError(f"/usr/bin/time -v wrote no 'Maximum resident set size' line to {out}")
    return Run(int(m.group(1)) * 1024, wall, "ru_maxrss of the largest process", {})


RM_MEMORY = re.compile(r'"memory"\s*:\s*\[\s*(\d+)\s*,\s*"(\w+)"')


def parse_rm_summary(text: str) -> int:
    """Return the peak in bytes from a ``resource_monitor`` summary.

    The summary is JSON except that cctools 9.9 escapes single quotes of the
    command (``\\'``), which JSON does not allow; those are undone first.

    Raises:
        BenchError: no ``memory`` field, or a unit other than MB.
    """
    try:
        data = json.loads(text.replace("\\'", "'"))
        value, unit = data["memory"]
    except (ValueError, KeyError, TypeError):
        m = RM_MEMORY.search(text)
        if m is None:
            raise BenchError(f"resource_monitor summary has no memory field: {text[:300]!r}") from None
        value, unit = int(m.group(1)), m.group(2)
    if unit != "MB":
        raise BenchError(f"resource_monitor memory unit {unit!r}; expected 'MB'")
    return int(value) * MiB  # cctools' MB is 2**20 bytes (rmonitor's MEGABYTE)


def run_resource_monitor(argv: tuple[str, ...], prefix: str) -> Run:
    """``resource_monitor -O prefix -i 1 --without-disk-footprint -- argv``.

    Raises:
        BenchError: the monitor or the command failed, or no summary was written.
    """
    cmd = ["resource_monitor", "-O", prefix, "-i", "1", "--without-disk-footprint", "--", *argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    check(proc, "resource_monitor")
    try:
        with open(prefix + ".summary") as f:
            text = f.read()
    except FileNotFoundError:
        raise BenchError(f"resource_monitor wrote no {prefix}.summary") from None
    return Run(parse_rm_summary(text), wall, "polled tree RSS (-i 1)", {})


# ── availability ─────────────────────────────────────────────────────────────
def apt_install(package: str) -> str:
    """``apt-get install -y package`` when root; return "" on success, else why not."""
    if os.geteuid() != 0:
        return f"not root: install Debian's {package} to include this tool"
    proc = subprocess.run(["apt-get", "install", "-y", "-qq", package], capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        return f"apt-get install {package} failed: {proc.stderr[-300:]}"
    return ""


def ensure_tool(binary: str, package: str) -> str:
    """Return "" when ``binary`` is usable (installing ``package`` if needed), else why not."""
    if shutil.which(binary) or os.access(binary, os.X_OK):
        return ""
    why = apt_install(package)
    if why:
        return why
    return "" if (shutil.which(binary) or os.access(binary, os.X_OK)) else f"{package} installed but no {binary}"


def kernel_parent() -> tuple[str | None, str]:
    """Return (this process's v1 memory cgroup directory, "") if children can be made there, else (None, why)."""
    parent = own_memory_dir()
    if parent is None:
        return None, "no v1 memory cgroup with memory.max_usage_in_bytes for this process"
    probe = os.path.join(parent, f"bench-accuracy-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError as exc:
        return None, f"cannot create a memory cgroup under {parent}: {exc} (run as root)"
    os.rmdir(probe)
    return parent, ""


def loadmaster_version() -> str:
    """The repository's commit (``git describe --always --dirty``), or "unknown"."""
    try:
        proc = subprocess.run(["git", "-C", os.path.dirname(HERE), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() or "unknown"


# ── statistics and output ────────────────────────────────────────────────────
def median_or_none(values: list[float | None]) -> float | None:
    """The median of the values that are not None, or None when there are none."""
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise(runs: list[dict[str, Any]], workloads: list[Workload], tools: list[str]) -> list[dict[str, Any]]:
    """Return one row per workload × tool: medians, error vs the kernel's, overhead vs bare."""
    rows: list[dict[str, Any]] = []
    for w in workloads:
        by_tool = {t: [r for r in runs if r["workload"] == w.name and r["tool"] == t] for t in tools}
        kernel = median_or_none([r["peak"] for r in by_tool.get("kernel", [])])
        bare_by_rep = {r["repeat"]: r["wall_s"] for r in by_tool.get("bare", []) if r["error"] is None}
        for t in tools:
            rs = by_tool[t]
            if not rs:
                continue
            ok = [r for r in rs if r["error"] is None]
            peak = median_or_none([r["peak"] for r in ok])
            wall = median_or_none([r["wall_s"] for r in ok])
            # Overhead: paired per repeat (the tool's run and bare's ran moments apart),
            # so slow drifts in the machine's load cancel out.
            diffs = [r["wall_s"] - bare_by_rep[r["repeat"]] for r in ok if r["repeat"] in bare_by_rep]
            overhead = statistics.median(diffs) if diffs and t != "bare" else None
            err_pct = (None if peak is None or kernel is None or kernel < MIN_KERNEL_FOR_PCT
                       else 100.0 * (peak - kernel) / kernel)
            row: dict[str, Any] = {
                "workload": w.name,
                "tool": t,
                "runs": len(rs),
                "failures": len(rs) - len(ok),
                "touched_mib": w.touched_mib,
                "peak_mib": None if peak is None else peak / MiB,
                "peak_min_mib": None if peak is None else min(r["peak"] for r in ok if r["peak"] is not None) / MiB,
                "peak_max_mib": None if peak is None else max(r["peak"] for r in ok if r["peak"] is not None) / MiB,
                "kernel_mib": None if kernel is None else kernel / MiB,
                "diff_vs_kernel_mib": None if peak is None or kernel is None else (peak - kernel) / MiB,
                "error_vs_kernel_pct": err_pct,
                "wall_ms": None if wall is None else 1000 * wall,
                "overhead_ms": None if overhead is None else 1000 * overhead,
                "overhead_min_ms": None if overhead is None else 1000 * min(diffs),
                "overhead_max_ms": None if overhead is None else 1000 * max(diffs),
                "method": ok[0]["method"] if ok else rs[0]["method"],
            }
            rows.append(row)
    return rows


def fmt(value: float | None, spec: str) -> str:
    """Format ``value`` or a dash for None."""
    return "–" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], workloads: list[Workload]) -> None:
    """Print one block per workload."""
    header = f"{'tool':<21}{'peak MiB':>10}{'Δ kernel':>10}{'err %':>8}{'wall ms':>10}{'overhead ms':>13}  method"
    for w in workloads:
        block = [r for r in rows if r["workload"] == w.name]
        if not block:
            continue
        print(f"\n{w.name}: {w.description} (touched: {w.touched_mib:g} MiB)")
        print(header)
        for r in block:
            fail = f"  [{r['failures']}/{r['runs']} failed]" if r["failures"] else ""
            print(f"{r['tool']:<21}{fmt(r['peak_mib'], '.1f'):>10}{fmt(r['diff_vs_kernel_mib'], '+.1f'):>10}"
                  f"{fmt(r['error_vs_kernel_pct'], '+.1f'):>8}{fmt(r['wall_ms'], '.1f'):>10}"
                  f"{fmt(r['overhead_ms'], '+.1f'):>13}  {r['method']}{fail}")


def markdown_tables(rows: list[dict[str, Any]], workloads: list[Workload], tools: list[str]) -> str:
    """Return two Markdown tables: peaks (with error vs the kernel's) and overhead, workloads × tools."""
    measured = [t for t in tools if t != "bare"]
    cell = {(r["workload"], r["tool"]): r for r in rows}
    out = ["| workload (touched) | " + " | ".join(measured) + " |",
           "|---|" + "---:|" * len(measured)]
    for w in workloads:
        cells = []
        for t in measured:
            r = cell.get((w.name, t))
            if r is None or r["peak_mib"] is None:
                cells.append("–")
            elif t == "kernel":
                cells.append(f"**{r['peak_mib']:.1f}**")
            elif r["error_vs_kernel_pct"] is None:
                cells.append(f"{r['peak_mib']:.1f} ({fmt(r['diff_vs_kernel_mib'], '+.1f')} MiB)")
            else:
                cells.append(f"{r['peak_mib']:.1f} ({r['error_vs_kernel_pct']:+.1f} %)")
        out.append(f"| {w.name} ({w.touched_mib:g} MiB) | " + " | ".join(cells) + " |")
    out += ["", "| workload: overhead ms (bare wall ms) | " + " | ".join(measured) + " |",
            "|---|" + "---:|" * len(measured)]
    for w in workloads:
        bare = cell.get((w.name, "bare"))
        label = f"{w.name} ({fmt(bare['wall_ms'] if bare else None, '.1f')})"
        out.append(f"| {label} | " + " | ".join(
            fmt(cell[(w.name, t)]["overhead_ms"] if (w.name, t) in cell else None, "+.1f") for t in measured) + " |")
    return "\n".join(out)


def main() -> int:
    """Run every workload under every available tool ``--repeats`` times; print and write medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="runs per workload × tool (default 3; 2 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help=f"only {', '.join(QUICK_WORKLOADS)}; 2 repeats unless --repeats is given (~1 min)")
    ap.add_argument("--overhead-repeats", type=int, default=None,
                    help="runs of the no-op workload, for the per-task overhead (default 20; 10 with --quick)")
    ap.add_argument("--workloads", help="comma-separated workload names (default: all)")
    ap.add_argument("--tools", help="comma-separated tool names (default: all available)")
    ap.add_argument("--no-sandbox", action="store_true",
                    help="run loadmaster tasks without its default per-task sandbox (Executor(sandbox=False))")
    ap.add_argument("--markdown", action="store_true", help="also print the summary as Markdown tables")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "monitor_accuracy.json"))
    args = ap.parse_args()

    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
    overhead_repeats = (args.overhead_repeats if args.overhead_repeats is not None
                        else (10 if args.quick else 20))
    py = workload_python()
    all_workloads = make_workloads(py) + make_file_workloads()
    names = [w.name for w in all_workloads]
    wanted = args.workloads.split(",") if args.workloads else (list(QUICK_WORKLOADS) if args.quick else names)
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        ap.error(f"unknown workloads {unknown}; known: {', '.join(names)}")
    workloads = [w for w in all_workloads if w.name in wanted]
    if any(w.argv[-1].startswith(FILE_DIR) for w in workloads):
        ensure_files()

    all_tools = ["bare", "kernel", "loadmaster-cgroup", "loadmaster-sampling", "time-v", "resource_monitor"]
    wanted_tools = args.tools.split(",") if args.tools else all_tools
    unknown = sorted(set(wanted_tools) - set(all_tools))
    if unknown:
        ap.error(f"unknown tools {unknown}; known: {', '.join(all_tools)}")

    skipped: dict[str, str] = {}
    notes: list[str] = []
    runners: dict[str, Callable[[Workload, int], Run]] = {}
    tmp = tempfile.mkdtemp(prefix="lm-bench-accuracy-")
    closers: list[Callable[[], None]] = []
    startup: dict[str, float] = {}
    sandboxes: dict[str, str] = {}

    if "bare" in wanted_tools:
        runners["bare"] = lambda w, i: run_bare(w.argv)
    if "kernel" in wanted_tools:
        parent, why = kernel_parent()
        if parent is None:
            skipped["kernel"] = why
        else:
            truth = KernelTruth(parent)
            runners["kernel"] = lambda w, i: truth.run(w.argv)
    for tool, measure in (("loadmaster-cgroup", "auto"), ("loadmaster-sampling", "sampling")):
        if tool not in wanted_tools:
            continue
        lm = LoadmasterTool(measure, False if args.no_sandbox else None)
        closers.append(lm.close)
        startup[tool] = lm.startup_s
        sandboxes[tool] = lm.sandbox
        if tool == "loadmaster-cgroup" and lm.method != "cgroup-v1":
            notes.append(f"loadmaster-cgroup could not use cgroups here; it measured with {lm.method}")
        runners[tool] = lm.runner()
    if "time-v" in wanted_tools:
        why = ensure_tool("/usr/bin/time", "time")
        if why:
            skipped["time-v"] = why
        else:
            runners["time-v"] = lambda w, i: run_time_v(w.argv, os.path.join(tmp, f"time-{w.name}-{i}.txt"))
    if "resource_monitor" in wanted_tools:
        why = ensure_tool("resource_monitor", "coop-computing-tools")
        if why:
            skipped["resource_monitor"] = why
        else:
            runners["resource_monitor"] = lambda w, i: run_resource_monitor(
                w.argv, os.path.join(tmp, f"rm-{w.name}-{i}"))
    for tool, why in skipped.items():
        print(f"skipping {tool}: {why}", file=sys.stderr)
    tools = [t for t in all_tools if t in runners]

    runs: list[dict[str, Any]] = []
    loadavg: list[tuple[float, float, float]] = [os.getloadavg()]
    t_start = time.perf_counter()

    def run_all(w: Workload, rep: int) -> None:
        # Rotate the tool order each repeat so no tool always runs first (cold caches)
        # or right after the heaviest one.
        order = tools[rep % len(tools):] + tools[:rep % len(tools)]
        for t in order:
            try:
                r = runners[t](w, rep)
                rec = {"workload": w.name, "tool": t, "repeat": rep, "peak": r.peak,
                       "wall_s": r.wall_s, "method": r.method, "error": None, **r.extra}
            except BenchError as exc:
                print(f"{w.name} × {t} (repeat {rep}): {exc}", file=sys.stderr)
                rec = {"workload": w.name, "tool": t, "repeat": rep, "peak": None,
                       "wall_s": None, "method": "", "error": str(exc)}
            runs.append(rec)

    try:
        for rep in range(repeats):
            for w in workloads:
                run_all(w, rep)
            loadavg.append(os.getloadavg())
            print(f"repeat {rep + 1}/{repeats} done after {time.perf_counter() - t_start:.0f} s, "
                  f"load average {loadavg[-1][0]:.2f}", file=sys.stderr)
        # The no-op is cheap and is where per-task overhead shows best: give it more runs.
        for w in workloads:
            if w.name == "noop":
                for rep in range(repeats, max(repeats, overhead_repeats)):
                    run_all(w, rep)
    finally:
        for close in closers:
            close()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(FILE_DIR, ignore_errors=True)

    rows = summarise(runs, workloads, tools)
    print_table(rows, workloads)
    if startup:
        print("\nexecutor start-up (not in the per-task overhead): "
              + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in startup.items()))
    if args.markdown:
        print("\n" + markdown_tables(rows, workloads, tools))
    for tool, why in skipped.items():
        print(f"skipped {tool}: {why}")
    for note in notes:
        print(f"note: {note}")

    result = {
        "benchmark": "monitor_accuracy",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "euid": os.geteuid(),
        "python_for_workloads": py,
        "repeats": repeats,
        "noop_repeats": max(repeats, overhead_repeats),
        "duration_s": time.perf_counter() - t_start,
        "load_average_per_repeat": loadavg,
        "executor_startup_s": startup,
        "loadmaster_version": loadmaster_version(),
        "loadmaster_sandbox": sandboxes,
        "loadmaster_task_resources": TASK_RESOURCES,
        "skipped": skipped,
        "notes": notes,
        "workloads": [{"name": w.name, "argv": list(w.argv), "touched_mib": w.touched_mib,
                       "description": w.description} for w in workloads],
        "summary": rows,
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")
    return 1 if any(r["error"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
