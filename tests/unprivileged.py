"""Run a Python script as an ordinary, unprivileged user created for the tests.

Who runs this: the pytest process (root, as in CI). Tests that must behave the
same for root and for an ordinary user (sandbox, monitor, ledger) run their
scenario script twice: once with ``sys.executable`` directly, once through
:func:`run_as_user`.

What it changes on the machine, once per session and idempotently:

* creates the system user ``lm-sbx-test`` (``useradd --system --no-create-home``,
  no login shell) if missing;
* grants that user traverse (``x``) permission, by ACL (``setfacl``), on every
  ancestor directory of the interpreter, its standard library, the venv and
  the repository's ``src`` that does not already let others traverse it
  (here ``/root``, which is mode 0700 and holds the pyenv interpreter).

Nothing else: no group memberships, no sudo. The ACL entries are left in place
(they are harmless and make later sessions faster); :func:`revoke` removes them.

Usage::

    from tests import unprivileged
    if unprivileged.unprivileged_user() is None:
        pytest.skip(unprivileged.skip_reason())
    proc = unprivileged.run_as_user(script_path, "arg1", env={"X": "1"}, timeout=60)

What it does *not* cover: making the test's own files readable by that user
(write them where the user can read, e.g. a ``tmp_path`` with mode 0755 on its
ancestors, or pass data on the command line / stdin).
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping

USER = "lm-sbx-test"


def _ancestors(path: str) -> list[str]:
    path = os.path.abspath(path)
    out = []
    while True:
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            return out[::-1]
        path = parent


def _needed_dirs() -> list[str]:
    """Directories the user must be able to traverse to run this interpreter with this package."""
    import loadmaster

    pkg = os.path.dirname(os.path.abspath(next(iter(loadmaster.__path__))))
    roots = {
        os.path.realpath(sys.executable),
        sys.executable,
        sys.prefix,
        sys.base_prefix,
        pkg,
        os.path.dirname(os.path.abspath(__file__)),
    }
    roots.update(p for p in sys.path if p and os.path.isdir(p))
    dirs: set[str] = set()
    for r in roots:
        for a in _ancestors(r):
            if os.path.isdir(a):
                dirs.add(a)
    return sorted(dirs)


@functools.cache
def _setup() -> tuple[str | None, str]:
    if os.geteuid() != 0:
        return None, "not root: cannot create a test user (run the suite as root, as CI does)"
    for tool in ("useradd", "runuser"):
        if shutil.which(tool) is None:
            return None, f"{tool} is missing (install the passwd / util-linux packages)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        proc = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            capture_output=True,
            text=True,
        )
        if proc.returncode not in (0, 9):  # 9: the user already exists (a concurrent session)
            return None, f"useradd {USER} failed ({proc.returncode}): {proc.stderr.strip()}"
    uid = pwd.getpwnam(USER).pw_uid
    blocked = []
    for d in _needed_dirs():
        st = os.stat(d)
        if st.st_mode & stat.S_IXOTH or st.st_uid == uid:
            continue
        blocked.append(d)
    if blocked:
        if shutil.which("setfacl") is None:
            return None, (
                f"setfacl is missing (apt-get install acl, or scripts/system-deps.sh) and "
                f"{USER} cannot traverse {', '.join(blocked)}"
            )
        for d in blocked:
            proc = subprocess.run(["setfacl", "-m", f"u:{USER}:x", d], capture_output=True, text=True)
            if proc.returncode != 0:
                return None, f"setfacl -m u:{USER}:x {d} failed: {proc.stderr.strip()}"
    check = subprocess.run(
        ["runuser", "-u", USER, "--", sys.executable, "-c", "import loadmaster.node; print('ok')"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    if check.returncode != 0 or "ok" not in check.stdout:
        return (
            None,
            f"{USER} cannot import loadmaster with {sys.executable}: {check.stderr.strip()[-500:]}",
        )
    return USER, ""


def unprivileged_user() -> str | None:
    """Return the name of the ordinary test user, creating it once; None when impossible.

    When None, :func:`skip_reason` says why (not root, no ``setfacl``, ...).
    """
    return _setup()[0]


def skip_reason() -> str:
    """Why :func:`unprivileged_user` returned None (empty when it did not)."""
    return _setup()[1]


def run_as_user(
    script: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    cwd: str = "/",
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python script *args`` as the ordinary test user; return the finished process.

    ``env`` adds to a minimal environment (``PATH``, ``LANG``, ``HOME=/``,
    ``PYTHONPATH`` of this interpreter's ``sys.path``); the caller's
    environment is not passed. stdout and stderr are captured as text.

    Raises:
        RuntimeError: no unprivileged user can be had here (check :func:`skip_reason` first).
        subprocess.TimeoutExpired: the script ran past ``timeout`` seconds.
    """
    user = unprivileged_user()
    if user is None:
        raise RuntimeError(f"no unprivileged test user: {skip_reason()}")
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": "/",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if env:
        full_env.update(env)
    return subprocess.run(
        ["runuser", "-u", user, "--", sys.executable, script, *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        input=input,
    )


def revoke() -> None:
    """Remove the ACL entries granted to the test user (the user itself is kept)."""
    if shutil.which("setfacl") is None:
        return
    for d in _needed_dirs():
        subprocess.run(["setfacl", "-x", f"u:{USER}", d], capture_output=True)
