"""What this node really grants: cores, memory, disk, GPUs.

Who runs this code: the node runtime, once when it starts (the executor calls
:func:`detect_capacity` for the local node; a Dask worker plugin calls it on
its node). It runs in the process that will fork tasks, so it reports what
*that* process may use: its own cgroups, its own CPU affinity, the Slurm
allocation it was started in. It is fast (a few small file reads, well under
20 ms) and starts no process, except ``nvidia-smi -L`` when
``CUDA_VISIBLE_DEVICES`` is unset and ``nvidia-smi`` is on ``PATH``.

Reads (never writes):

- ``os.sched_getaffinity(0)``: the CPUs this process may run on (this is
  where a v1 ``cpuset`` cgroup, ``taskset`` or Slurm's task affinity show up).
- ``<proc_root>/self/cgroup`` and ``mountinfo`` (via :mod:`.cgroupfs`), then in
  this process's cgroup directory *and every parent up to the mount point*:
  v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, ``memory.limit_in_bytes``
  and ``memory.stat``'s ``hierarchical_memory_limit``; v2 ``cpu.max``,
  ``memory.max`` and ``memory.high``. A parent's limit binds its children, so
  the smallest on the path is the effective one.
- ``<proc_root>/meminfo`` (``MemTotal``).
- Slurm's environment: ``SLURM_CPUS_ON_NODE``, ``SLURM_CPUS_PER_TASK``,
  ``SLURM_MEM_PER_NODE``, ``SLURM_MEM_PER_CPU``; and ``CUDA_VISIBLE_DEVICES``.
- ``statvfs`` of the work directory.

Policy: for each resource every source gives a candidate and **the smallest
wins**; ``Capacity.sources`` names the winner in words printed to users, e.g.
``"cgroup v1 memory.limit_in_bytes at /sys/fs/cgroup/memory/job"``.

Decisions, with reasons:

- **v2 ``memory.high`` counts as a limit.** Above it the kernel throttles and
  reclaims hard; a node that throttles there does not really grant more, so
  packing up to ``memory.max`` would make tasks crawl.
- **``SLURM_CPUS_PER_TASK`` counts only inside an srun step** (when
  ``SLURM_STEP_NUM_TASKS`` is set, which only srun sets): there this process is
  one task of the step and its share is ``cpus-per-task``. A batch script
  (no step) owns the node's whole allocation, ``SLURM_CPUS_ON_NODE``.
- **``SLURM_MEM_PER_CPU`` is multiplied by the Slurm CPU count** chosen above
  (``SLURM_CPUS_PER_TASK`` in a step, else ``SLURM_CPUS_ON_NODE``); without a
  Slurm CPU count it is ignored with a note. Slurm's "MB" is MiB.
  ``SLURM_MEM_PER_NODE=0`` means "all of the node's memory" and adds no limit.
- **Hostile input is ignored, not fatal.** An environment variable or cgroup
  file that does not parse (``SLURM_CPUS_ON_NODE=lots``, ``-3``) is left out,
  a warning is logged, and the resource's source string says what was ignored
  (``"affinity (2 cpus); ignored SLURM_CPUS_ON_NODE='lots' (not a positive
  whole number)"``). The node still starts with what the other sources say;
  the same note is kept in ``Capacity.notes``.
- A cgroup value at or above 2**62 bytes is "unlimited" (v1 reports
  ``PAGE_COUNTER_MAX`` pages, 9223372036854771712 bytes with 4 KiB pages).
- GPUs: ``CUDA_VISIBLE_DEVICES`` is a comma list of indices or UUIDs; like the
  CUDA runtime, the list ends at the first empty or negative entry, so ``""``,
  ``"-1"`` and ``"NoDevFiles"`` (what Slurm sets when none are granted) give 0.
  Only when it is unset is ``nvidia-smi -L`` asked (its ``GPU n:`` lines; MIG
  instances are not counted separately); a failure or timeout gives 0 GPUs
  with the reason in the source.

This module does *not* cover: GPUs of other vendors (ROCm, oneAPI), memory
already used by other processes (that is the ledger's job), cpu shares/weights
(they are relative, not a grant), or per-task limits (the monitor sets those).

See also: :mod:`loadmaster.node.measure.cgroupfs`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from loadmaster.node.measure import cgroupfs
from loadmaster.spec import Resources

__all__ = [
    "UNLIMITED_BYTES",
    "Capacity",
    "Finding",
    "Notes",
    "affinity_cores",
    "cgroup_cpu_limits",
    "cgroup_memory_limits",
    "detect_capacity",
    "detect_gpus",
    "free_disk",
    "meminfo_total",
    "slurm_cores",
    "slurm_memory",
]

logger = logging.getLogger("loadmaster.node.capacity")

UNLIMITED_BYTES = 1 << 62
"""A cgroup memory value at or above this (4 EiB) means "no limit"."""

SLURM_MB = 1 << 20
"""Slurm's "MB" in ``SLURM_MEM_PER_NODE``/``SLURM_MEM_PER_CPU`` is a mebibyte."""

