"""What a run imported comes back with its report, as names only: a task cannot make the node trust more.

The task process sends the top-level modules its run imported in its report
datagram (``protocol.child_report``); the zygote reads it as hostile bytes.
Checked on real zygotes through the node runtime, and on forged datagrams.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import cloudpickle
import pytest

from loadmaster.node.orders import Done, NodeConfig, Order, OrderKind
from loadmaster.node.process import protocol
from loadmaster.node.runtime import NodeRuntime
from loadmaster.spec import Resources
from tests.deps_fixtures.userdir import tiny_site


def import_named(name: str) -> str:
    importlib.import_module(name)
    import json  # the standard library: never reported

    return json.dumps(name)


def test_a_runs_new_imports_come_back_with_its_report(tmp_path: Path) -> None:
    site = tiny_site(tmp_path)
    sys.path.insert(0, str(site))
    try:
        rt = NodeRuntime(NodeConfig(name="n", workdir=str(tmp_path / "node"), zygotes=1, ledger=False))
    finally:
        sys.path.remove(str(site))
    try:
        fn = cloudpickle.dumps(import_named)
        payload = cloudpickle.dumps((("tinypkg",), {}))
        alloc = Resources(cores=1.0, memory=256 << 20)
        rt.submit([Order(1, 1, OrderKind.FUNCTION, 1, fn, payload, alloc)])
        done: list[Done] = []
        while not done:
            done = [e for e in rt.poll(30.0) if isinstance(e, Done)]
        (d,) = done
        assert d.status == 0
        assert d.measured.extra is not None and d.measured.extra["imported"] == ["tinypkg"]
    finally:
        rt.close()


def test_names_that_are_not_identifiers_are_dropped() -> None:
    blob = protocol.child_report(7, protocol.STATUS_OK, 0, b"x", imported=["numpy", "../../etc", "a b", "x" * 500])
    task_id, status, _, payload, extra, _ = protocol.read_child_report(blob)
    assert (task_id, status, payload) == (7, protocol.STATUS_OK, b"x")
    assert extra == {"imported": ["numpy"]}


def test_a_report_claiming_more_names_than_allowed_is_refused() -> None:
    blob = bytearray(protocol.child_report(7, protocol.STATUS_OK, 0, b"", imported=["a", "b"]))
    header = list(protocol.CHILD_HDR.unpack_from(blob))
    header[-1] = protocol.IMPORTED_MAX + 1
    protocol.CHILD_HDR.pack_into(blob, 0, *header)
    with pytest.raises(ValueError, match="imported"):
        protocol.read_child_report(bytes(blob))


def test_imports_and_a_sandbox_report_travel_together() -> None:
    box = {"enabled": True, "namespaces": "user", "workdir": "/w", "tmpdir": "/t", "notes": ["n1"]}
    blob = protocol.child_report(1, protocol.STATUS_RAISED, 0, b"", box, denied=["/etc/shadow"], imported=["pandas"])
    _, _, _, _, extra, _ = protocol.read_child_report(blob)
    assert extra is not None
    assert extra["imported"] == ["pandas"]
    assert extra["sandbox_denied"] == ["/etc/shadow"]
    assert extra["sandbox"]["notes"] == ["n1"]
