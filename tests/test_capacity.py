"""Tests of node capacity detection (``loadmaster.node.capacity``) and ``cgroupfs``.

Real wherever this machine allows: child v1 memory and cpu cgroups created
here (root only), real environment variables, real CPU affinity (``taskset``,
``sched_setaffinity`` in a subprocess), real ``statvfs``. Faked only what
cannot exist here: a cgroup v2 memory/cpu controller (a prepared tree under
``tmp_path``), a container's view of ``/proc`` and an ``nvidia-smi``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadmaster.node.capacity import (
    Capacity,
    detect_capacity,
    detect_gpus,
    free_disk,
)
from loadmaster.node.measure import cgroupfs
from loadmaster.spec import Resources

MiB = 1 << 20
PY = sys.executable
DETECT = (
    "import dataclasses, json, sys\n"
    "from loadmaster.node.capacity import detect_capacity\n"
    "print(json.dumps(dataclasses.asdict(detect_capacity(sys.argv[1]))))\n"
)
SLURM_AND_CUDA = [k for k in os.environ if k.startswith("SLURM_")] + ["CUDA_VISIBLE_DEVICES"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test outside Slurm and without CUDA_VISIBLE_DEVICES."""
    for name in SLURM_AND_CUDA:
        monkeypatch.delenv(name, raising=False)


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def _base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SLURM_AND_CUDA}
    env.update(extra)
    return env


def _run_detect(
    workdir: Path, *, cgroup_dirs: tuple[Path, ...] = (), prefix: tuple[str, ...] = (), **env: str
) -> dict[str, Any]:
    """Run detect_capacity in a fresh interpreter, moved first into ``cgroup_dirs``."""
    enter = "".join(f'echo $$ > "{d}/cgroup.procs" && ' for d in cgroup_dirs)
    cmd = [*prefix, "sh", "-c", enter + 'exec "$@"', "sh", PY, "-c", DETECT, str(workdir)]
    proc = subprocess.run(
        cmd, env=_base_env(**env), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


class _Cgroups:
    """Child cgroups made for one test; removed (after killing anything left) at teardown."""

    def __init__(self, parent: str) -> None:
        self.parent = parent
        self.made: list[Path] = []

    def make(self, under: Path | None = None) -> Path:
        base = Path(self.parent) if under is None else under
        path = base / f"lm-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
        except OSError as exc:
            pytest.skip(f"kernel refused to create a child cgroup at {path}: {exc}")
        self.made.append(path)
        return path

    def remove_all(self) -> None:
        for path in reversed(self.made):
            procs = path / "cgroup.procs"
            for _ in range(100):
                pids = [int(p) for p in procs.read_text().split()] if procs.exists() else []
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.01)
            path.rmdir()


def _cgroups_of(controller: str) -> Iterator[_Cgroups]:
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root here (no delegation)")
    parent = cgroupfs.own_dir(controller)
    if parent is None:
        pytest.skip(f"no v1 {controller} cgroup of our own on this machine")
    if not cgroupfs.can_create_child(controller):
        pytest.skip(f"cannot create a child cgroup under {parent}")
    groups = _Cgroups(parent)
    try:
        yield groups
    finally:
        groups.remove_all()


@pytest.fixture
def memory_cgroups() -> Iterator[_Cgroups]:
    """Make child v1 memory cgroups under this process's own."""
    yield from _cgroups_of("memory")


@pytest.fixture
def cpu_cgroups() -> Iterator[_Cgroups]:
    """Make child v1 cpu cgroups under this process's own."""
    yield from _cgroups_of("cpu")


# --- real cgroups --------------------------------------------------------------


def test_memory_limit_of_own_cgroup(memory_cgroups: _Cgroups, tmp_path: Path) -> None:
    child = memory_cgroups.make()
    (child / "memory.limit_in_bytes").write_text(str(700 * MiB))
    cap = _run_detect(tmp_path, cgroup_dirs=(child,))
    assert cap["memory"] == 700 * MiB
    assert cap["sources"]["memory"] == f"cgroup v1 memory.limit_in_bytes at {child}"


