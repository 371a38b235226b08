"""A node's environments under a disk budget: least recently used out first, never one in use.

Real wheel sets built into one environment root; "in use" is held by another
process of the node (a child that built it and keeps it until the test lets
it go), so the lock is tested across processes, as a node runtime and its
zygote hold it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadmaster.deps import build, dists, evict, pack
from loadmaster.deps.source import LocalSource
from tests.deps_fixtures.userdir import tiny_site

HOLDER = """
import sys
from loadmaster.deps import build
from loadmaster.deps.source import LocalSource
env = build.ensure(sys.argv[1], LocalSource(sys.argv[2]), sys.argv[3])
print(env.method, flush=True)
sys.stdin.read()  # holds the environment until the test closes our stdin
"""


@pytest.fixture
def sets(tmp_path: Path) -> list[str]:
    """Three wheel sets of three small packages (their keys), packed into ``tmp_path/c``."""
    keys = []
    for name in ("pkga", "pkgb", "pkgc"):
        site = tiny_site(tmp_path / name, name)
        sys.path.insert(0, str(site))
        dists.forget()
        try:
            keys.append(pack.pack(dists.with_requirements([name]), str(tmp_path / "c")).key)
        finally:
            sys.path.remove(str(site))
            dists.forget()
    return keys


def _built(root: Path) -> set[str]:
    return {key for _, _, key in evict.environments(str(root))}


def test_least_recently_used_environments_go_first_and_never_one_in_use(tmp_path: Path, sets: list[str]) -> None:
    a, b, c = sets
    root, source = tmp_path / "envs", LocalSource(str(tmp_path / "c"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, a, str(tmp_path / "c"), str(root)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "unpack"  # a: built, held there
        eb = build.ensure(b, source, str(root))
        eb.release()  # b: built after a, used by nobody now
        one = max(size for _, size, _ in evict.environments(str(root)))
        assert _built(root) == {a, b}
        # Room for two: building c must evict one. a is the least recently used, but in use: b goes.
        ec = build.ensure(c, source, str(root), budget=2 * one + one // 2)
        assert _built(root) == {a, c}
        assert not (root / b).exists() and (root / a / "site" / "pkga").is_dir()
        # b is built again when asked for; now c (released) is the oldest nobody holds: it goes.
        ec.release()
        again = build.ensure(b, source, str(root), budget=2 * one + one // 2)
        assert again.built and _built(root) == {a, b}
        again.release()
    finally:
        if holder.stdin is not None:
            holder.stdin.close()
        holder.wait(60)
    # The holder has let go: a (least recently used) can go now.
    assert evict.evict(str(root), one + one // 2) == [a]
    assert _built(root) == {b}


def test_a_warm_use_makes_an_environment_recent_and_the_budget_comes_from_the_environment(
        tmp_path: Path, sets: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = sets
    root, source = str(tmp_path / "envs"), LocalSource(str(tmp_path / "c"))
    build.ensure(a, source, root).release()
    build.ensure(b, source, root).release()
    os.utime(os.path.join(root, a, evict.READY), (1, 1))  # a: long unused ...
    os.utime(os.path.join(root, b, evict.READY), (2, 2))
    warm = build.ensure(a, source, root)  # ... until now
    assert warm.method == "warm"
    warm.release()
    one = max(size for _, size, _ in evict.environments(root))
    monkeypatch.setenv(evict.BUDGET_ENV, str(2 * one + one // 2))
    build.ensure(c, source, root).release()
    assert _built(Path(root)) == {a, c}  # b was the least recently used


def pkga_value(n: int) -> str:
    import pkga  # type: ignore[import-not-found]

    return f"{pkga.VALUE}:{n}"


def test_a_node_runtime_holds_the_environment_its_zygote_runs_in(tmp_path: Path, sets: list[str]) -> None:
    import pickle

    import cloudpickle

    from loadmaster.deps.nodecheck import ALLOC, _run
    from loadmaster.node.orders import NodeConfig, Order, OrderKind
    from loadmaster.node.runtime import NodeRuntime

    a = sets[0]
    root = str(tmp_path / "envs")
    rt = NodeRuntime(NodeConfig(name="n", zygotes=1, ledger=False, deps_source=str(tmp_path / "c"), env_root=root))
    try:
        done, _ = _run(rt, Order(1, 1, OrderKind.FUNCTION, 1, cloudpickle.dumps(pkga_value),
                                 pickle.dumps(((3,), {})), ALLOC, env=a))
        assert done.status == 0, done.payload
        assert evict.evict(root, 0) == [] and _built(Path(root)) == {a}  # its zygote runs in it: kept
    finally:
        rt.close()
    assert evict.evict(root, 0) == [a] and _built(Path(root)) == set()  # the runtime has let go
