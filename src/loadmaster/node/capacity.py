"""What this node really grants: cores, memory, disk, GPUs.

CONTRACT STUB — being implemented; the signatures below are fixed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from loadmaster.spec import Resources


@dataclass(frozen=True)
class Capacity:
    """The node's grant, with the source that decided each number."""

    cores: float
    memory: int
    disk: int
    gpus: int
    gpu_ids: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)

    def as_resources(self) -> Resources:
        """Return the grant as :class:`Resources`."""
        return Resources(cores=self.cores, memory=self.memory, disk=self.disk, gpus=self.gpus)


def detect_capacity(
    workdir: str | os.PathLike[str] = ".",
    *,
    environ: Mapping[str, str] | None = None,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
) -> Capacity:
    """Return what this process may use on this node; the smallest source wins."""
    raise NotImplementedError