def test_memory_limit_of_parent_cgroup_binds_child(
    memory_cgroups: _Cgroups, tmp_path: Path
) -> None:
    parent = memory_cgroups.make()
    (parent / "memory.limit_in_bytes").write_text(str(600 * MiB))
    child = memory_cgroups.make(under=parent)  # no limit of its own
    cap = _run_detect(tmp_path, cgroup_dirs=(child,))
    assert cap["memory"] == 600 * MiB
    assert cap["sources"]["memory"] == f"cgroup v1 memory.limit_in_bytes at {parent}"


def test_smallest_memory_source_wins(memory_cgroups: _Cgroups, tmp_path: Path) -> None:
    child = memory_cgroups.make()
    (child / "memory.limit_in_bytes").write_text(str(700 * MiB))
    slurm_smaller = _run_detect(tmp_path, cgroup_dirs=(child,), SLURM_MEM_PER_NODE="512")
    assert slurm_smaller["memory"] == 512 * MiB
    assert slurm_smaller["sources"]["memory"] == "SLURM_MEM_PER_NODE=512"
    cgroup_smaller = _run_detect(tmp_path, cgroup_dirs=(child,), SLURM_MEM_PER_NODE="4096")
    assert cgroup_smaller["memory"] == 700 * MiB
    assert str(child) in cgroup_smaller["sources"]["memory"]


def test_limit_above_a_container_mount_seen_through_memory_stat(
    memory_cgroups: _Cgroups, tmp_path: Path
) -> None:
    # A container's view, made for real: in a private mount namespace the child
    # cgroup is bind-mounted over the memory hierarchy, so the parent's limit
    # file is out of sight; only memory.stat's hierarchical_memory_limit shows it.
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("unshare or mount is not installed")
    parent = memory_cgroups.make()
    (parent / "memory.limit_in_bytes").write_text(str(500 * MiB))
    child = memory_cgroups.make(under=parent)
    mount_point = cgroupfs.controller_mount("memory")
    assert mount_point is not None
    script = (
        'echo $$ > "$1/cgroup.procs" && mount --bind "$1" "$2" && shift 2 && exec "$@"'
    )
    cmd = ["unshare", "-m", "sh", "-c", script, "sh", str(child), mount_point.mount_point,
           PY, "-c", DETECT, str(tmp_path)]
    proc = subprocess.run(
        cmd, env=_base_env(), capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"bind mount in a private mount namespace refused: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    cap = json.loads(proc.stdout)
    assert cap["memory"] == 500 * MiB
    assert cap["sources"]["memory"] == (
        f"cgroup v1 memory.stat hierarchical_memory_limit at {mount_point.mount_point}"
    )
    # The bind mount stayed inside the namespace: our own view is untouched.
    assert [m for m in cgroupfs.read_mounts() if "memory" in m.controllers] == [mount_point]


def test_cpu_quota_of_own_cgroup_gives_half_a_core(cpu_cgroups: _Cgroups, tmp_path: Path) -> None:
    child = cpu_cgroups.make()
    (child / "cpu.cfs_period_us").write_text("100000")
    (child / "cpu.cfs_quota_us").write_text("50000")
    cap = _run_detect(tmp_path, cgroup_dirs=(child,))
    assert cap["cores"] == 0.5
    assert cap["sources"]["cores"] == (
        f"cgroup v1 cpu.cfs_quota_us=50000/cpu.cfs_period_us=100000 at {child}"
    )


def test_cpu_quota_of_parent_cgroup_binds_child(cpu_cgroups: _Cgroups, tmp_path: Path) -> None:
    parent = cpu_cgroups.make()
    (parent / "cpu.cfs_quota_us").write_text("75000")
    child = cpu_cgroups.make(under=parent)
    cap = _run_detect(tmp_path, cgroup_dirs=(child,), SLURM_CPUS_ON_NODE="1")
    assert cap["cores"] == 0.75
    assert str(parent) in cap["sources"]["cores"]


def test_memory_and_cpu_cgroups_together(
    memory_cgroups: _Cgroups, cpu_cgroups: _Cgroups, tmp_path: Path
) -> None:
    mem = memory_cgroups.make()
    (mem / "memory.limit_in_bytes").write_text(str(300 * MiB))
    cpu = cpu_cgroups.make()
    (cpu / "cpu.cfs_quota_us").write_text("25000")
    cap = _run_detect(tmp_path, cgroup_dirs=(mem, cpu))
    assert (cap["cores"], cap["memory"]) == (0.25, 300 * MiB)


# --- real affinity ---------------------------------------------------------------


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: affinity cannot be narrowed")
def test_affinity_restricted_by_taskset(tmp_path: Path) -> None:
    if shutil.which("taskset") is None:
        pytest.skip("taskset is not installed")
    cap = _run_detect(tmp_path, prefix=("taskset", "-c", "0"))
    assert cap["cores"] == 1.0
    assert cap["sources"]["cores"] == "affinity (1 cpus)"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: affinity cannot be narrowed")
def test_affinity_restricted_by_sched_setaffinity(tmp_path: Path) -> None:
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n" + DETECT
    proc = subprocess.run(
        [PY, "-c", code, str(tmp_path)],
        env=_base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    cap = json.loads(proc.stdout)
    assert cap["cores"] == 1.0
    assert cap["sources"]["cores"] == "affinity (1 cpus)"


def test_unrestricted_cores_come_from_affinity(tmp_path: Path) -> None:
    cap = detect_capacity(tmp_path)
    if cgroupfs.own_dir("cpu") in (None, "/sys/fs/cgroup/cpu"):
        assert cap.cores == _affinity()
        assert cap.sources["cores"] == f"affinity ({_affinity()} cpus)"
    assert cap.cores <= _affinity()


# --- real Slurm environment variables ----------------------------------------------


def test_slurm_cpus_on_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "1")
    cap = detect_capacity(tmp_path)
    assert cap.cores == 1.0
    if _affinity() > 1:
        assert cap.sources["cores"] == "SLURM_CPUS_ON_NODE=1"


def test_slurm_mem_per_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "512")
    cap = detect_capacity(tmp_path)
    assert cap.memory == 512 * MiB
    assert cap.sources["memory"] == "SLURM_MEM_PER_NODE=512"


