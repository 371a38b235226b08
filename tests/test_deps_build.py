"""Packing a wheel set once on the submitting side, building it once per node.

Real wheel sets of real distributions (a small pure-Python package made in
the test, and ``tqdm``), real ``uv`` where installed, real concurrent
processes racing to build one environment.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from loadmaster.deps import build, dists, pack
from loadmaster.deps.source import LocalSource
from loadmaster.errors import DependencyError
from tests.deps_fixtures.userdir import tiny_site, user_dir


@pytest.fixture
def tiny(tmp_path: Path) -> object:
    site = tiny_site(tmp_path)
    sys.path.insert(0, str(site))
    dists.forget()
    yield dists.with_requirements(["tinypkg"])
    sys.path.remove(str(site))
    dists.forget()


def test_the_key_names_exact_versions_and_the_users_file_contents(tmp_path: Path, tiny: dists.Needs) -> None:
    key = pack.env_key(tiny)
    assert key == pack.env_key(dists.with_requirements(["tinypkg"]))
    other = dists.Needs(dists={"tinypkg": dists.Dist("tinypkg", "1.1", "")})
    assert pack.env_key(other) != key
    udir = user_dir(tmp_path / "u")
    helper = dists.UserModule("helper", str(udir / "helper.py"), "")
    with_user = dists.Needs(dists=dict(tiny.dists), user={"helper": helper})
    first = pack.env_key(with_user)
    (udir / "helper.py").write_text("def double(x):\n    return x + x\n")
    assert pack.env_key(with_user) != first


def test_a_wheel_set_is_a_plain_tar_packed_once(tmp_path: Path, tiny: dists.Needs) -> None:
    p = pack.pack(tiny, str(tmp_path / "c"))
    assert not p.cached and p.wheels == ("tinypkg-1.0-py3-none-any.whl",)
    with open(p.path, "rb") as fh:
        assert fh.read(2) != b"\x1f\x8b"  # not gzip
    with tarfile.open(p.path, "r:") as tar:
        manifest = json.load(tar.extractfile(pack.MANIFEST))  # type: ignore[arg-type]
    assert manifest["key"] == p.key and manifest["dists"] == {"tinypkg": "1.0"}
    mtime = os.stat(p.path).st_mtime_ns
    again = pack.pack(tiny, str(tmp_path / "c"))
    assert again.cached and os.stat(p.path).st_mtime_ns == mtime


def test_a_cached_wheel_is_used_as_it_is(tmp_path: Path, tiny: dists.Needs) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    marker = b"PK-not-really-rebuilt"
    (wheels / "tinypkg-1.0-py3-none-any.whl").write_bytes(marker)
    p = pack.pack(tiny, str(tmp_path / "c"), wheel_dirs=(str(wheels),))
    with tarfile.open(p.path) as tar:
        assert tar.extractfile("tinypkg-1.0-py3-none-any.whl").read() == marker  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["unpack", "uv"])
def test_an_environment_is_built_importable_compiled_and_then_warm(
        tmp_path: Path, tiny: dists.Needs, method: str) -> None:
    if method == "uv" and build.find_uv() is None:
        pytest.skip("uv is not installed (pip install 'loadmaster[deps]')")
    needs = dists.with_requirements(["tinypkg", "tqdm"], base=frozenset())
    p = pack.pack(needs, str(tmp_path / "c"))
    env = build.ensure(p.key, LocalSource(str(tmp_path / "c")), str(tmp_path / "envs"), method=method)
    assert env.built and env.method == method
    assert (Path(env.site) / "tinypkg" / "__pycache__").is_dir()  # compiled once, at build
    out = subprocess.run([sys.executable, "-I", "-c",
                          "import sys; sys.path.insert(0, sys.argv[1]); import tinypkg, tqdm; "
                          "print(tinypkg.__file__, tqdm.__file__)", env.site],
                         capture_output=True, text=True, check=True).stdout
    assert out.count(env.site) == 2
    warm = build.ensure(p.key, LocalSource(str(tmp_path / "c")), str(tmp_path / "envs"), method=method)
    assert not warm.built and warm.method == "warm" and warm.site == env.site


class CountingSource(LocalSource):
    """A LocalSource that appends a line to a file for each fetch (seen across processes)."""

    def __init__(self, directory: str, log: str) -> None:
        super().__init__(directory)
        self.log = log

    def fetch(self, key: str) -> str:
        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return super().fetch(key)


def _ensure_in_child(key: str, directory: str, log: str, root: str, start: object, out: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    env = build.ensure(key, CountingSource(directory, log), root, method="unpack")
    out.put((env.built, env.site))  # type: ignore[attr-defined]


def test_concurrent_workers_build_one_environment_once(tmp_path: Path, tiny: dists.Needs) -> None:
    p = pack.pack(dists.with_requirements(["tinypkg", "tqdm"], base=frozenset()), str(tmp_path / "c"))
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    log = str(tmp_path / "fetches")
    procs = [ctx.Process(target=_ensure_in_child,
                         args=(p.key, str(tmp_path / "c"), log, str(tmp_path / "envs"), start, out))
             for _ in range(4)]
    for pr in procs:
        pr.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for pr in procs:
        pr.join(30)
    assert sorted(r[0] for r in results) == [False, False, False, True]  # built once, three found it warm
    assert len({r[1] for r in results}) == 1
    assert len(Path(log).read_text().split()) == 1  # the node got the wheel set once
    assert [n for n in os.listdir(tmp_path / "envs") if n.startswith(".")] == []  # no temp dir left


def test_a_broken_wheel_set_leaves_no_environment(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    key = "ab" * 10
    with tarfile.open(tmp_path / "c" / f"{key}.tar", "w") as tar:
        data = json.dumps({"key": key, "wheels": ["missing-1.0-py3-none-any.whl"]}).encode()
        info = tarfile.TarInfo(pack.MANIFEST)
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
    with pytest.raises((DependencyError, OSError)):
        build.ensure(key, LocalSource(str(tmp_path / "c")), str(tmp_path / "envs"), method="unpack")
    assert sorted(os.listdir(tmp_path / "envs")) == [f"{key}.lock", f"{key}.use"]  # lock files only


def test_a_key_that_is_not_hex_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DependencyError, match="not an environment key"):
        build.ensure("../etc", LocalSource(str(tmp_path)), str(tmp_path / "envs"))
