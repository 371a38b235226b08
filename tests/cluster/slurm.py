"""The real local Slurm, for tests and benches: start it, submit to it, put Dask on it.

Who runs this: the pytest process (root in CI) or a bench script. It calls
``scripts/slurm.sh up`` (install Debian's Slurm when missing, write the config,
start munged, slurmctld and slurmd without systemd, wait until the node is idle;
idempotent and safe when another process already started it), then talks to
Slurm only through its command-line clients (``sinfo``, ``sbatch``, ``squeue``)
and dask-jobqueue.

What it changes on the machine: the Slurm daemons stay up after the tests (one
Slurm serves every caller on the machine; ``make slurm-down`` stops it). Job
logs go to a directory the caller gives.

Usage (a test module)::

    from tests.cluster import slurm

    @pytest.fixture(scope="session")
    def slurm_info() -> slurm.SlurmInfo:
        return slurm.require()            # pytest.skip with the reason when it cannot start

    def test_x(slurm_info, tmp_path):
        with slurm.dask_cluster(slurm_info, tmp_path, jobs=2) as (cluster, client):
            ...                            # client has 2 workers, each one Slurm job

What it does *not* cover: memory enforcement by Slurm (the config uses
``proctrack/linuxproc`` and ``task/none``: a job's ``--mem`` is bookkeeping, not a
limit), accounting (``sacct`` has no data), more than one node.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm.sh"
UP_TIMEOUT_S = 600  # a first run installs packages


@dataclass(frozen=True)
class SlurmInfo:
    """The running local Slurm as ``sinfo`` reports it.

    Attributes:
        partition: the default partition's name (no trailing ``*``).
        node: the one node's name (``hostname -s``).
        cpus: CPUs Slurm may allocate on it.
        memory_mb: RealMemory in MB.
        up_s: how long ``scripts/slurm.sh up`` took in this process (0 when it was up).
    """

    partition: str
    node: str
    cpus: int
    memory_mb: int
    up_s: float


def _sinfo() -> tuple[str, str, int, int]:
    out = subprocess.run(
        ["sinfo", "-h", "-o", "%P|%N|%c|%m"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for line in out.splitlines():
        part, node, cpus, mem = line.split("|")
        if part.endswith("*"):
            return part.rstrip("*"), node, int(cpus), int(mem)
    part, node, cpus, mem = out.splitlines()[0].split("|")
    return part, node, int(cpus), int(mem)


@functools.cache
def start() -> SlurmInfo | str:
    """Bring the local Slurm up (once per process); return its facts or why it cannot run.

    Returns a string (the reason) when not root, when the script is missing, or when
    ``scripts/slurm.sh up`` fails (its last output lines are in the reason).
    """
    if os.geteuid() != 0:
        return "the slurm tier needs root (installs Debian's Slurm and starts its daemons)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "no apt-get to install Slurm and no slurmctld on PATH"
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=UP_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"scripts/slurm.sh up did not finish within {UP_TIMEOUT_S} s"
    up_s = time.monotonic() - t0
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        return f"scripts/slurm.sh up failed (exit {proc.returncode}): {tail}"
    try:
        part, node, cpus, mem = _sinfo()
    except (subprocess.SubprocessError, OSError, ValueError) as e:
        return f"Slurm started but sinfo failed: {e}"
    already = "already up" in proc.stderr
    return SlurmInfo(partition=part, node=node, cpus=cpus, memory_mb=mem, up_s=0.0 if already else up_s)


def require() -> SlurmInfo:
    """:func:`start`, or ``pytest.skip`` with the reason it cannot run."""
    info = start()
    if isinstance(info, str):
        pytest.skip(info)
    return info


def sbatch_wait(info: SlurmInfo, command: str, out_dir: Path, *, timeout_s: float = 300) -> tuple[int, str]:
    """Submit ``sbatch --wait --wrap COMMAND`` and return (job id, the job's stdout).

    ``--wait`` makes sbatch return when the job ends, with the job's exit status.

    Raises:
        subprocess.CalledProcessError: the job failed or sbatch refused it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["sbatch", "--parsable", "--wait", "-p", info.partition, "-o", str(out_dir / "job-%j.out"),
         "--wrap", command],
        capture_output=True, text=True, timeout=timeout_s, check=True,
    )
    job_id = int(proc.stdout.strip().split(";")[0].splitlines()[0])
    return job_id, (out_dir / f"job-{job_id}.out").read_text()


def job_state(job_id: int) -> str:
    """The job's state as ``squeue`` shows it (``RUNNING``, ``PENDING``...), ``""`` once gone."""
    out = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=30
    ).stdout
    return out.strip()


@contextlib.contextmanager
def dask_cluster(
    info: SlurmInfo,
    log_dir: Path,
    *,
    jobs: int = 2,
    cores: int = 1,
    memory: str = "2GB",
    processes: int = 1,
    timeout_s: float = 300,
    **kwargs: Any,
) -> Iterator[tuple[SLURMCluster, Client]]:
    """A dask-jobqueue ``SLURMCluster`` on the local Slurm, scaled to ``jobs`` jobs.

    Yields (cluster, client) once ``jobs * processes`` workers have joined (they wait
    in the queue while other users' jobs hold the node). Closes both on exit; the
    cluster cancels its jobs. ``kwargs`` go to ``SLURMCluster`` (``job_extra_directives``,
    ``worker_extra_args``, ``job_script_prologue``...).

    Raises:
        TimeoutError: the workers did not join within ``timeout_s`` (the message has
            the queue and the job logs' tails).
    """
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    log_dir.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("walltime", "01:00:00")
    cluster = SLURMCluster(
        cores=cores,
        memory=memory,
        processes=processes,
        queue=info.partition,
        log_directory=str(log_dir),
        **kwargs,
    )
    try:
        cluster.scale(jobs=jobs)
        client = Client(cluster)
        try:
            try:
                client.wait_for_workers(jobs * processes, timeout=timeout_s)
            except TimeoutError as e:
                queue = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
                logs = " | ".join(
                    f"{p.name}: {p.read_text()[-300:]}" for p in sorted(log_dir.glob("*.err"))[-jobs:]
                )
                raise TimeoutError(
                    f"{jobs} Slurm jobs' Dask workers did not join within {timeout_s} s; "
                    f"queue: {queue.strip() or 'empty'}; logs: {logs or 'none'}"
                ) from e
            yield cluster, client
        finally:
            client.close()
    finally:
        cluster.close()