def test_slurm_mem_per_node_zero_means_whole_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    unset = detect_capacity(tmp_path)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "0")
    cap = detect_capacity(tmp_path)
    assert (cap.memory, cap.sources["memory"], cap.notes) == (
        unset.memory,
        unset.sources["memory"],
        (),
    )


def test_slurm_mem_per_cpu_times_cpus_on_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "2")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "300")
    cap = detect_capacity(tmp_path)
    assert cap.memory == 600 * MiB
    assert cap.sources["memory"].startswith("SLURM_MEM_PER_CPU=300 x 2 cpus")


def test_slurm_cpus_per_task_counts_inside_an_srun_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "4")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "200")
    batch = detect_capacity(tmp_path)  # a batch script owns the node's whole allocation
    assert batch.cores == min(4, _affinity())
    assert batch.memory == 800 * MiB

    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    step = detect_capacity(tmp_path)
    assert step.cores == 1.0
    assert step.memory == 200 * MiB
    assert "SLURM_CPUS_PER_TASK=1" in step.sources["memory"]
    if _affinity() > 1:
        assert step.sources["cores"] == "SLURM_CPUS_PER_TASK=1 (this srun task's share)"


def test_slurm_mem_per_cpu_without_cpu_count_is_ignored_with_a_note(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "100")
    cap = detect_capacity(tmp_path)
    assert cap.memory > 100 * MiB
    assert "ignored SLURM_MEM_PER_CPU=100 (no usable Slurm CPU count" in cap.sources["memory"]


@pytest.mark.parametrize("garbage", ["lots", "-3", "1.5", "0", "", " ", "٣", "4 cpus", "1e3"])
def test_garbage_slurm_cpus_is_ignored_and_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, garbage: str
) -> None:
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", garbage)
    cap = detect_capacity(tmp_path)
    expected = f"ignored SLURM_CPUS_ON_NODE={garbage!r} (not a positive whole number)"
    assert expected in cap.sources["cores"]
    assert cap.notes == (expected,)
    assert cap.cores == detect_capacity(tmp_path, environ={}).cores


