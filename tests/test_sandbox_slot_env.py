"""A namespace slot's cleanup leaves the Python environment bound back in its /tmp alone.

When the interpreter, a venv or the checkout lives under ``/tmp`` (a fresh clone there, as
CI makes), every slot binds it back at its own path over the slot's private ``/tmp``. The
zygote empties the slot's ``/tmp`` after each task, reaching it from outside through the
tmpfs it holds: that walk used to go down the bind and unlink the checkout's files (inside
the cgroup-v2 VM it deleted ``out/vm``'s files on the host and took the run's whole time).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from loadmaster.node.sandbox.cleanup import collect
from loadmaster.node.sandbox.namespaces import NamespaceUnavailable, make_slot
from loadmaster.node.sandbox.spec import SandboxDirs


def test_emptying_a_slots_tmp_keeps_the_environment_bound_there() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="lm-env-") as env, \
            tempfile.TemporaryDirectory(prefix="lm-slot-") as base:
        pkg = Path(env) / "site-packages" / "pkg"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("VALUE = 1\n")
        tmp, shm, work = (os.path.join(base, d) for d in ("tmp", "shm", "work"))
        for d in (tmp, shm, work):
            os.mkdir(d, 0o700)
        try:
            slot = make_slot(tmp, shm, keep=[env], workdir=work, tmp_size=64 << 20)
        except NamespaceUnavailable as exc:
            pytest.skip(f"no namespace slot here: {exc}")
        try:
            seen = Path(slot.tmpdir) / os.path.relpath(env, "/tmp")
            assert (seen / "site-packages" / "pkg" / "__init__.py").exists()  # bound back in the slot
            (Path(slot.tmpdir) / "left-by-task").write_text("x")
            left = collect(SandboxDirs(base, work, slot.tmpdir, shm=slot.shmdir, slot=slot))
            assert (pkg / "__init__.py").read_text() == "VALUE = 1\n"
            assert (seen / "site-packages" / "pkg" / "__init__.py").exists()
            assert not (Path(slot.tmpdir) / "left-by-task").exists()  # the task's file is still removed
            assert left.files == 1, left
        finally:
            slot.close()
