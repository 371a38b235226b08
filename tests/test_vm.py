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


def test_an_older_landlock_still_runs_sandboxed_tasks_and_says_what_is_in_force(tmp_path: Path) -> None:
    """Debian's 6.1 has Landlock ABI 2: file rules, no TCP rules (ABI 4), no scoping (ABI 6).
    Tasks run; file rules hold; each report names what was in force and what was not."""
    secret = Path("/var/tmp") / f"lm-secret-{uuid.uuid4().hex[:8]}"  # outside the private /tmp
    secret.write_text("s3cret")
    secret.chmod(0o644)  # ordinary permissions allow it: only Landlock stops it
    out = tmp_path / "older.json"
    tmp_path.chmod(0o755)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{repo / 'src'}"}
    try:
        proc = subprocess.run([sys.executable, str(repo / "tests" / "scenarios" / "older_kernel.py"), str(out),
                               str(secret)], env=env, capture_output=True, text=True, timeout=600)
    finally:
        secret.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    abi = got["kernel_abi"]
    if not 0 < abi < 4:
        pytest.skip(f"this VM's kernel has Landlock ABI {abi}: not the older kernel this test is about")
    for name in ("default", "ports"):
        box = got[name]
        assert box["enabled"] and box["landlock_abi"] == abi and box["fs_rules"], box
        assert not box["network_rules"] and not box["scoped"], box  # not on ABI 2
    assert got["read"] == got["read_ports"] == "denied errno 13", got
    # network=False: a loopback-only network namespace stands in for the missing TCP rules...
    assert got["default"]["net_namespace"], got["default"]
    assert not any("TCP" in n for n in got["default"]["notes"]), got["default"]
    # ...but a task allowed one port keeps the node's network, which ABI 2 cannot narrow: said.
    assert not got["ports"]["net_namespace"], got["ports"]
    assert any("TCP" in n for n in got["ports"]["notes"]), got["ports"]


def test_the_node_runtime_puts_its_task_cgroups_in_the_delegated_subtree_or_the_root() -> None:
    """The real hierarchy (the fake ones: tests/test_cgroup_delegation.py): as nobody the
    delegated lm-user, as root the root cgroup; and slots can be made there."""
    from loadmaster.node.measure.cgroup_slots import SlotPool, slot_parent

    parent = slot_parent()
    assert parent == os.environ.get("LOADMASTER_VM_CGROUP", str(CG))
    pool = SlotPool.create(parent)
    assert pool is not None and pool.method == "cgroup-v2"
    try:
        slot = pool.acquire(64 << 20)
        assert Path(slot.path).parent == Path(parent)
        assert (Path(slot.path) / "memory.max").read_text().strip() == str(64 << 20)
        pool.release(slot)
    finally:
        pool.close()
