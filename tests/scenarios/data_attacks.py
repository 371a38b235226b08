"""Attacks of a sandboxed task on the node's handling of its declared outputs (run as root and as a user).

``python tests/scenarios/data_attacks.py OUT.json SCRATCH``: victims in
SCRATCH (a 0600 file, a 0700 directory holding a 0600 file), tasks of a
default ``Executor`` whose ``Output`` is a symlink to a victim, or a
directory holding one; writes what an outside observer sees to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys

import loadmaster
from loadmaster import Output


def link(out: object, target: str) -> str:
    os.symlink(target, os.fspath(out))  # type: ignore[call-overload]
    return "linked"


def link_inside(out: object, target: str) -> str:
    os.mkdir(os.fspath(out))  # type: ignore[call-overload]
    os.symlink(target, os.path.join(os.fspath(out), "inside"))  # type: ignore[call-overload]
    return "linked"


def mode(path: str) -> str:
    return oct(os.lstat(path).st_mode & 0o7777)


def main() -> None:
    out_json, scratch = sys.argv[1], sys.argv[2]
    secret = os.path.join(scratch, "secret")
    with open(secret, "w") as fh:
        fh.write("the node's secret\n")
    os.chmod(secret, 0o600)
    secret_dir = os.path.join(scratch, "secret-dir")
    os.mkdir(secret_dir, 0o700)
    with open(os.path.join(secret_dir, "f"), "w") as fh:
        fh.write("x")
    os.chmod(os.path.join(secret_dir, "f"), 0o600)
    back = os.path.join(scratch, "back")
    os.mkdir(back)
    res: dict[str, object] = {}
    mine = os.path.join(scratch, f"node-{os.getuid()}")  # the cache's parent: this user's alone
    os.mkdir(mine, 0o700)
    with loadmaster.Executor(cores=1, memory="1GiB", history=":memory:", ledger=False,
                             cache_dir=os.path.join(mine, "cache"), workdir=os.path.join(mine, "work")) as ex:
        for name, fn, dest, target in (("file", link, "f.txt", secret), ("dir", link, "d", secret_dir),
                                       ("inside", link_inside, "i", secret)):
            try:
                res[name] = ex.submit(fn, Output(os.path.join(back, dest)), target).result(timeout=120)
            except Exception as exc:
                res[name] = f"raised {type(exc).__name__}: {exc}"[:400]
    res["modes"] = [mode(secret), mode(secret_dir), mode(os.path.join(secret_dir, "f"))]
    copied = []
    for dirpath, _dirs, files in os.walk(back):
        for f in files:
            with open(os.path.join(dirpath, f)) as fh:
                copied.append(fh.read())
    res["copied_back"] = copied
    with open(out_json, "w") as fh:
        json.dump(res, fh)


if __name__ == "__main__":
    main()
