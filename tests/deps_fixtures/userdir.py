"""Make what a user has: a script's directory with a helper module, and a small installed package.

``user_dir(tmp)`` writes ``work.py`` (the task: numpy at module level as
``np``, the helper module, the small package) and ``helper.py``;
``tiny_site(tmp)`` installs the pure-Python distribution ``tinypkg`` 1.0 into
a site directory of its own (files and a ``.dist-info`` with ``RECORD``, as
pip leaves it), to be put on the client's ``sys.path`` only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

WORK = '''\
import numpy as np

import helper
import tinypkg


def task(n):
    import json  # the standard library: found, never shipped
    return json.dumps([float(np.arange(n).sum()), helper.double(n), tinypkg.VALUE, tinypkg.where()])


def quick(n):
    return float(np.arange(n).sum()) + helper.double(n) + len(tinypkg.VALUE)
'''

HELPER = '''\
def double(x):
    return 2 * x
'''


def user_dir(tmp: Path) -> Path:
    d = tmp / "user"
    d.mkdir(parents=True)
    (d / "work.py").write_text(WORK)
    (d / "helper.py").write_text(HELPER)
    return d


def _record(site: Path, files: list[str]) -> str:
    lines = []
    for f in files:
        data = (site / f).read_bytes()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{f},sha256={digest},{len(data)}")
    return "\n".join(lines) + "\n"


def tiny_site(tmp: Path, name: str = "tinypkg", version: str = "1.0") -> Path:
    site = tmp / "tiny-site"
    pkg = site / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        f"VALUE = {version!r}\n\ndef where():\n    return __file__.rsplit('/', 3)[-3]\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    (info / "top_level.txt").write_text(f"{name}\n")
    (info / "INSTALLER").write_text("test\n")
    files = [f"{name}/__init__.py", f"{info.name}/METADATA", f"{info.name}/WHEEL",
             f"{info.name}/top_level.txt", f"{info.name}/INSTALLER"]
    (info / "RECORD").write_text(_record(site, files) + f"{info.name}/RECORD,,\n")
    return site


@contextlib.contextmanager
def on_client_path(tmp: Path) -> Iterator[types.ModuleType]:
    """The user's directory and the package's site on ``sys.path``; yields the imported ``work`` module."""
    from loadmaster.deps import dists

    udir, site = user_dir(tmp), tiny_site(tmp)
    sys.path[:0] = [str(udir), str(site)]
    dists.forget()
    try:
        import work  # type: ignore[import-not-found]

        yield work
    finally:
        sys.path.remove(str(udir))
        sys.path.remove(str(site))
        for name in ("work", "helper", "tinypkg"):
            sys.modules.pop(name, None)
        dists.forget()
