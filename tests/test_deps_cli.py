"""``loadmaster deps MODULE:FUNCTION``: what a user reads to know what will be shipped, and why.

Runs the real command in a subprocess on a script in a temporary directory
with a helper module beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
SCRIPT = """\
import numpy as np
import helper

def f(n):
    import json
    return helper.g(np.ones(n))
"""
HELPER = """\
import csv

def g(x):
    return csv.__name__, x
"""


def _deps(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC), LOADMASTER_HISTORY=str(tmp_path / "h.sqlite"),
               LOADMASTER_DEPS_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-c", "import sys; from loadmaster.cli import main; sys.exit(main())",
                           "deps", *args], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_deps_shows_what_is_shipped_and_why(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SCRIPT)
    (tmp_path / "helper.py").write_text(HELPER)
    done = _deps(tmp_path, "s.py:f")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "environment " in text.splitlines()[0]
    assert "numpy==" in text and "global np is module numpy" in text
    assert "helper" in text and str(tmp_path / "helper.py") in text
    assert "standard library (never shipped): csv, json" in text  # csv: from helper.g, walked


def test_deps_json_and_pack(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SCRIPT)
    (tmp_path / "helper.py").write_text(HELPER)
    out = json.loads(_deps(tmp_path, "s.py:f", "--json", "--pack").stdout)
    assert set(out["distributions"]) == {"numpy"}
    assert set(out["user_modules"]) == {"helper", "s"}
    assert out["walked"] == ["f", "g"]
    assert out["wheel_set"]["path"] == str(tmp_path / "cache" / f"{out['environment']}.tar")
    assert os.path.isfile(out["wheel_set"]["path"])
    from loadmaster.data.digest import hash_file

    assert out["wheel_set"]["digest"] == hash_file(out["wheel_set"]["path"])  # what nodes check the bytes against


def test_a_module_nothing_provides_is_said_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("def f():\n    import not_installed_anywhere\n")
    done = _deps(tmp_path, "t.py:f")
    assert done.returncode == 1
    assert "NOT FOUND here: not_installed_anywhere" in done.stdout


def test_a_bad_name_says_what_to_write(tmp_path: Path) -> None:
    done = _deps(tmp_path, "nocolon")
    assert done.returncode != 0 and "expected MODULE:FUNCTION" in done.stderr
