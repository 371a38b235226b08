"""Dependencies shipped to emulated nodes whose Dask workers run from a bare environment.

Two emulated nodes (``tests/cluster/netnodes.py``: network namespaces, a Dask
worker each, no nanny), their workers run by a venv holding only Python,
loadmaster and Dask (built offline, ``tests/deps_fixtures/bare.py``). The
client submits, with ``Executor(deps=True)``, a function that uses numpy
(``np`` at module level), a small package installed only on the client's
path and a helper module from the user's directory. Each node builds the
environment once, in its own cache directory, and every task's report names
it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadmaster import Executor
from tests.deps_fixtures.bare import make_bare_venv
from tests.deps_fixtures.userdir import on_client_path

pytestmark = [pytest.mark.slow, pytest.mark.netnodes, pytest.mark.dask]

distributed = pytest.importorskip("distributed")
netnodes = pytest.importorskip("tests.cluster.netnodes")


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("LOADMASTER_DEPS_CACHE", str(tmp_path / "wheelsets"))
    with on_client_path(tmp_path) as work:
        yield work


def test_emulated_bare_nodes_run_numpy_a_package_and_a_helper_after_shipping(
        user_code: object, tmp_path: Path) -> None:
    why = netnodes.unavailable_reason()
    if why:
        pytest.skip(why)
    python = make_bare_venv(tmp_path / "bare")
    probe = subprocess.run([str(python), "-c", "import numpy"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert probe.returncode != 0
    with netnodes.EmulatedNodes(2, rate_mbit=None, python=str(python), base_dir=tmp_path / "nodes") as nodes:
        client = nodes.client()
        with Executor(backend=client, deps=True, sandbox=False, ledger=False,
                      history=str(tmp_path / "h.sqlite")) as ex:
            futs = [ex.submit(user_code.task, n) for n in range(2, 14)]  # type: ignore[attr-defined]
            results = [json.loads(f.result(timeout=300)) for f in futs]
            reports = [f.report for f in futs]
    assert [r[0] for r in results] == [float(sum(range(n))) for n in range(2, 14)]
    assert all(r[2:] == ["1.0", "site"] for r in results)  # tinypkg from the environment
    keys = {r.extra["environment"] for r in reports}
    assert len(keys) == 1
    (key,) = keys
    hosts = {r.host for r in reports}
    built = []
    for node in nodes:
        root = Path(node.dirs.cache) / "envs"
        if root.is_dir():
            made = [p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir()]
            assert [p.name for p in made] == [key]  # one environment, no temporary left
            built.append(node.name)
    assert len(built) >= 1 and len(hosts) >= 1
