"""The HTML report's transfers view: per node, each input fetched, with its bytes and source.

A real run on two node runtimes with their own caches (the test backend of
``test_data_locality.py``): a task held on node ``a`` sends the first reader
to ``b``, which fetches a 2 MiB input from the submitter's file; then ``a``,
free, takes a reader of a 3 MiB input; a third reader of the first input
goes to ``b``, which holds it (a cache hit, nothing moves). The page written
from those reports has a lane per node with each fetch's bytes and source.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from loadmaster import Executor, File
from loadmaster.report.html import RunView, write_report
from tests.test_data_locality import TwoNodes, _released, checksum, held, release

MiB = 1 << 20


def test_the_report_shows_each_nodes_transfers_with_bytes_and_source(tmp_path: Path) -> None:
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(2 * MiB))
    big.write_bytes(os.urandom(3 * MiB))
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    one = {"cores": 1}
    with Executor(backend=TwoNodes(tmp_path), history=":memory:", sandbox=False) as ex, _released(gate):
        blocker = held(ex, tmp_path, gate)  # node a
        on_b = ex.options(resources=one).submit(checksum, File(small))  # a is held: b
        on_b.result(timeout=120)
        release(gate)
        blocker.result(timeout=120)
        on_a = ex.options(resources=one).submit(checksum, File(big))  # b holds small, not big: first fit, a
        on_a.result(timeout=120)
        hit = ex.options(resources=one).submit(checksum, File(small))  # b holds it
        hit.result(timeout=120)
        reports = [f.report for f in (blocker, on_b, on_a, hit)]
    assert all(r is not None for r in reports)
    assert [r.data.node for r in reports[1:]] == ["b", "a", "b"]  # type: ignore[union-attr]
    page = write_report(tmp_path / "report.html", [RunView(run_id=None, reports=tuple(reports))])  # type: ignore[arg-type]
    html = page.read_text()
    assert "Transfers over time, per node" in html
    bars = re.findall(r'<g class="transfer" data-node="([^"]+)" data-bytes="(\d+)" data-source="([^"]+)">', html)
    assert sorted(bars) == [("a", str(3 * MiB), "client"), ("b", str(2 * MiB), "client")]
    lanes = re.findall(r'<text [^>]*data-node="([^"]+)"', html)
    assert lanes == ["a", "b"]
    # The table: per node, fetches, bytes in, from where, cache hits.
    assert re.search(r"<td>a</td><td class=\"num\">1</td><td class=\"num\">3 MiB</td>"
                     r"<td>3 MiB from client</td><td class=\"num\">0</td>", html)
    assert re.search(r"<td>b</td><td class=\"num\">1</td><td class=\"num\">2 MiB</td>"
                     r"<td>2 MiB from client</td><td class=\"num\">1</td>", html)


def test_a_run_without_declared_files_has_no_transfers_view(tmp_path: Path) -> None:
    with Executor(history=":memory:", sandbox=False) as ex:
        fut = ex.submit(abs, -3)
        assert fut.result(timeout=120) == 3
        report = fut.report
    assert report is not None
    html = write_report(tmp_path / "r.html", [RunView(run_id=None, reports=(report,))]).read_text()
    assert "Transfers over time" not in html
