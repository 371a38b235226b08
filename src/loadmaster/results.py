"""What comes back from a task: :class:`TaskReport` and :class:`CommandResult`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from loadmaster.data.refs import DataReport
from loadmaster.spec import Resources


class MeasureMethod(enum.StrEnum):
    """How a task's peak memory was measured.

    * ``CGROUP_V1``: the kernel's ``memory.max_usage_in_bytes`` of a memory
      cgroup that held the task's whole process tree (exact, spikes included).
    * ``CGROUP_V2``: the kernel's ``memory.peak`` (exact, spikes included).
    * ``HWM_SAMPLED``: the task process's own kernel high-water mark (``VmHWM``
      after resetting it, exact for that process) plus its descendants' high-water
      marks sampled every few milliseconds (a descendant that lives shorter than
      the sampling period can be missed).
    """

    CGROUP_V1 = "cgroup-v1"
    CGROUP_V2 = "cgroup-v2"
    HWM_SAMPLED = "hwm+sampled-tree"


class Outcome(enum.StrEnum):
    """How an attempt ended."""

    OK = "ok"
    FAILED = "failed"
    EXHAUSTED = "exhausted"
    LOST = "lost"


@dataclass(frozen=True)
class TaskReport:
    """What one task (its last attempt) really used, as measured.

    Attributes:
        task_id: the executor's id for the task.
        category: the task's category.
        peak_memory: bytes of the task's own memory, its whole process tree at its
            highest: anonymous and shared memory and mapped files (what ``time -v``
            calls resident), not the page cache of the files it read or wrote. Sizing
            and admission use this.
        peak_charged: what the task's memory cgroup was charged at its highest,
            page cache included (``None`` without a cgroup slot). Enforcement counts
            this, but the kernel reclaims the cache before it kills.
        cpu_time: user + system CPU seconds of the task's tree.
        wall_time: seconds from start to end of the attempt.
        cores: average cores in use (``cpu_time / wall_time``).
        disk: bytes the task's tree wrote to storage.
        max_processes: most processes seen at once in the task's tree.
        allocation: the :class:`Resources` the attempt ran under.
        attempts: how many attempts were made (1 = no retry).
        exit_status: 0 on success; the exit code, or minus the signal number.
        host: the node's host name.
        measure_method: how ``peak_memory`` was measured.
        outcome: how the attempt ended.
        exhausted: which resource ran out (``"memory"``, ``"disk"``,
            ``"wall_time"``), or ``None``.
        peak_gpu_memory: bytes of GPU memory the task's processes used at their
            highest, sampled through NVML (``nvidia-ml-py``) for a task that held
            GPUs; ``None`` without GPUs, without NVML, or when never sampled.
        started_at, finished_at: wall-clock times (``time.time()``).
        input_size: bytes of declared inputs (or the ``size=`` hint), if known.
        error: a one-line description of the failure, or ``""``.
        stdout, stderr: what the task printed, decoded as UTF-8 (invalid bytes
            replaced), each capped at 16 MiB (a note at the end says when it was
            cut). A function task's output is captured the way a command's is,
            so it comes back from any node; neither is stored in the history
            nor part of :meth:`as_dict`.
        data: what the node did with the task's declared files (``File``,
            ``Output``): bytes fetched and from where, cache hits, staging
            time, outputs (a :class:`~loadmaster.data.refs.DataReport`), or
            ``None`` when it declared none.
    """

    task_id: int
    category: str
    peak_memory: int
    cpu_time: float
    wall_time: float
    cores: float
    disk: int
    max_processes: int
    allocation: Resources
    attempts: int
    exit_status: int
    host: str
    measure_method: MeasureMethod
    outcome: Outcome = Outcome.OK
    exhausted: str | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    input_size: int | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    peak_charged: int | None = None
    peak_gpu_memory: int | None = None
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)
    data: DataReport | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (allocation flattened into a nested dict)."""
        return {
            "task_id": self.task_id,
            "category": self.category,
            "peak_memory": self.peak_memory,
            "peak_charged": self.peak_charged,
            "peak_gpu_memory": self.peak_gpu_memory,
            "cpu_time": self.cpu_time,
            "wall_time": self.wall_time,
            "cores": self.cores,
            "disk": self.disk,
            "max_processes": self.max_processes,
            "allocation": self.allocation.as_dict(),
            "attempts": self.attempts,
            "exit_status": self.exit_status,
            "host": self.host,
            "measure_method": self.measure_method.value,
            "outcome": self.outcome.value,
            "exhausted": self.exhausted,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "input_size": self.input_size,
            "error": self.error,
            "extra": dict(self.extra),
            "data": None if self.data is None else self.data.as_dict(),
        }


@dataclass(frozen=True)
class CommandResult:
    """The result of a shell command task that exited with status 0.

    ``stdout`` and ``stderr`` are decoded as UTF-8 (invalid bytes replaced).
    """

    returncode: int
    stdout: str
    stderr: str
