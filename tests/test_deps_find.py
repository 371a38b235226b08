"""Finding what a function needs, and mapping it to distributions, the standard library or the user's files.

Real functions of real modules: the user's own (written to a temporary
directory and imported), numpy, the standard library. What a user checks:
``np`` at module level is found (source scanners miss it), the user's helper
called from the function is walked, a closure's module is found, the
standard library is never shipped, and a distribution's installed
requirements come along.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from loadmaster.deps import dists, find
from tests.deps_fixtures.userdir import on_client_path


def uses_np_global(n: int) -> float:
    return float(np.arange(n).sum())


def uses_nothing(n: int) -> int:
    return n + 1


def make_closure() -> object:
    import tomllib

    def inner(text: str) -> object:
        return tomllib.loads(text)

    return inner


def nested_import() -> object:
    def deeper() -> object:
        import csv

        return csv

    return deeper()


def dynamic(name: str) -> object:
    import importlib

    return importlib.import_module(name)


@pytest.fixture
def user_code(tmp_path: Path) -> Iterator[object]:
    with on_client_path(tmp_path) as work:
        yield work


def test_a_module_level_global_is_found_with_why() -> None:
    found = find.find_modules(uses_np_global)
    assert "numpy" in found.modules
    assert "global np is module numpy" in found.modules["numpy"][0]


def test_a_function_that_needs_nothing_needs_only_its_own_module() -> None:
    assert find.find_modules(uses_nothing).top_level() == ["tests"]


def test_a_closure_and_a_nested_import_are_found() -> None:
    assert "tomllib" in find.find_modules(make_closure()).modules  # type: ignore[arg-type]
    found = find.find_modules(nested_import)
    assert "csv" in found.modules and "nested_import.deeper" in found.modules["csv"][0]


def test_a_dynamic_import_is_not_seen_by_reading_code() -> None:
    # What importlib.import_module(name) loads is learned from runs, not found here.
    assert find.find_modules(dynamic).top_level() == ["importlib", "tests"]


def test_the_users_helper_is_walked_and_everything_is_mapped(user_code: object) -> None:
    found = find.find_modules(user_code.task)  # type: ignore[attr-defined]
    assert {"numpy", "helper", "tinypkg", "json", "work"} <= set(found.modules)
    needs = dists.resolve(found)
    assert needs.dists["numpy"].version == np.__version__
    assert needs.dists["tinypkg"].version == "1.0"
    assert needs.user["helper"].path.endswith("helper.py")
    assert needs.user["work"].path.endswith("work.py")
    assert "json" in needs.stdlib and "json" not in needs.dists


def test_users_functions_called_are_walked_recursively(user_code: object, tmp_path: Path) -> None:
    import helper  # type: ignore[import-not-found]

    def outer(x: int) -> int:
        return helper.double(x)

    found = find.find_modules(outer)
    assert "helper" in found.modules


def test_a_distributions_installed_requirements_come_along() -> None:
    needs = dists.with_requirements(["distributed"])
    assert {"distributed", "tornado", "dask", "msgpack"} <= set(needs.dists)
    assert "cloudpickle" not in needs.dists  # on every node already (loadmaster's own)


def test_a_module_nothing_provides_is_reported_unknown() -> None:
    needs = dists.resolve(["no_such_module_anywhere"])
    assert "no_such_module_anywhere" in needs.unknown
