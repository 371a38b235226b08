"""A bare worker environment: a venv with only Python, loadmaster and Dask, built offline.

Made without the network: a ``python -m venv --without-pip`` venv, into which
the wheels of dask, distributed, cloudpickle, platformdirs and tqdm (and what
they require) are unpacked, rebuilt by loadmaster's own packer from this
interpreter's installed distributions (``deps/pack.py``), and loadmaster's
``src`` by a ``.pth`` file. numpy is not in it.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from loadmaster.deps import build, dists, pack

SRC = Path(__file__).resolve().parents[2] / "src"
WORKER_DISTS = ("dask", "distributed", "cloudpickle", "platformdirs", "tqdm")


def make_bare_venv(where: Path) -> Path:
    """Build the venv at ``where``; return its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    needs = dists.with_requirements(WORKER_DISTS, base=frozenset())
    assert "numpy" not in needs.dists, sorted(needs.dists)
    wheels = where / "wheels"
    wheels.mkdir()
    for d in needs.dists.values():
        name, data = pack.rebuild_wheel(dists.md.distribution(d.name))
        (wheels / name).write_bytes(data)
        build._unpack(str(wheels / name), purelib)
    (Path(purelib) / "loadmaster-src.pth").write_text(f"{SRC}\n")
    assert sysconfig.get_paths()["purelib"] != purelib
    return python
