"""Dependencies shipped to emulated bare nodes that see none of the client's files, through the data layer.

Three emulated nodes (``tests/cluster/netnodes.py``: network namespaces, a
Dask worker each, no nanny), their workers run by a venv holding only Python,
loadmaster and Dask (built offline, ``tests/deps_fixtures/bare.py``), each in
a mount namespace of its own where the client's wheel-set cache, the user's
directory, the small package's site and numpy's own directory are covered by
an empty tmpfs (``EmulatedNodes(hide=)``): the wheel set can reach a node only
through the data layer's transfers. The client submits, with
``Executor(deps=True)``, a function that uses numpy (``np`` at module level),
a small package installed only on the client's path and a helper module from
the user's directory. Each node receives the wheel set once (its reports'
staged bytes, its network link), the submitter's server sends it about once
(a chain through the nodes, not a star), and each node builds the
environment once, in its own cache directory.
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

pytestmark = [pytest.mark.slow, pytest.mark.netnodes, pytest.mark.dask, pytest.mark.timeout(900)]

distributed = pytest.importorskip("distributed")
netnodes = pytest.importorskip("tests.cluster.netnodes")
np = pytest.importorskip("numpy")

NODES = 3


@pytest.fixture
def user_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    monkeypatch.setenv("LOADMASTER_DEPS_CACHE", str(tmp_path / "wheelsets"))
    with on_client_path(tmp_path) as work:
        yield work


def test_bare_nodes_without_the_clients_files_get_the_wheel_set_once_each_through_the_data_layer(
        user_code: object, tmp_path: Path) -> None:
    why = netnodes.unavailable_reason()
    if why:
        pytest.skip(why)
    python = make_bare_venv(tmp_path / "bare")
    probe = subprocess.run([str(python), "-c", "import numpy"], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert probe.returncode != 0
    sets, udir, site = tmp_path / "wheelsets", tmp_path / "user", tmp_path / "tiny-site"
    sets.mkdir()
    numpy_dir = os.path.dirname(np.__file__)
    hidden = [str(sets), str(udir), str(site), numpy_dir]
    with netnodes.EmulatedNodes(NODES, rate_mbit=None, python=str(python), base_dir=tmp_path / "nodes",
                                hide=hidden) as nodes:
        client = nodes.client()
        # The premise: no node sees the client's wheel sets, the user's files, the package or numpy.
        # (os.path.exists: the workers cannot import this test module)
        for p in (udir / "helper.py", site / "tinypkg" / "__init__.py", Path(numpy_dir) / "__init__.py"):
            assert p.exists() and not any(client.run(os.path.exists, str(p)).values()), p
        with Executor(backend=client, deps=True, sandbox=False, ledger=False,
                      history=str(tmp_path / "h.sqlite")) as ex:
            whole = ex.node.cores  # one task fills a node: the first three go to three nodes
            rx0 = [nodes.link_counters(i).rx_bytes for i in range(NODES)]
            first = [ex.options(resources={"cores": whole}).submit(user_code.task, n)  # type: ignore[attr-defined]
                     for n in range(2, 2 + NODES)]
            results = [json.loads(f.result(timeout=600)) for f in first]
            tars = list(sets.glob("*.tar"))
            assert len(tars) == 1 and not any(client.run(os.path.exists, str(tars[0])).values())
            rx = [nodes.link_counters(i).rx_bytes - r for i, r in enumerate(rx0)]
            later = [ex.submit(user_code.task, n) for n in range(5, 14)]  # type: ignore[attr-defined]
            results += [json.loads(f.result(timeout=300)) for f in later]
            sent = ex._transfers.server.bytes_sent
            plan = ex.deps._by_key  # type: ignore[union-attr]
            reports = [f.report for f in (*first, *later)]
    assert [r[0] for r in results] == [float(sum(range(n))) for n in (*range(2, 2 + NODES), *range(5, 14))]
    assert all(r[2:] == ["1.0", "site"] for r in results)  # tinypkg from the environment
    keys = {r.extra["environment"] for r in reports}
    assert len(keys) == 1
    (key,) = keys
    packed = plan[key].packed
    size = packed.size
    # Each node received the wheel set once, from the submitter or a peer, into its cache.
    got: dict[str, int] = {}
    for r in reports:
        for s in r.data.inputs if r.data is not None else ():  # None: built there already, not staged
            if s.digest == packed.digest:
                got[r.data.node] = got.get(r.data.node, 0) + s.bytes_copied
    assert sorted(got) == sorted(n.name for n in nodes) and all(v == size for v in got.values()), got
    assert all(size <= n < 1.5 * size for n in rx), f"bytes into each node: {rx}, the set is {size}"
    assert sent <= 1.1 * size, f"the submitter's server sent {sent / size:.2f}x the wheel set"
    for node in nodes:
        made = [p.name for p in (Path(node.dirs.cache) / "envs").iterdir()
                if not p.name.startswith(".") and p.is_dir()]
        assert made == [key]  # one environment, built once, no temporary left