NVIDIA_SMI_TIMEOUT_S = 10.0
"""How long ``nvidia-smi -L`` may take before the node is taken to have no GPUs."""


@dataclass(frozen=True)
class Capacity:
    """The node's grant, with the source that decided each number.

    Attributes:
        cores: CPU cores this process may use (may be fractional: a cgroup quota).
        memory: bytes.
        disk: free bytes on the file system of the work directory.
        gpus: whole GPUs.
        gpu_ids: the GPUs' ids (indices or UUIDs) as ``CUDA_VISIBLE_DEVICES`` takes them.
        sources: for ``"cores"``, ``"memory"``, ``"disk"``, ``"gpus"``, what decided it.
        notes: inputs that were ignored (unparsable values), one line each.
    """

    cores: float
    memory: int
    disk: int
    gpus: int
    gpu_ids: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def as_resources(self) -> Resources:
        """Return the grant as :class:`Resources`."""
        return Resources(cores=self.cores, memory=self.memory, disk=self.disk, gpus=self.gpus)

    def describe(self) -> str:
        """Return a few lines for users: each resource, its amount and its source."""
        from loadmaster.sizes import format_size

        amounts = {
            "cores": f"{self.cores:g}",
            "memory": format_size(self.memory),
            "disk": format_size(self.disk),
            "gpus": str(self.gpus) + (f" ({','.join(self.gpu_ids)})" if self.gpu_ids else ""),
        }
        return "\n".join(
            f"{name:<6} {amount:>10}  from {self.sources.get(name, '?')}"
            for name, amount in amounts.items()
        )


@dataclass(frozen=True)
class Finding:
    """One source's candidate for a resource: a value and the words that name the source."""

    value: float
    source: str


@dataclass
class Notes:
    """Ignored inputs met while reading, per resource; each is logged as a warning.

    A mutable scratch pad of one :func:`detect_capacity` call (never shared).
    """

    by_resource: dict[str, list[str]] = field(default_factory=dict)

    def add(self, resource: str, text: str) -> None:
        logger.warning("capacity: %s: %s", resource, text)
        self.by_resource.setdefault(resource, []).append(text)


def _positive_int(text: str) -> int | None:
    """Return ``text`` as an int > 0, or None (only ASCII digits, surrounding blanks allowed)."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value > 0 else None


def _read(path: str, max_chars: int = 4096) -> str | None:
    """Return the stripped content of a small file, or None if it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read(max_chars).strip()
    except OSError:
        return None


def _smallest(candidates: list[Finding]) -> Finding:
    """Return the smallest candidate; on a tie the earliest (deepest cgroup, first source)."""
    best = candidates[0]
    for cand in candidates[1:]:
        if cand.value < best.value:
            best = cand
    return best


# --- cores -------------------------------------------------------------------


def affinity_cores() -> Finding:
    """Return the number of CPUs this process may run on (``sched_getaffinity``)."""
    try:
        n = len(os.sched_getaffinity(0))
        return Finding(float(n), f"affinity ({n} cpus)")
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
        return Finding(float(n), f"os.cpu_count() ({n} cpus)")


