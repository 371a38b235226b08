"""Declared files on the Dask backend: two workers of this host, one node runtime beside them.

A real ``LocalCluster`` (worker processes with nannies). The node runtime runs
in the node's host process (``backends/dask/host.py``), outside the workers: it
stages the ``File`` into its cache from the submitter's path (same host), and
copies the ``Output`` back; no file goes through Dask's data plane.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

from loadmaster import Executor, File, Output  # noqa: E402

pytestmark = pytest.mark.dask

START_S = 120


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None, death_timeout=START_S)
    try:
        yield c
    finally:
        c.close()


def reverse(src: Any, dst: Any) -> str:
    with open(src, "rb") as fh:
        data = fh.read()
    with open(dst, "wb") as fh:
        fh.write(data[::-1])
    return os.fspath(src)


def test_files_and_outputs_on_dask_workers_of_this_host(cluster: object, tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(300_000))
    copy = tmp_path / "elsewhere" / "same-bytes.bin"
    copy.parent.mkdir()
    shutil.copyfile(src, copy)
    cache = tmp_path / "cache"
    with Executor(history=":memory:", sandbox=False, backend=cluster, cache_dir=str(cache)) as ex:
        first = ex.submit(reverse, File(src), Output(tmp_path / "out-1"))
        staged = first.result(timeout=START_S)
        second = ex.submit(reverse, File(copy), Output(tmp_path / "out-2"))
        second.result(timeout=START_S)
    assert staged.startswith(str(cache / "objects"))
    assert (tmp_path / "out-1").read_bytes() == src.read_bytes()[::-1] == (tmp_path / "out-2").read_bytes()
    r1, r2 = first.report, second.report
    assert r1 is not None and r1.data is not None and r2 is not None and r2.data is not None
    assert r1.data.bytes_fetched == 300_000 and r1.input_size == 300_000
    assert (r2.data.bytes_fetched, r2.data.cache_hits) == (0, 1)
