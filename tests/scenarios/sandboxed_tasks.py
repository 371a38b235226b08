"""Issue 5's acceptance checks through the Executor; prints JSON. Run as root and as an ordinary user.

Usage: python sandboxed_tasks.py OUT_JSON SECRET_FILE OUTPUT_DIR
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time

import loadmaster
from loadmaster.node.sandbox.policy import python_paths_under_tmp


def litter(mb: int) -> str:
    with open("/tmp/litter.bin", "wb") as fh:
        fh.write(b"x" * (mb << 20))
    with open("notes.txt", "w") as fh:
        fh.write("left behind")
    return os.environ["TMPDIR"]


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def write(path: str) -> str:
    with open(path, "w") as fh:
        fh.write("written")
    return path


def list_proc() -> int:
    return len(os.listdir("/proc"))


def mark_tmp(name: str) -> list[str]:
    with open(f"/tmp/{name}", "w") as fh:
        fh.write(name)
    time.sleep(0.5)
    # The Python environment, when it lives under /tmp, stays visible there.
    env = {p.split("/")[2] for p in python_paths_under_tmp() if p.startswith("/tmp/")}
    return sorted(e for e in os.listdir("/tmp") if e not in env)


def outcome(f: loadmaster.TaskFuture) -> str:
    try:
        return f"ok:{f.result(60)}"
    except loadmaster.TaskFailed as exc:
        cause = exc.__cause__  # EACCES from Landlock, or EROFS from the read-only view
        refused = isinstance(cause, PermissionError) or (isinstance(cause, OSError) and cause.errno == errno.EROFS)
        return "denied" if refused else f"failed:{exc}"


def main(out: str, secret: str, outdir: str) -> None:
    r: dict[str, object] = {}
    with loadmaster.Executor(history=":memory:") as ex:
        f = ex.submit(litter, 3)
        r["litter"] = f.result(60)
        assert f.report is not None
        box = f.report.extra["sandbox"]
        r["litter_report"] = box
        # Gone, or (a reused namespace slot's directory) empty.
        r["litter_root_gone"] = not os.path.exists(box["workdir"]) or not os.listdir(box["workdir"])
        r["read_secret"] = outcome(ex.submit(read, secret))
        r["read_secret_declared"] = outcome(ex.options(inputs=[secret]).submit(read, secret))
        target = os.path.join(outdir, "result.txt")
        r["write_undeclared"] = outcome(ex.submit(write, target))
        r["write_declared"] = outcome(ex.options(outputs=[target]).submit(write, target))
        r["list_proc"] = outcome(ex.submit(list_proc))
        r["list_proc_declared"] = outcome(ex.options(sandbox={"allow_read": ["/proc"]}).submit(list_proc))
        a, b = ex.submit(mark_tmp, "task-a"), ex.submit(mark_tmp, "task-b")
        r["tmp_a"], r["tmp_b"] = a.result(60), b.result(60)
    with open(out, "w") as fh:
        json.dump(r, fh)


if __name__ == "__main__":
    main(*sys.argv[1:4])