def cgroup_cpu_limits(
    *, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", notes: Notes | None = None
) -> list[Finding]:
    """Return every CPU quota on this process's cgroup paths (v1 and v2), deepest first.

    v1: ``cpu.cfs_quota_us / cpu.cfs_period_us`` (quota -1 is no limit); v2:
    ``cpu.max`` (``"max 100000"`` is no limit). Unreadable files are skipped;
    unparsable ones are noted.
    """
    notes = notes if notes is not None else Notes()
    out: list[Finding] = []
    v1 = cgroupfs.v1_dir("cpu", proc_root=proc_root, cgroup_root=cgroup_root)
    if v1 is not None:
        for directory in cgroupfs.up_to_mount(*v1):
            quota_text = _read(os.path.join(directory, "cpu.cfs_quota_us"))
            period_text = _read(os.path.join(directory, "cpu.cfs_period_us"))
            if quota_text is None or period_text is None or quota_text == "-1":
                continue
            quota, period = _positive_int(quota_text), _positive_int(period_text)
            if quota is None or period is None:
                notes.add(
                    "cores",
                    f"ignored cgroup v1 cpu.cfs_quota_us={quota_text!r} "
                    f"cpu.cfs_period_us={period_text!r} at {directory} (not positive numbers)",
                )
                continue
            out.append(
                Finding(
                    quota / period,
                    f"cgroup v1 cpu.cfs_quota_us={quota}/cpu.cfs_period_us={period} at {directory}",
                )
            )
    v2 = cgroupfs.unified_dir(proc_root=proc_root, cgroup_root=cgroup_root)
    if v2 is not None:
        for directory in cgroupfs.up_to_mount(*v2):
            text = _read(os.path.join(directory, "cpu.max"))
            if text is None:
                continue
            parts = text.split()
            if parts[:1] == ["max"]:
                continue
            quota = _positive_int(parts[0]) if len(parts) in (1, 2) else None
            period = _positive_int(parts[1]) if len(parts) == 2 else 100000
            if quota is None or period is None:
                notes.add("cores", f"ignored cgroup v2 cpu.max={text!r} at {directory}")
                continue
            source = f"cgroup v2 cpu.max={quota} {period} at {directory}"
            out.append(Finding(quota / period, source))
    return out


def slurm_cores(environ: Mapping[str, str], *, notes: Notes | None = None) -> Finding | None:
    """Return Slurm's CPU grant for this process, or None outside Slurm.

    ``SLURM_CPUS_PER_TASK`` inside an srun step (``SLURM_STEP_NUM_TASKS`` set),
    else ``SLURM_CPUS_ON_NODE``; the smaller if both apply. Garbage is noted
    and ignored.
    """
    notes = notes if notes is not None else Notes()
    names = ["SLURM_CPUS_ON_NODE"]
    if "SLURM_STEP_NUM_TASKS" in environ:
        names.append("SLURM_CPUS_PER_TASK")
    found: list[Finding] = []
    for name in names:
        if name not in environ:
            continue
        value = _positive_int(environ[name])
        if value is None:
            notes.add("cores", f"ignored {name}={environ[name]!r} (not a positive whole number)")
            continue
        what = f"{name}={value}"
        if name == "SLURM_CPUS_PER_TASK":
            what += " (this srun task's share)"
        found.append(Finding(float(value), what))
    return _smallest(found) if found else None


# --- memory ------------------------------------------------------------------


def meminfo_total(proc_root: str = "/proc") -> Finding:
    """Return ``MemTotal`` from ``<proc_root>/meminfo`` (falls back to ``sysconf``)."""
    text = _read(os.path.join(proc_root, "meminfo")) or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    if match:
        return Finding(float(int(match.group(1)) * 1024), "MemTotal in /proc/meminfo")
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Finding(float(total), "sysconf(SC_PHYS_PAGES)")


def _memory_value(text: str) -> int | None:
    """Return a cgroup memory file's bytes; -1 for no limit; None if unparsable."""
    if text == "max":
        return -1
    value = _positive_int(text)
    if value is None:
        return 0 if text.strip() == "0" else None
    return -1 if value >= UNLIMITED_BYTES else value


