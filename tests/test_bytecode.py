"""The zygote's own modules keep fresh bytecode, so that no zygote compiles them (node/process/bytecode.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import loadmaster
from loadmaster.node.process import bytecode


def _package(tmp_path: Path, name: str) -> Path:
    """A package ``name`` with one module ``mod`` (a name per test: ``find_spec`` imports the package)."""
    pkg = tmp_path / name
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    src = pkg / "mod.py"
    src.write_text("VALUE = 1\n")
    return src


def _imports_without_compiling(tmp_path: Path, module: str) -> bool:
    """Import ``module`` in a fresh interpreter that may not write bytecode; did it load a .pyc?"""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-v", "-c", f"import {module}"], env=env,
                         capture_output=True, text=True, check=True).stderr
    origin = module.replace(".", "/")
    return f"matches {tmp_path}/{origin}.py" in out and f"code object from {tmp_path}/{origin}.py" not in out


def test_missing_and_stale_bytecode_is_written_although_python_may_not_write_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _package(tmp_path, "lmbc_stale")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert not _imports_without_compiling(tmp_path, "lmbc_stale.mod")  # nothing written yet

    assert bytecode.refresh(("lmbc_stale.mod",)) == ()
    assert Path(importlib.util.cache_from_source(str(src))).is_file()
    assert _imports_without_compiling(tmp_path, "lmbc_stale.mod")

    src.write_text("VALUE = 2\n")
    later = src.stat().st_mtime + 10
    os.utime(src, (later, later))
    assert not _imports_without_compiling(tmp_path, "lmbc_stale.mod")  # stale now
    assert bytecode.refresh(("lmbc_stale.mod",)) == ()
    assert _imports_without_compiling(tmp_path, "lmbc_stale.mod")


def test_a_cache_directory_that_cannot_be_written_is_reported_not_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _package(tmp_path, "lmbc_unwritable")
    (src.parent / "__pycache__").write_text("a file where the directory should be\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert bytecode.refresh(("lmbc_unwritable.mod", "no_such_module_here")) == (str(src),)


def test_a_zygote_finds_fresh_bytecode_for_every_module_it_imports(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    paths = {}
    for name in bytecode.ZYGOTE_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        paths[name] = spec.origin
    if not os.access(os.path.dirname(paths["loadmaster.node.process.zygote"]), os.W_OK):
        pytest.skip("loadmaster's source directory is not writable here: its bytecode cannot be refreshed")
    for origin in paths.values():  # as in a fresh checkout
        Path(importlib.util.cache_from_source(origin)).unlink(missing_ok=True)
    bytecode.ensure_fresh.cache_clear()
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTHONVERBOSE", "1")  # the zygote says where each module's code came from
    with loadmaster.Executor(history=":memory:", cores=1) as ex:
        assert ex.submit(abs, -3).result() == 3  # sandboxed by default: the sandbox modules too
    err = capfd.readouterr().err
    package_dir = os.path.dirname(paths["loadmaster"])
    compiled = [line for line in err.splitlines()
                if line.startswith(f"# code object from {package_dir}/") and line.endswith(".py")]
    assert not compiled, f"a zygote compiled loadmaster modules (missing from ZYGOTE_MODULES?): {compiled}"
    for name in ("loadmaster.node.process.zygote", "loadmaster.node.sandbox.policy"):
        assert f"matches {paths[name]}" in err, f"no zygote imported {name}"
