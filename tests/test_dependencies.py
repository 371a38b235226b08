"""pyproject.toml declares what src/ imports, and nothing src/ does not use.

Reads the real pyproject.toml and every module under src/loadmaster (their
``import`` statements, by AST), and maps modules to distributions through the
installed metadata.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "loadmaster"


def _name(requirement: str) -> str:
    """The distribution name of a requirement string, normalised ("dask[distributed]>=1" -> "dask")."""
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_modules() -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in src/loadmaster -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "loadmaster" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


# Imports whose distribution is named otherwise, for when it is not installed here.
KNOWN_DISTRIBUTIONS = {"pynvml": {"nvidia-ml-py"}}


def _distributions(module: str) -> set[str]:
    dists = importlib.metadata.packages_distributions().get(module, [])
    return {d.lower().replace("_", "-") for d in dists} or KNOWN_DISTRIBUTIONS.get(module, set())


def test_every_core_dependency_is_imported_by_src() -> None:
    imported = _imported_modules()
    used = set().union(*(_distributions(m) for m in imported)) | set(imported)
    core = {_name(r) for r in _project()["dependencies"]}
    unused = sorted(core - used)
    assert not unused, f"core dependencies src/ never imports: {unused}"
    assert "humanfriendly" not in core and "psutil" not in core


def test_every_third_party_import_is_declared() -> None:
    project = _project()
    declared = {_name(r) for r in project["dependencies"]}
    for requirements in project["optional-dependencies"].values():
        declared |= {_name(r) for r in requirements}
    undeclared = {}
    for module, files in _imported_modules().items():
        dists = _distributions(module) or {module.lower().replace("_", "-")}
        if not dists & declared:
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported by src/ but declared nowhere in pyproject.toml: {undeclared}"


def test_extras_are_not_empty_and_all_names_real_ones() -> None:
    extras = _project()["optional-dependencies"]
    assert all(extras[name] for name in extras), f"empty extras: {[n for n in extras if not extras[n]]}"
    (everything,) = extras["all"]
    named = re.fullmatch(r"loadmaster\[(.*)\]", everything)
    assert named is not None
    assert set(named.group(1).split(",")) == set(extras) - {"all"}