@pytest.mark.parametrize("garbage", ["4G", "-512", "512.5", "lots"])
def test_garbage_slurm_memory_is_ignored_and_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, garbage: str
) -> None:
    monkeypatch.setenv("SLURM_MEM_PER_NODE", garbage)
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "1")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "256")  # still used: garbage spoils only its own var
    cap = detect_capacity(tmp_path)
    assert cap.memory == 256 * MiB
    assert f"ignored SLURM_MEM_PER_NODE={garbage!r}" in cap.sources["memory"]


def test_huge_slurm_values_lose_to_the_real_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "9" * 30)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "9" * 30)
    cap = detect_capacity(tmp_path)
    plain = detect_capacity(tmp_path, environ={})
    assert (cap.cores, cap.memory) == (plain.cores, plain.memory)


# --- real CUDA_VISIBLE_DEVICES -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("0,1", ("0", "1")),
        (" 2 , 3 ", ("2", "3")),
        ("GPU-8f6a1c2e-1111-2222-3333-444455556666,GPU-aa", (
            "GPU-8f6a1c2e-1111-2222-3333-444455556666",
            "GPU-aa",
        )),
        ("MIG-4b2a/1/0", ("MIG-4b2a/1/0",)),
        ("", ()),
        ("NoDevFiles", ()),
        ("-1", ()),
        ("0,-1,1", ("0",)),
        ("0,,1", ("0",)),
    ],
)
def test_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, ids: tuple[str, ...]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    cap = detect_capacity(tmp_path)
    assert (cap.gpus, cap.gpu_ids) == (len(ids), ids)
    assert cap.sources["gpus"] == f"CUDA_VISIBLE_DEVICES={value!r}"


# --- nvidia-smi (cannot exist here: a stand-in script on PATH) ----------------------


def _fake_smi(bin_dir: Path, body: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + body)
    smi.chmod(0o755)
    return smi


def test_nvidia_smi_lists_gpus(tmp_path: Path) -> None:
    smi = _fake_smi(
        tmp_path / "bin",
        'test "$1" = "-L" || exit 3\n'
        "echo 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0aa)'\n"
        "echo '  MIG 1g.5gb     Device  0: (UUID: MIG-0bb)'\n"
        "echo 'GPU 1: Tesla V100 (UUID: GPU-1cc)'\n"
        "echo 'GPU 2: Old card'\n",
    )
    env = {"PATH": f"{smi.parent}:/usr/bin:/bin"}
    cap = detect_capacity(tmp_path, environ=env)
    assert (cap.gpus, cap.gpu_ids) == (3, ("GPU-0aa", "GPU-1cc", "2"))
    assert cap.sources["gpus"] == f"{smi} -L (3 GPUs)"


def test_nvidia_smi_failure_means_no_gpus(tmp_path: Path) -> None:
    smi = _fake_smi(
        tmp_path / "bin",
        "echo \"NVIDIA-SMI has failed because it couldn't communicate with the driver\" >&2\n"
        "exit 9\n",
    )
    ids, source = detect_gpus({"PATH": str(smi.parent)})
    assert ids == ()
    assert source.startswith(f"{smi} -L exited 9: NVIDIA-SMI has failed")


def test_nvidia_smi_timeout_means_no_gpus(tmp_path: Path) -> None:
    smi = _fake_smi(tmp_path / "bin", "exec sleep 30\n")
    start = time.monotonic()
    ids, source = detect_gpus({"PATH": f"{smi.parent}:/usr/bin:/bin"}, timeout_s=0.3)
    assert time.monotonic() - start < 5
    assert ids == ()
    assert source == f"{smi} -L timed out after 0.3 s (taken as 0 GPUs)"