def cgroup_memory_limits(
    *, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", notes: Notes | None = None
) -> list[Finding]:
    """Return every memory limit on this process's cgroup paths (v1 and v2), deepest first.

    v1: ``memory.limit_in_bytes`` of the own directory and each parent up to
    the mount point, then the own directory's ``memory.stat``
    ``hierarchical_memory_limit`` (which also sees limits above what the mount
    shows). v2: ``memory.max`` and ``memory.high`` up the path.
    """
    notes = notes if notes is not None else Notes()
    out: list[Finding] = []

    def consider(directory: str, name: str, label: str) -> None:
        text = _read(os.path.join(directory, name))
        if text is None:
            return
        value = _memory_value(text)
        if value is None:
            notes.add("memory", f"ignored {label} {name}={text!r} at {directory}")
        elif value >= 0:
            out.append(Finding(float(value), f"{label} {name} at {directory}"))

    v1 = cgroupfs.v1_dir("memory", proc_root=proc_root, cgroup_root=cgroup_root)
    if v1 is not None:
        for directory in cgroupfs.up_to_mount(*v1):
            consider(directory, "memory.limit_in_bytes", "cgroup v1")
        stat = _read(os.path.join(v1[0], "memory.stat"), 1 << 16) or ""
        match = re.search(r"^hierarchical_memory_limit (\d+)$", stat, re.MULTILINE)
        if match:
            value = _memory_value(match.group(1))
            if value is not None and value >= 0:
                out.append(
                    Finding(
                        float(value),
                        f"cgroup v1 memory.stat hierarchical_memory_limit at {v1[0]}",
                    )
                )
    v2 = cgroupfs.unified_dir(proc_root=proc_root, cgroup_root=cgroup_root)
    if v2 is not None:
        for directory in cgroupfs.up_to_mount(*v2):
            consider(directory, "memory.max", "cgroup v2")
            consider(directory, "memory.high", "cgroup v2")
    return out


def slurm_memory(
    environ: Mapping[str, str], slurm_cpus: Finding | None, *, notes: Notes | None = None
) -> list[Finding]:
    """Return Slurm's memory grants: ``SLURM_MEM_PER_NODE`` and ``SLURM_MEM_PER_CPU`` × cpus.

    ``slurm_cpus`` is :func:`slurm_cores`'s answer. Values are MiB.
    """
    notes = notes if notes is not None else Notes()
    out: list[Finding] = []
    if "SLURM_MEM_PER_NODE" in environ:
        raw = environ["SLURM_MEM_PER_NODE"]
        value = _positive_int(raw)
        if raw.strip() == "0":
            pass  # --mem=0: the job has all of the node's memory
        elif value is None:
            notes.add("memory", f"ignored SLURM_MEM_PER_NODE={raw!r} (not a whole number of MB)")
        else:
            out.append(Finding(float(value * SLURM_MB), f"SLURM_MEM_PER_NODE={value}"))
    if "SLURM_MEM_PER_CPU" in environ:
        raw = environ["SLURM_MEM_PER_CPU"]
        value = _positive_int(raw)
        if value is None:
            notes.add("memory", f"ignored SLURM_MEM_PER_CPU={raw!r} (not a whole number of MB)")
        elif slurm_cpus is None:
            notes.add(
                "memory",
                f"ignored SLURM_MEM_PER_CPU={value} (no usable Slurm CPU count to multiply by)",
            )
        else:
            cpus = int(slurm_cpus.value)
            out.append(
                Finding(
                    float(value * SLURM_MB * cpus),
                    f"SLURM_MEM_PER_CPU={value} x {cpus} cpus ({slurm_cpus.source})",
                )
            )
    return out


# --- disk --------------------------------------------------------------------


def free_disk(workdir: str | os.PathLike[str]) -> Finding:
    """Return the bytes free to this user on the file system holding ``workdir``.

    A ``workdir`` that does not exist yet is measured at its nearest existing parent.

    Raises:
        OSError: no part of the path can be measured.
    """
    path = os.path.abspath(os.fspath(workdir))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return Finding(
        float(st.f_bavail * st.f_frsize), f"free space of the file system holding {path}"
    )


# --- gpus --------------------------------------------------------------------


_SMI_GPU_LINE = re.compile(r"^GPU (\d+):.*?(?:\(UUID: ([^)\s]+)\))?\s*$")


