"""scripts/vm-run.sh on the host, with a stand-in for virtme-ng's ``vng`` (no VM is booted).

The stand-in does to its stdout and stderr what QEMU does under ``vng --exec``: it opens
``/proc/self/fd/1`` and ``/proc/self/fd/2`` again by name, with ``O_TRUNC``. A log file
that was the script's stdout used to be emptied so at every boot (the lines before it
became NULs). Needs what vm-run.sh needs before it boots (root, its packages, a kernel
in /boot: ``make test-vm`` installs them); skips otherwise.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("qemu-system-x86", "linux-image-amd64", "busybox-static", "time", "xz-utils")

FAKE_VNG = """#!/usr/bin/env python3
import os, sys, time
if os.environ.get("FAKE_VNG_SLEEP"):
    time.sleep(float(os.environ["FAKE_VNG_SLEEP"]))
for fd, text in ((1, "guest stdout\\n"), (2, "guest stderr\\n")):
    with open(f"/proc/self/fd/{fd}", "w") as fh:  # O_WRONLY|O_CREAT|O_TRUNC, as QEMU's file chardev
        fh.write(text)
"""


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "vm-run.sh needs root"
    if shutil.which("dpkg-query") is None:
        return "no dpkg-query (vm-run.sh installs with apt)"
    for p in PACKAGES:
        st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if "install ok installed" not in st.stdout:
            return f"{p} is not installed yet (make test-vm installs it)"
    if not glob.glob("/boot/vmlinuz-*-amd64"):
        return "no Debian kernel in /boot (make test-vm installs it)"
    return ""


pytestmark = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "-")


@pytest.fixture
def fake_vng(tmp_path: Path) -> Path:
    vng = tmp_path / "vng"
    vng.write_text(FAKE_VNG)
    vng.chmod(0o755)
    return vng


def _run(fake_vng: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> int:
    with open(log, "ab") as fh:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "vm-run.sh"), *args, "--", "true"], stdout=fh,
                              stderr=fh, env={**os.environ, "LOADMASTER_VM_VNG": str(fake_vng), **(env or {})},
                              timeout=120)
    return proc.returncode


def test_the_callers_log_file_keeps_its_lines(fake_vng: Path, tmp_path: Path) -> None:
    log = tmp_path / "ci.log"
    log.write_text("written before the VM\n")
    assert _run(fake_vng, log) == 0
    text = log.read_text()
    assert text.startswith("written before the VM\nvm-run: booting "), repr(text[:200])
    assert "\0" not in text
    assert "guest stdout\n" in text and "guest stderr\n" in text
    assert "vm-run: exit status 0" in text


def test_a_vm_past_its_timeout_is_killed_and_says_so(fake_vng: Path, tmp_path: Path) -> None:
    log = tmp_path / "ci.log"
    assert _run(fake_vng, log, "--timeout", "1", env={"FAKE_VNG_SLEEP": "60"}) == 124
    assert "vm-run: FAILED: the VM ran past --timeout 1 s and was killed" in log.read_text()
