"""GPU memory of a task's processes, through NVML (``pynvml``, from ``nvidia-ml-py``), where it is.

The zygote's sampler calls :func:`used` for a task that holds GPUs, with the
task tree's pids; the highest sum seen is the report's ``peak_gpu_memory``.
Sampled, so a task shorter than the sampling period, or one whose processes
NVML cannot see (another pid namespace), reports none. ``pynvml`` is imported
on the first GPU task only (never for a node without one); without it, or
without a driver, nothing is measured and nothing is said per task.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

_nvml: Any = None
_tried = False


def _load() -> Any:
    global _nvml, _tried
    if not _tried:
        _tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        except Exception:
            _nvml = None
    return _nvml


def _handle(nvml: Any, gpu_id: str) -> Any:
    if gpu_id.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(gpu_id))
    return nvml.nvmlDeviceGetHandleByUUID(gpu_id)


def used(gpu_ids: tuple[str, ...], pids: set[int]) -> int | None:
    """Bytes of GPU memory the processes ``pids`` use on ``gpu_ids`` now; ``None`` without NVML."""
    nvml = _load()
    if nvml is None:
        return None
    total = 0
    try:
        for gpu_id in gpu_ids:
            handle = _handle(nvml, gpu_id)
            for fetch in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
                for proc in fetch(handle):
                    if proc.pid in pids:
                        total += int(proc.usedGpuMemory or 0)
    except Exception:
        return None
    return total
