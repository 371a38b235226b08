"""Sandboxed tasks on whatever kernel this is (the VM's 6.1: Landlock ABI 2); prints JSON.

Usage: python older_kernel.py OUT_JSON SECRET_FILE (tests/test_vm.py)
"""

from __future__ import annotations

import json
import sys

import loadmaster
from loadmaster.node.sandbox import landlock


def read(path: str) -> str:
    try:
        with open(path) as fh:
            return "read " + fh.read()
    except OSError as exc:
        return f"denied errno {exc.errno}"


def main(out: str, secret: str) -> None:
    result: dict[str, object] = {"kernel_abi": landlock.abi_version()}
    with loadmaster.Executor(history=":memory:") as ex:
        f = ex.submit(read, secret)
        result["read"] = f.result()
        g = ex.options(sandbox={"allow_connect_ports": [9]}).submit(read, secret)
        result["read_ports"] = g.result()
        for name, fut in (("default", f), ("ports", g)):
            assert fut.report is not None
            result[name] = fut.report.extra["sandbox"]
    with open(out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
