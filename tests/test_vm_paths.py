"""scripts/vm-paths.sh on the host: the directories ``nobody`` must traverse in the VM.

scripts/vm-guest.sh lays an o+x overlay on each of them before the ``nobody`` run. The
Makefile's program is relative (``.venv/bin/python``); the walk up from it used to stop
only at ``/``, and a relative path's parent stops at ``.``: the guest looped there, silent,
at 100 % CPU, until the VM's timeout killed it (the fresh-clone ``nobody`` hang).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "vm-paths.sh"


def _ancestors(d: Path) -> list[str]:
    return [str(p) for p in reversed(d.parents) if str(p) != "/"] + [str(d)]


def _paths(cmd: Path) -> list[str]:
    proc = subprocess.run(["bash", str(SCRIPT), str(cmd)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_a_program_relative_to_the_working_directory_is_walked_from_there(tmp_path: Path) -> None:
    interp = tmp_path / "pyenv" / "versions" / "3.x" / "bin" / "python3"
    interp.parent.mkdir(parents=True)
    interp.write_text("#!/bin/sh\n")
    interp.chmod(0o755)
    checkout = tmp_path / "checkout"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "python").symlink_to(interp)
    cmd = tmp_path / "cmd.sh"
    cmd.write_text(f"cd {checkout}\nexport LOADMASTER_IN_VM=1\nexec .venv/bin/python -m pytest -q\n")

    got = _paths(cmd)

    want = _ancestors(checkout / ".venv" / "bin") + [p for p in _ancestors(interp.parent) if p not in
                                                      _ancestors(checkout)]
    assert got == want


def test_an_absolute_program_and_one_not_found(tmp_path: Path) -> None:
    cmd = tmp_path / "cmd.sh"
    cmd.write_text(f"cd {tmp_path}\nexec /bin/sh -c true\n")
    assert set(_ancestors(tmp_path)) <= set(_paths(cmd))
    cmd.write_text(f"cd {tmp_path}\nexec no-such-program-here --flag\n")
    assert _paths(cmd) == _ancestors(tmp_path)
