"""The real local Slurm tier: Slurm starts, runs batch jobs, and carries Dask workers.

Runs as root only (``scripts/slurm.sh up`` installs and starts Debian's Slurm); elsewhere
every test skips with the reason. Marker ``slurm``: ``make test-slurm`` runs these.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cluster import slurm

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def slurm_info() -> slurm.SlurmInfo:
    return slurm.require()


def _job_env() -> dict[str, str]:
    """Run inside a Dask worker: the Slurm allocation the worker's process lives in."""
    keys = ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST")
    env = {k: os.environ.get(k, "") for k in keys}
    env["pid"] = str(os.getpid())
    return env


def test_sbatch_wrap_runs_a_job(slurm_info: slurm.SlurmInfo, tmp_path: Path) -> None:
    job_id, out = slurm.sbatch_wait(
        slurm_info, 'echo "job=$SLURM_JOB_ID cpus=$SLURM_CPUS_ON_NODE host=$(hostname -s)"', tmp_path
    )
    assert f"job={job_id} " in out
    assert f"host={slurm_info.node}" in out
    assert slurm.job_state(job_id) in ("", "COMPLETED", "COMPLETING")


def test_slurmcluster_workers_are_slurm_jobs(slurm_info: slurm.SlurmInfo, tmp_path: Path) -> None:
    with slurm.dask_cluster(slurm_info, tmp_path, jobs=2, cores=1, memory="2GB") as (cluster, client):
        job_of_name = {name: str(job.job_id) for name, job in cluster.workers.items()}
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        seen = {}
        for addr, w in workers.items():
            env = client.submit(_job_env, workers=[addr], allow_other_workers=False, pure=False).result(timeout=120)
            seen[w["name"]] = env
        ids = {env["SLURM_JOB_ID"] for env in seen.values()}
        assert len(ids) == 2, seen
        for name, env in seen.items():
            assert env["SLURM_JOB_ID"] == job_of_name[name]
            assert env["SLURM_CPUS_PER_TASK"] == "1"
            assert env["SLURM_MEM_PER_NODE"] == "2048"  # memory="2GB" -> --mem=2G
            assert env["SLURM_JOB_PARTITION"] == slurm_info.partition
            assert slurm.job_state(int(env["SLURM_JOB_ID"])) == "RUNNING"
