"""Where the node runtime makes its cgroup v2 task slots: root, a delegated subtree, or nowhere.

``cgroup_slots.v2_parent`` reads ``/proc/self/cgroup`` and ``mountinfo`` and walks the
cgroup tree. Here it is pointed at a prepared tree (a fake ``/proc/self`` and a fake
``/sys/fs/cgroup`` of plain directories and files, laid out as systemd, Slurm and
``scripts/vm-run.sh --user`` lay them out), as root and, for where the delegation ends,
as the ordinary user of ``tests/unprivileged.py`` with part of the tree chowned to it.
The real hierarchy is checked inside the VM (``tests/test_vm.py``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadmaster.node.measure.cgroup_slots import v2_parent
from tests import unprivileged

HERE = os.path.dirname(os.path.abspath(__file__))
MOUNTINFO = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
SYSTEMD_USER = "user.slice/user-1000.slice/user@1000.service/app.slice/app-term.scope"
SLURM = "system.slice/slurmstepd.scope/job_7/step_0/user/task_0"


class FakeTree:
    """A fake ``/proc/self`` and cgroup v2 mount: ``cg(path, controllers=, subtree=, procs=)``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc = base / "proc"
        self.root = base / "cgroup"
        (self.proc / "self").mkdir(parents=True)
        (self.proc / "self" / "mountinfo").write_text(MOUNTINFO)
        self.root.mkdir()

    def cg(self, path: str, controllers: str = "memory pids", subtree: str = "", procs: str = "") -> Path:
        d = self.root / path if path else self.root
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.controllers").write_text(controllers + "\n")
        (d / "cgroup.subtree_control").write_text(subtree + "\n")
        (d / "cgroup.procs").write_text(procs)
        return d

    def chain(self, own: str, **kw: str) -> None:
        """Make every cgroup from the root down to ``own`` (with ``kw`` for each), and sit in ``own``."""
        parts = own.split("/")
        for i in range(len(parts) + 1):
            self.cg("/".join(parts[:i]), **kw)
        self.cg(own, procs="4242\n")
        (self.proc / "self" / "cgroup").write_text(f"0::/{own}\n")

    def parent(self) -> str | None:
        return v2_parent(proc_root=str(self.proc), cgroup_root=str(self.root))


@pytest.fixture
def tree() -> Iterator[FakeTree]:
    d = tempfile.mkdtemp(prefix="lm-fake-cgroup-", dir="/tmp")
    os.chmod(d, 0o755)  # the ordinary user walks it too
    try:
        yield FakeTree(Path(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_root_of_the_hierarchy_enables_memory_for_its_children(tree: FakeTree) -> None:
    """Root in a VM or a container (its cgroup is the mount's root): slots go right there."""
    tree.cg("", procs="1\n")
    (tree.proc / "self" / "cgroup").write_text("0::/\n")
    assert tree.parent() == str(tree.root)
    assert (tree.root / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_the_parent_that_hands_memory_down_holds_the_slots(tree: FakeTree) -> None:
    """vm-run.sh --user's layout: the process sits in lm-user/init, lm-user hands memory down."""
    tree.chain("lm-user/init")
    tree.cg("lm-user", subtree="memory pids")
    assert tree.parent() == str(tree.root / "lm-user")


def test_systemd_user_delegation_uses_user_service(tree: FakeTree) -> None:
    """Under systemd the user's shell sits in app.slice/<scope>; user@UID.service hands memory down."""
    tree.chain(SYSTEMD_USER)
    tree.cg("user.slice/user-1000.slice/user@1000.service", subtree="memory pids")
    assert tree.parent() == str(tree.root / "user.slice/user-1000.slice/user@1000.service")


def test_nearest_cgroup_without_processes_gets_memory_enabled(tree: FakeTree) -> None:
    """Nothing hands memory down yet: the nearest ancestor that holds no processes itself
    gets ``+memory +pids``; its parent (which has processes of its own) is left alone."""
    tree.chain(SLURM)
    tree.cg("system.slice/slurmstepd.scope/job_7/step_0", procs="77\n")
    assert tree.parent() == str(tree.root / "system.slice/slurmstepd.scope/job_7/step_0/user")
    assert (tree.root / "system.slice/slurmstepd.scope/job_7/step_0/user/cgroup.subtree_control").read_text() \
        == "+memory +pids"
    assert (tree.root / "system.slice/slurmstepd.scope/job_7/step_0/cgroup.subtree_control").read_text() == "\n"


def test_no_memory_controller_means_no_cgroup_v2_slots(tree: FakeTree) -> None:
    tree.chain(SYSTEMD_USER, controllers="cpu pids")
    assert tree.parent() is None


def test_a_cgroup_v1_only_host_has_no_v2_parent(tree: FakeTree) -> None:
    (tree.proc / "self" / "mountinfo").write_text(
        "31 24 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    (tree.proc / "self" / "cgroup").write_text("4:memory:/\n")
    assert tree.parent() is None


def _parent_as_user(tree: FakeTree) -> str | None:
    reason = unprivileged.skip_reason()
    if reason:
        pytest.skip(reason)
    script = os.path.join(HERE, "scenarios", "v2_parent.py")
    proc = unprivileged.run_as_user(script, str(tree.proc), str(tree.root), env={"PYTHONPATH": os.path.join(
        os.path.dirname(HERE), "src")})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _give(d: Path, user: str) -> None:
    """Delegate ``d`` to ``user`` as systemd does: the directory and its three delegation files."""
    pw = pwd.getpwnam(user)
    for p in (d, d / "cgroup.procs", d / "cgroup.subtree_control", d / "cgroup.threads"):
        if not p.exists():
            p.write_text("")
        os.chown(p, pw.pw_uid, pw.pw_gid)


def test_an_ordinary_user_stops_where_its_delegation_ends(tree: FakeTree) -> None:
    """user-1000.slice hands memory down but belongs to root: not used. Once user@1000.service
    is delegated (chowned), it is, with memory enabled there."""
    tree.chain(SYSTEMD_USER)
    tree.cg("user.slice/user-1000.slice", subtree="memory pids")
    assert _parent_as_user(tree) is None  # nothing writable: the fallback (sampling)
    user = unprivileged.unprivileged_user()
    assert user is not None
    service = tree.root / "user.slice/user-1000.slice/user@1000.service"
    for d in (service, service / "app.slice", service / "app.slice" / "app-term.scope"):
        _give(d, user)
    assert _parent_as_user(tree) == str(service / "app.slice")
    assert (service / "app.slice" / "cgroup.subtree_control").read_text() == "+memory +pids"
