"""A sandboxed task's declared outputs are hostile: a symlink must not make the node act on its target.

Before the fix, an ``Output`` that the task made a symlink to ``/etc/shadow``
(or a directory holding one) was hashed through the link, made read-only
with ``chmod`` (which follows links: the node, as root, changed the target's
mode to 0444, a directory's whole tree to 0555/0444) and copied to the
submitter's path at 0644. Runs as root and as an ordinary user
(``tests/unprivileged.py``); what is checked is what an observer sees: the
victims' modes and what arrived at the submitter's paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from tests import unprivileged

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux's")

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scenarios", "data_attacks.py")
ENV = {"PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.path.join(os.path.dirname(HERE), "src")}


@pytest.fixture(scope="module", params=["root", "user"])
def seen(request: pytest.FixtureRequest) -> dict[str, Any]:
    scratch = tempfile.mkdtemp(prefix="lm-data-atk-", dir="/var/tmp")
    os.chmod(scratch, 0o777)
    out = os.path.join(scratch, "out.json")
    try:
        if request.param == "root":
            proc = subprocess.run([sys.executable, SCRIPT, out, scratch], env={**os.environ, **ENV},
                                  capture_output=True, text=True, timeout=300)
        else:
            reason = unprivileged.skip_reason()
            if reason:
                pytest.skip(reason)
            proc = unprivileged.run_as_user(SCRIPT, out, scratch, env=ENV, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(out) as fh:
            data: dict[str, Any] = json.load(fh)
        return data
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", scratch], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def test_an_output_that_is_a_symlink_changes_nothing_and_copies_nothing(seen: dict[str, Any]) -> None:
    assert seen["modes"] == ["0o600", "0o700", "0o600"], "the node chmod-ed the target of a task's symlink"
    assert seen["copied_back"] == [], "the target of a task's symlink was copied to the submitter"


def test_the_task_is_told_why_its_output_was_refused(seen: dict[str, Any]) -> None:
    for name in ("file", "dir", "inside"):
        assert "symbolic link" in str(seen[name]), seen[name]


def test_a_cache_directory_another_user_made_first_is_refused(tmp_path: Any) -> None:
    # /var/tmp/loadmaster-<uid> is a name anyone can guess and make first in /var/tmp.
    from loadmaster.data.cache import Cache
    from loadmaster.errors import DataError

    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    planted = tmp_path / "loadmaster-0"
    planted.mkdir()
    os.chmod(planted, 0o777)
    os.chown(planted, 65534, 65534)
    with pytest.raises(DataError, match="not this user's alone"):
        Cache(str(planted / "cache"))
    assert not (planted / "cache").exists()
    os.chown(planted, 0, 0)  # ours, but anyone may write it
    with pytest.raises(DataError, match="not this user's alone"):
        Cache(str(planted / "cache"))


def test_a_new_cache_directory_is_private(tmp_path: Any) -> None:
    from loadmaster.data.cache import Cache

    root = tmp_path / "fresh" / "loadmaster-x" / "cache"
    Cache(str(root)).close()
    assert os.stat(root).st_mode & 0o777 == 0o700
    assert os.stat(root.parent).st_mode & 0o777 == 0o700
