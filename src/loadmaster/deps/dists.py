"""Map modules to what provides them: the standard library, an installed distribution, or the user's files.

Runs in the client. ``importlib.metadata.packages_distributions()`` costs
~44 ms here: it is read once per process. A distribution's own requirements
that are installed are added too (the closure), so that a module needed
only by numpy's dependency is there. loadmaster itself and its core
dependencies are on every node already and are left out (``BASE``).

A module that no distribution provides and that is not the standard
library is the user's own code (a ``helper.py`` next to the script): it is
shipped as files (``UserModule``: its ``.py`` file, or its package directory).

Does not cover: finding the modules (``deps/find.py``), packing (``deps/pack.py``).
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field

from loadmaster.deps.find import Found, stdlib

# On every node already (the worker runs loadmaster): never shipped.
BASE = frozenset({"loadmaster", "cloudpickle", "platformdirs", "tqdm"})


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _module_dists() -> dict[str, tuple[str, ...]]:
    return {m: tuple(d) for m, d in md.packages_distributions().items()}


@functools.cache
def _distribution(name: str) -> md.Distribution | None:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def forget() -> None:
    """Forget what was read of the installed distributions (after installing or removing one)."""
    _module_dists.cache_clear()
    _distribution.cache_clear()


def with_requirements(names: list[str] | tuple[str, ...], base: frozenset[str] = BASE) -> Needs:
    """The installed distributions ``names`` and the installed ones they require (``base`` left out)."""
    needs = Needs()
    for name in names:
        _add_dist(needs, name, "asked for", base)
    return needs


def is_users_module(module: str) -> bool:
    """Whether ``module`` is the user's own code: neither standard library nor any distribution's."""
    top = module.split(".")[0]
    if not top or stdlib(top) or top in _module_dists():
        return False
    return top != "loadmaster"


@dataclass(frozen=True)
class Dist:
    """An installed distribution to ship: its name and exact version, and why."""

    name: str
    version: str
    why: str


@dataclass(frozen=True)
class UserModule:
    """The user's own module, shipped as files: ``path`` is its ``.py`` file or its package directory."""

    name: str
    path: str
    why: str


@dataclass
class Needs:
    """What a function needs beyond the standard library, resolved on the submitting side."""

    dists: dict[str, Dist] = field(default_factory=dict)  # by normalised name
    user: dict[str, UserModule] = field(default_factory=dict)  # by top-level module name
    stdlib: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)  # module -> why (not importable here)
    base: list[str] = field(default_factory=list)  # provided by every node (loadmaster's own)


def resolve(found: Found | list[str], extra: tuple[str, ...] = ()) -> Needs:
    """Map the modules of ``found`` (and the top-level names ``extra``, e.g. learned from runs) to providers.

    ``extra`` names come from tasks (what a run imported, the module of a
    ``ModuleNotFoundError``): hostile input. They may add an installed
    distribution, never the user's own files: a task naming ``settings`` must
    not get the ``settings.py`` next to the script shipped to it. One that no
    distribution provides is ``unknown``.
    """
    needs = Needs()
    reasons: dict[str, str] = {}
    reported: set[str] = set()
    if isinstance(found, Found):
        for module, whys in found.modules.items():
            reasons.setdefault(module.split(".")[0], f"{module}: {whys[0]}" if whys else module)
    else:
        for module in found:
            reasons.setdefault(module.split(".")[0], module)
    for module in extra:
        top = module.split(".")[0]
        if top not in reasons:
            reported.add(top)
            reasons[top] = f"{module}: imported by an earlier run"
    dists = _module_dists()
    for top, why in sorted(reasons.items()):
        if stdlib(top):
            needs.stdlib.append(top)
            continue
        names = dists.get(top)
        if names:
            for name in names:
                _add_dist(needs, name, why)
            continue
        if top == "loadmaster":
            needs.base.append(top)
            continue
        if top in reported:
            needs.unknown[top] = f"{why}; a name a task reported adds an installed distribution, not your files"
            continue
        path = _user_path(top)
        if path is None:
            needs.unknown[top] = why
        else:
            needs.user[top] = UserModule(top, path, why)
    return needs


def _add_dist(needs: Needs, name: str, why: str, base: frozenset[str] = BASE) -> None:
    key = normalise(name)
    if key in needs.dists or key in base:
        if key in base and key not in needs.base:
            needs.base.append(key)
        return
    dist = _distribution(name)
    if dist is None:
        return
    needs.dists[key] = Dist(dist.metadata["Name"] or name, dist.version, why)
    for req in dist.requires or ():
        if "extra ==" in req or "extra==" in req:
            continue  # an optional extra: not needed unless asked for
        dep = re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0]
        if dep and _distribution(dep) is not None:
            _add_dist(needs, dep, f"required by {dist.metadata['Name']}", base)


def _user_path(top: str) -> str | None:
    """The file (or package directory) of the user's module ``top``, or None if it cannot be found."""
    module = sys.modules.get(top)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or not os.path.isfile(origin):
        return None
    if os.path.basename(origin) == "__init__.py":
        return os.path.dirname(origin)
    return origin if origin.endswith(".py") else None
