"""Dependencies shipped to a worker that runs from a bare environment (Python, loadmaster, Dask only).

The client (this process) finds what a function needs, packs the wheel set
once, and a node runtime started by the bare venv's interpreter
(``python -m loadmaster.deps.nodecheck``) builds the environment from it and
runs the function in a zygote of that environment: numpy (imported at module
level as ``np``), a small pure-Python package installed in the client's
environment only, and a helper module from the user's own directory.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from loadmaster.deps import build, dists, find, pack
from tests.deps_fixtures.bare import make_bare_venv
from tests.deps_fixtures.userdir import on_client_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = make_bare_venv(tmp_path_factory.mktemp("bare") / "venv")
    probe = subprocess.run([str(python), "-c", "import numpy"], env=_bare_env(), capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'numpy'" in probe.stderr
    return python


def _bare_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env


@pytest.fixture
def user_code(tmp_path: Path) -> Iterator[object]:
    with on_client_path(tmp_path) as work:
        yield work


def _run_node(python: Path, spec: dict, tmp_path: Path) -> dict:
    path = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run([str(python), "-m", "loadmaster.deps.nodecheck", str(path)], env=_bare_env(),
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_bare_worker_runs_numpy_a_package_and_a_helper_after_shipping(
        bare_python: Path, user_code: object, tmp_path: Path) -> None:
    fn = user_code.task  # type: ignore[attr-defined]
    needs = dists.resolve(find.find_modules(fn))
    assert set(needs.dists) >= {"numpy", "tinypkg"}
    assert set(needs.user) == {"work", "helper"}
    assert "json" in needs.stdlib and not needs.unknown
    cache = tmp_path / "wheelsets"
    packed = pack.pack(needs, str(cache))
    assert not packed.cached and pack.pack(needs, str(cache)).cached  # packed once
    # As the executor's orders do: the set is a declared input, staged into the node's cache.
    spec = {"source": str(cache), "env_root": str(tmp_path / "envs"), "key": packed.key, "declare": True,
            "cache_dir": str(tmp_path / "node-cache"), "fn": cloudpickle.dumps(fn).hex(), "args": [[10], [4]]}
    out = _run_node(bare_python, spec, tmp_path)
    assert out["python"] == str(bare_python)
    first, second = out["tasks"]
    assert first["status"] == 0, first["result"]
    assert (first["fetched"], second["fetched"]) == (packed.size, None)  # cached once; then not staged at all
    assert (tmp_path / "node-cache" / "objects" / packed.digest[:2] / packed.digest).is_file()
    assert json.loads(first["result"]) == [45.0, 20, "1.0", "site"]
    assert json.loads(second["result"])[0] == 6.0
    env = out["environment"]
    assert env["built"] and env["site"].startswith(str(tmp_path / "envs" / packed.key))
    # A second node process on the same machine finds it built: warm, not rebuilt.
    again = _run_node(bare_python, spec | {"args": [[3]]}, tmp_path)
    assert again["environment"]["built"] is False and again["environment"]["method"] == "warm"
    assert json.loads(again["tasks"][0]["result"])[0] == 3.0


def test_without_the_environment_the_bare_worker_cannot_import_numpy(
        bare_python: Path, user_code: object, tmp_path: Path) -> None:
    # The same function, run in an environment that holds only the user's files: it must fail
    # on numpy. This is what makes the test above able to fail.
    fn = user_code.task  # type: ignore[attr-defined]
    needs = dists.resolve(find.find_modules(fn))
    needs.dists = {k: v for k, v in needs.dists.items() if k != "numpy"}
    packed = pack.pack(needs, str(tmp_path / "ws"))
    out = _run_node(bare_python, {"source": str(tmp_path / "ws"), "env_root": str(tmp_path / "envs"),
                                  "key": packed.key, "fn": cloudpickle.dumps(fn).hex(), "args": [[3]]}, tmp_path)
    assert out["tasks"][0]["status"] != 0
    assert "numpy" in out["tasks"][0]["result"]


def test_a_missing_wheel_set_fails_the_order_not_the_node(bare_python: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = _run_node(bare_python, {"source": str(tmp_path / "empty"), "env_root": str(tmp_path / "envs"),
                                  "key": "0123456789abcdef0123", "fn": cloudpickle.dumps(len).hex(),
                                  "args": [["abc"]]}, tmp_path)
    assert out["tasks"][0]["status"] == 3  # BROKEN: said in the Done, the node lives on
    assert "is not in" in out["tasks"][0]["result"]
    assert build.find_uv is not None
