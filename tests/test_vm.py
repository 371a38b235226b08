"""Inside the cgroup-v2 VM: the memory controller is there and usable, loadmaster imports.

These tests run *inside* the VM that ``scripts/vm-run.sh`` boots (``make test-vm``
runs them as root, then as ``nobody`` with a delegated subtree); on the host they skip.
Marker ``vm``. The measurement tests that need cgroup v2 run in the same VM
(``VM_TESTS`` in the Makefile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        os.environ.get("LOADMASTER_IN_VM") != "1", reason="runs inside the cgroup-v2 VM: make test-vm"
    ),
]

CG = Path("/sys/fs/cgroup")


def _own_v2_dir() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return CG / line[3:].lstrip("/")
    raise AssertionError(f"no cgroup v2 line in /proc/self/cgroup: {Path('/proc/self/cgroup').read_text()!r}")


@pytest.fixture
def child_cgroup() -> Iterator[Path]:
    """A new child cgroup where this user may make one: the root, or the delegated subtree."""
    delegated = os.environ.get("LOADMASTER_VM_CGROUP")
    parent = Path(delegated) if delegated else CG
    cg = parent / f"lm-vmtest-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    cg.mkdir()
    try:
        yield cg
    finally:
        for _ in range(100):
            try:
                cg.rmdir()
                break
            except OSError:
                (cg / "cgroup.kill").write_text("1")


def test_cgroup_v2_has_the_memory_controller() -> None:
    controllers = (CG / "cgroup.controllers").read_text().split()
    assert "memory" in controllers and "pids" in controllers
    assert "memory" in (CG / "cgroup.subtree_control").read_text().split()
    if os.environ.get("LOADMASTER_VM_CGROUP"):
        assert os.geteuid() != 0
        own = _own_v2_dir()
        assert own.parent == Path(os.environ["LOADMASTER_VM_CGROUP"])
        assert "memory" in (own / "cgroup.controllers").read_text().split()


def test_a_child_cgroup_limits_memory(child_cgroup: Path) -> None:
    """memory.max set on a new child is enforced by the kernel: a 300 MiB toucher is OOM-killed."""
    (child_cgroup / "memory.max").write_text(str(128 << 20))
    assert int((child_cgroup / "memory.max").read_text()) == 128 << 20
    if (child_cgroup / "memory.swap.max").exists():
        (child_cgroup / "memory.swap.max").write_text("0")
    procs = child_cgroup / "cgroup.procs"
    toucher = "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])"
    proc = subprocess.run(
        ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), sys.executable, "-c", toucher],
        capture_output=True, timeout=300,
    )
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-500:])
    events = dict(line.split() for line in (child_cgroup / "memory.events").read_text().splitlines())
    assert int(events["oom_kill"]) >= 1, events
    assert int((child_cgroup / "memory.peak").read_text()) >= 100 << 20


def test_the_projects_python_imports_loadmaster_and_sees_v2() -> None:
    probe = (
        "import json, loadmaster\n"
        "from loadmaster.node.measure import cgroupfs\n"
        "print(json.dumps({'file': loadmaster.__file__, 'unified': cgroupfs.own_unified_dir(),"
        " 'memory_v1': cgroupfs.own_dir('memory'), 'can_create': cgroupfs.can_create_child('unified')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    view = json.loads(out.stdout)
    assert view["memory_v1"] is None  # cgroup_no_v1=all: no v1 hierarchy in the VM
    assert view["unified"] == str(_own_v2_dir())
    assert view["file"].endswith(os.path.join("loadmaster", "__init__.py"))
    # Root may create children of its own cgroup; so may the delegated user, in its leaf's parent
    # only (its own leaf holds its processes), so only root's answer is fixed here.
    if os.geteuid() == 0:
        assert view["can_create"] is True