def test_nvidia_smi_not_run_when_cuda_visible_devices_is_set(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    smi = _fake_smi(tmp_path / "bin", f'touch "{marker}"\necho "GPU 0: x"\n')
    ids, source = detect_gpus({"PATH": str(smi.parent), "CUDA_VISIBLE_DEVICES": "5"})
    assert (ids, source, marker.exists()) == (("5",), "CUDA_VISIBLE_DEVICES='5'", False)


def test_no_gpus_without_nvidia_smi(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert detect_gpus({"PATH": str(empty)}) == (
        (),
        "no CUDA_VISIBLE_DEVICES and no nvidia-smi on PATH",
    )


# --- real disk ------------------------------------------------------------------------


def test_disk_is_free_space_of_workdir(tmp_path: Path) -> None:
    cap = detect_capacity(tmp_path)
    assert abs(cap.disk - shutil.disk_usage(tmp_path).free) < 256 * MiB
    assert cap.sources["disk"] == f"free space of the file system holding {tmp_path}"


def test_disk_of_a_workdir_not_yet_made_is_measured_at_its_parent(tmp_path: Path) -> None:
    found = free_disk(tmp_path / "not yet" / "made 'quoted'")
    assert found.source == f"free space of the file system holding {tmp_path}"


def test_disk_follows_the_file_system(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no separate /dev/shm file system to compare with")
    assert abs(free_disk(shm).value - shutil.disk_usage(shm).free) < 64 * MiB
    assert abs(free_disk(tmp_path).value - shutil.disk_usage(tmp_path).free) < 256 * MiB


# --- speed, shape ------------------------------------------------------------------


def test_detect_capacity_is_fast(tmp_path: Path) -> None:
    detect_capacity(tmp_path)  # warm file caches
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        detect_capacity(tmp_path, environ={"PATH": str(tmp_path)})
        best = min(best, time.perf_counter() - start)
    assert best < 0.020, f"detect_capacity took {best * 1000:.1f} ms (budget 20 ms)"


def test_capacity_as_resources_and_describe(tmp_path: Path) -> None:
    cap = detect_capacity(tmp_path, environ={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert cap.as_resources() == Resources(
        cores=cap.cores, memory=cap.memory, disk=cap.disk, gpus=2
    )
    text = cap.describe()
    lines = {line.split()[0]: line for line in text.splitlines()}
    assert set(lines) == {"cores", "memory", "disk", "gpus"}
    assert " 2 (0,1)  from CUDA_VISIBLE_DEVICES='0,1'" in lines["gpus"]
    assert lines["memory"].endswith("from " + cap.sources["memory"])
    assert set(cap.sources) == {"cores", "memory", "disk", "gpus"}
    assert dataclasses.replace(cap) == cap
    assert isinstance(cap, Capacity)


# --- cgroupfs, real ------------------------------------------------------------------


def _own_path(controller: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if (controller == "" and hid == "0") or controller in ctrls.split(","):
            return path
    return None


def test_own_dir_matches_proc_self_cgroup() -> None:
    path = _own_path("memory")
    if path is None or not Path("/sys/fs/cgroup/memory").is_dir():
        pytest.skip("no v1 memory hierarchy here")
    own = cgroupfs.own_dir("memory")
    assert own == os.path.normpath("/sys/fs/cgroup/memory" + path)
    assert Path(own, "memory.limit_in_bytes").is_file()
    assert cgroupfs.own_dir("no-such-controller") is None


def test_own_unified_dir_is_real() -> None:
    own = cgroupfs.own_unified_dir()
    if own is None:
        pytest.skip("no cgroup v2 hierarchy mounted")
    assert Path(own, "cgroup.procs").is_file()
    assert str(os.getpid()) in Path(own, "cgroup.procs").read_text().split()


def test_can_create_child_as_root_leaves_nothing_behind() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    own = cgroupfs.own_dir("memory")
    if own is None:
        pytest.skip("no v1 memory cgroup of our own")
    before = set(os.listdir(own))
    assert cgroupfs.can_create_child("memory") is True
    assert set(os.listdir(own)) == before


def test_can_create_child_is_false_for_an_ordinary_user() -> None:
    if os.geteuid() != 0:
        assert cgroupfs.can_create_child("memory") is False
        return
    if cgroupfs.own_dir("memory") is None:
        pytest.skip("no v1 memory cgroup of our own")
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, ask, report through the exit status
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os._exit(10 + int(cgroupfs.can_create_child("memory")))
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 10


# --- prepared trees: cgroup v2, containers, hostile files -------------------------------


def _proc_tree(root: Path, cgroup: str, mountinfo: str, mem_total_kb: int = 8 << 20) -> str:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    (proc / "meminfo").write_text(f"MemTotal:       {mem_total_kb} kB\nMemFree: 1 kB\n")
    return str(proc)


def _write(path: Path, **files: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name.replace("_", ".", 1)).write_text(text + "\n")


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_v2_memory_max_high_and_cpu_max(tmp_path: Path) -> None:
    proc = _proc_tree(tmp_path, "0::/job 1/step:0\n", V2_MOUNT)
    cg = tmp_path / "cgroup"
    _write(cg, cgroup_controllers="cpu memory")
    _write(cg / "job 1", memory_max=str(1 << 30), memory_high="max", cpu_max="150000 100000")
    _write(cg / "job 1" / "step:0", memory_max="max", memory_high=str(768 * MiB),
           cpu_max="max 100000")
    cap = detect_capacity(tmp_path, environ={}, proc_root=proc, cgroup_root=str(cg))
    assert cap.memory == 768 * MiB
    assert cap.sources["memory"] == f"cgroup v2 memory.high at {cg}/job 1/step:0"
    assert cap.cores == min(1.5, _affinity())
    if _affinity() > 1.5:
        assert cap.sources["cores"] == f"cgroup v2 cpu.max=150000 100000 at {cg}/job 1"

    _write(cg / "job 1", memory_max=str(512 * MiB), cpu_max="50000 100000")
    cap = detect_capacity(tmp_path, environ={}, proc_root=proc, cgroup_root=str(cg))
    assert (cap.memory, cap.cores) == (512 * MiB, 0.5)
    assert cap.sources["memory"] == f"cgroup v2 memory.max at {cg}/job 1"


def test_v2_without_limits_falls_back_to_meminfo(tmp_path: Path) -> None:
    proc = _proc_tree(tmp_path, "0::/\n", V2_MOUNT, mem_total_kb=2 << 20)
    cg = tmp_path / "cgroup"
    _write(cg, cgroup_controllers="cpu memory")
    cap = detect_capacity(tmp_path, environ={}, proc_root=proc, cgroup_root=str(cg))
    assert (cap.memory, cap.sources["memory"]) == (2 << 30, "MemTotal in /proc/meminfo")


def test_hostile_cgroup_files_are_ignored_and_named(tmp_path: Path) -> None:
    proc = _proc_tree(tmp_path, "0::/j\n", V2_MOUNT, mem_total_kb=4 << 20)
    cg = tmp_path / "cgroup"
    _write(cg / "j", memory_max="lots", memory_high="-5", cpu_max="abc def ghi")
    cap = detect_capacity(tmp_path, environ={}, proc_root=proc, cgroup_root=str(cg))
    assert cap.memory == 4 << 30
    assert f"ignored cgroup v2 memory.max='lots' at {cg}/j" in cap.sources["memory"]
    assert f"ignored cgroup v2 memory.high='-5' at {cg}/j" in cap.sources["memory"]
    assert f"ignored cgroup v2 cpu.max='abc def ghi' at {cg}/j" in cap.sources["cores"]
    assert len(cap.notes) == 3


V1_MOUNTS = (
    "35 31 0:32 {root} /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
)


def test_v1_container_view_with_mount_root(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: the mount shows only the container's cgroup.
    proc = _proc_tree(
        tmp_path,
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc/inner\n",
        V1_MOUNTS.format(root="/docker/abc"),
    )
    cg = tmp_path / "cgroup"
    unlimited = "9223372036854771712"
    _write(cg / "memory", memory_limit_in_bytes=str(900 * MiB),
           memory_stat=f"cache 0\nhierarchical_memory_limit {900 * MiB}\n")
    _write(cg / "cpu,cpuacct", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    _write(cg / "cpu,cpuacct" / "inner", cpu_cfs_quota_us="20000", cpu_cfs_period_us="100000")
    assert cgroupfs.own_dir("memory", proc_root=proc, cgroup_root=str(cg)) == f"{cg}/memory"
    assert cgroupfs.own_dir("cpuacct", proc_root=proc, cgroup_root=str(cg)) == (
        f"{cg}/cpu,cpuacct/inner"
    )
    cap = detect_capacity(tmp_path, environ={}, proc_root=proc, cgroup_root=str(cg))
    assert (cap.memory, cap.cores) == (900 * MiB, 0.2)
    assert cap.sources["memory"] == f"cgroup v1 memory.limit_in_bytes at {cg}/memory"

    # The host's limit above the container is visible only through memory.stat.
    _write(cg / "memory", memory_limit_in_bytes=unlimited,
           memory_stat=f"hierarchical_memory_limit {400 * MiB}\n")
    cap = detect_capacity(tmp_path, environ={}, proc_root=proc, cgroup_root=str(cg))
    assert cap.memory == 400 * MiB
    assert cap.sources["memory"] == (
        f"cgroup v1 memory.stat hierarchical_memory_limit at {cg}/memory"
    )


def test_v1_unlimited_value_is_ignored(tmp_path: Path) -> None:
    proc = _proc_tree(tmp_path, "4:memory:/a\n", V1_MOUNTS.format(root="/"), mem_total_kb=1 << 20)
    cg = tmp_path / "cgroup"
    for d in (cg / "memory", cg / "memory" / "a"):
        _write(d, memory_limit_in_bytes="9223372036854771712",
               memory_stat="hierarchical_memory_limit 9223372036854771712\n")
    cap = detect_capacity(tmp_path, environ={}, proc_root=proc, cgroup_root=str(cg))
    assert (cap.memory, cap.sources["memory"], cap.notes) == (
        1 << 30,
        "MemTotal in /proc/meminfo",
        (),
    )


def test_cgroup_outside_the_mount_root_is_unknown(tmp_path: Path) -> None:
    proc = _proc_tree(tmp_path, "4:memory:/elsewhere\n", V1_MOUNTS.format(root="/docker/abc"))
    assert cgroupfs.own_dir("memory", proc_root=proc, cgroup_root=str(tmp_path)) is None
    assert cgroupfs.own_unified_dir(proc_root=proc, cgroup_root=str(tmp_path)) is None
    assert cgroupfs.can_create_child("memory", proc_root=proc, cgroup_root=str(tmp_path)) is False


def test_mountinfo_escapes_and_odd_cgroup_lines(tmp_path: Path) -> None:
    proc = _proc_tree(
        tmp_path,
        "garbage\nx:memory:/nope\n4:memory:/with space/and:colon\n",
        "junk line\n35 31 0:32 / /sys/fs/cgroup/mem\\040ory rw - cgroup cgroup rw,memory\n",
    )
    assert cgroupfs.own_dir("memory", proc_root=proc, cgroup_root=str(tmp_path)) == (
        f"{tmp_path}/mem ory/with space/and:colon"
    )


def test_missing_mountinfo_uses_the_conventional_layout(tmp_path: Path) -> None:
    proc = _proc_tree(tmp_path, "4:memory:/a\n0::/b\n", "")
    os.unlink(Path(proc) / "self" / "mountinfo")
    (tmp_path / "cg" / "memory" / "a").mkdir(parents=True)
    _write(tmp_path / "cg" / "unified" / "b", cgroup_controllers="")
    _write(tmp_path / "cg" / "unified", cgroup_controllers="")
    root = str(tmp_path / "cg")
    assert cgroupfs.own_dir("memory", proc_root=proc, cgroup_root=root) == f"{root}/memory/a"
    assert cgroupfs.own_unified_dir(proc_root=proc, cgroup_root=root) == f"{root}/unified/b"