def detect_gpus(
    environ: Mapping[str, str] | None = None, *, timeout_s: float = NVIDIA_SMI_TIMEOUT_S
) -> tuple[tuple[str, ...], str]:
    """Return ``(gpu ids, source)``: from ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``.

    ``nvidia-smi`` is looked up on ``environ["PATH"]`` and run with that
    environment; it never raises: a missing tool, a non-zero exit or a timeout
    gives no GPUs and a source saying why. ids are UUIDs where ``nvidia-smi``
    prints them, else indices.
    """
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        raw = env["CUDA_VISIBLE_DEVICES"]
        ids: list[str] = []
        for entry in raw.split(","):
            entry = entry.strip()
            if not entry or entry == "NoDevFiles" or re.fullmatch(r"-\d+", entry):
                break  # the CUDA runtime ignores this entry and all after it
            ids.append(entry)
        return tuple(ids), f"CUDA_VISIBLE_DEVICES={raw!r}"
    smi = shutil.which("nvidia-smi", path=env.get("PATH", os.defpath))
    if smi is None:
        return (), "no CUDA_VISIBLE_DEVICES and no nvidia-smi on PATH"
    try:
        proc = subprocess.run(
            [smi, "-L"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=dict(env),
            check=False,
        )
    except subprocess.TimeoutExpired:
        logger.warning("capacity: %s -L took more than %.1f s; assuming no GPUs", smi, timeout_s)
        return (), f"{smi} -L timed out after {timeout_s:g} s (taken as 0 GPUs)"
    except OSError as exc:
        return (), f"{smi} -L could not run: {exc} (taken as 0 GPUs)"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        logger.warning("capacity: %s -L exited %d: %s", smi, proc.returncode, tail[0])
        return (), f"{smi} -L exited {proc.returncode}: {tail[0][:200]} (taken as 0 GPUs)"
    found: list[str] = []
    for line in proc.stdout.splitlines():
        match = _SMI_GPU_LINE.match(line)
        if match:
            found.append(match.group(2) or match.group(1))
    return tuple(found), f"{smi} -L ({len(found)} GPUs)"


# --- all together ------------------------------------------------------------


def _decide(resource: str, candidates: list[Finding], notes: Notes) -> Finding:
    """Return the smallest candidate, its source extended by the notes on ``resource``."""
    best = _smallest(candidates)
    extra = notes.by_resource.get(resource)
    if extra:
        return Finding(best.value, best.source + "; " + "; ".join(extra))
    return best


def detect_capacity(
    workdir: str | os.PathLike[str] = ".",
    *,
    environ: Mapping[str, str] | None = None,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
) -> Capacity:
    """Return what this process may use on this node; the smallest source wins.

    Args:
        workdir: where tasks will write; its file system's free space is the disk.
        environ: the environment to read Slurm and CUDA variables from
            (default ``os.environ``).
        proc_root: where ``/proc`` is (tests point it at a prepared tree).
        cgroup_root: where the cgroup file systems are mounted (see
            :mod:`.cgroupfs` for how mount points are re-rooted).

    Unparsable inputs are ignored and named in ``sources`` and ``notes``
    (see the module docstring); CPU affinity is always applied.

    Raises:
        OSError: the free space of ``workdir`` cannot be measured.
    """
    env = os.environ if environ is None else environ
    notes = Notes()

    slurm_cpus = slurm_cores(env, notes=notes)
    cores_found = [affinity_cores()]
    cores_found += cgroup_cpu_limits(proc_root=proc_root, cgroup_root=cgroup_root, notes=notes)
    if slurm_cpus is not None:
        cores_found.append(slurm_cpus)
    cores = _decide("cores", cores_found, notes)

    memory_found = [meminfo_total(proc_root)]
    memory_found += cgroup_memory_limits(proc_root=proc_root, cgroup_root=cgroup_root, notes=notes)
    memory_found += slurm_memory(env, slurm_cpus, notes=notes)
    memory = _decide("memory", memory_found, notes)

    disk = free_disk(workdir)
    gpu_ids, gpu_source = detect_gpus(env)

    capacity = Capacity(
        cores=cores.value,
        memory=int(memory.value),
        disk=int(disk.value),
        gpus=len(gpu_ids),
        gpu_ids=gpu_ids,
        sources={
            "cores": cores.source,
            "memory": memory.source,
            "disk": disk.source,
            "gpus": gpu_source,
        },
        notes=tuple(n for lines in notes.by_resource.values() for n in lines),
    )
    logger.debug("capacity of this node:\n%s", capacity.describe())
    return capacity
