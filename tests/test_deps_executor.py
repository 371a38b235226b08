"""``Executor(deps=True)``: each function runs in the environment of what it needs; runs teach the history.

Local backend, real zygotes. The client's own path is the zygotes' path here,
so what proves shipping is where a module is loaded from (the environment's
site directory, not the client's), and the bare-worker test
(``test_deps_node.py``) proves it on a node without the package at all.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadmaster import Executor
from loadmaster.deps import dists
from tests.deps_fixtures.userdir import tiny_site


def where_tiny(n: int) -> str:
    import tinypkg  # type: ignore[import-not-found]

    return str(tinypkg.where()) * n


def dynamic(name: str) -> str:
    import tinypkg  # type: ignore[import-not-found]

    module = importlib.import_module(name)  # not seen by reading the code: learned from the run
    return f"{tinypkg.VALUE} {module.VALUE} {module.where()}"


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LOADMASTER_DEPS_CACHE", str(tmp_path / "wheelsets"))
    monkeypatch.setenv("LOADMASTER_ENVS", str(tmp_path / "envs"))
    site = tiny_site(tmp_path)
    sys.path.insert(0, str(site))
    dists.forget()
    yield tmp_path
    for p in list(sys.path):
        if p.startswith(str(tmp_path)):
            sys.path.remove(p)
    for name in ("tinypkg", "latepkg"):
        sys.modules.pop(name, None)
    dists.forget()


def test_a_function_runs_in_its_environment_and_the_report_names_it(tiny: Path) -> None:
    with Executor(history=str(tiny / "h.sqlite"), deps=True, sandbox=False, ledger=False) as ex:
        fut = ex.submit(where_tiny, 1)
        assert fut.result(timeout=120) == "site"  # tinypkg loaded from the environment's site directory
        key = fut.report.extra["environment"]
        assert os.path.isdir(tiny / "envs" / key / "site" / "tinypkg")
        assert os.path.isfile(tiny / "wheelsets" / f"{key}.tar")
        again = ex.submit(where_tiny, 2)
        assert again.result(timeout=60) == "sitesite" and again.report.extra["environment"] == key


def test_a_missing_module_is_added_and_the_task_retried_once_then_learned(tiny: Path) -> None:
    history = str(tiny / "h.sqlite")
    with Executor(history=history, deps=True, sandbox=False, ledger=False) as ex:
        warm = ex.submit(where_tiny, 1)  # starts the environment's zygote before latepkg exists
        assert warm.result(timeout=120) == "site"
        late = tiny / "late"
        late.mkdir()
        sys.path.insert(0, str(tiny_site(late, "latepkg", "2.0")))
        dists.forget()
        fut = ex.options(category="dyn").submit(dynamic, "latepkg")
        assert fut.result(timeout=120) == "1.0 2.0 site"
        assert fut.report.attempts == 2  # failed once on ModuleNotFoundError, then ran with it added
        assert fut.report.extra["environment"] != warm.report.extra["environment"]
        assert "latepkg" in fut.report.extra["imported"]
    # The next run knows it from the history: found at submit, no retry.
    with Executor(history=history, deps=True, sandbox=False, ledger=False) as ex:
        assert "latepkg" in ex.history.learned_imports("dyn")
        fut = ex.options(category="dyn").submit(dynamic, "latepkg")
        assert fut.result(timeout=120) == "1.0 2.0 site"
        assert fut.report.attempts == 1
        plan = ex.deps.plan(dynamic, "dyn")  # type: ignore[union-attr]
        assert "latepkg" in plan.learned and "latepkg" in plan.needs.dists
        assert fut.report.extra["environment"] == plan.key


def test_a_module_nothing_provides_fails_once_with_its_name(tiny: Path) -> None:
    with Executor(history=str(tiny / "h.sqlite"), deps=True, sandbox=False, ledger=False) as ex:
        fut = ex.submit(dynamic, "no_such_module_here")
        with pytest.raises(Exception, match="no_such_module_here"):
            fut.result(timeout=120)
        assert fut.report.attempts == 1


def test_a_sandboxed_task_reads_its_environment(tiny: Path) -> None:
    with Executor(history=str(tiny / "h.sqlite"), deps=True, ledger=False) as ex:  # sandbox on: the default
        fut = ex.submit(where_tiny, 1)
        assert fut.result(timeout=120) == "site"
        box = fut.report.extra.get("sandbox") or {}
        if not box.get("fs_rules"):
            pytest.skip("Landlock is not in force here: nothing to check")
        assert fut.report.extra["environment"]


def test_a_function_that_needs_nothing_runs_in_the_nodes_own_environment(tiny: Path) -> None:
    with Executor(history=str(tiny / "h.sqlite"), deps=True, sandbox=False, ledger=False) as ex:
        plan = ex.deps.plan(len, "len")  # type: ignore[union-attr]
        assert plan.key == "" and plan.packed is None
        fut = ex.submit(len, "abc")
        assert fut.result(timeout=60) == 3
        assert "environment" not in fut.report.extra
        assert not (tiny / "wheelsets").exists()


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k

    def scale(self, n: int) -> str:
        import tinypkg  # type: ignore[import-not-found]

        return f"{tinypkg.VALUE}:{n * self.k}"


def test_functions_are_held_weakly_by_their_environments(tiny: Path) -> None:
    import gc
    import weakref

    with Executor(history=str(tiny / "h.sqlite"), deps=True, sandbox=False, ledger=False) as ex:
        obj = Scaler(3)
        assert ex.submit(obj.scale, 2).result(timeout=120) == "1.0:6"
        assert ex.submit(obj.scale, 3).result(timeout=60) == "1.0:9"  # one plan: the method's function
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None  # the environments keep no instance alive


def test_a_task_in_the_nodes_own_environment_completes_while_a_build_is_held(
        tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loadmaster.deps import build

    entered, gate = threading.Event(), threading.Event()
    real = build.ensure

    def held(*args: object, **kwargs: object) -> object:
        entered.set()
        gate.wait()
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build, "ensure", held)
    with Executor(history=str(tiny / "h.sqlite"), deps=True, sandbox=False, ledger=False) as ex:
        try:
            shipped = ex.submit(where_tiny, 1)
            assert entered.wait(120), "the node never started building the environment"
            plain = [ex.submit(len, "x" * i) for i in range(4)]  # the node's own environment
            assert [f.result(timeout=120) for f in plain] == [0, 1, 2, 3]
            assert not shipped.done()  # it waits for its environment
            more = ex.submit(where_tiny, 2)  # a second order of the environment in the making waits too
        finally:
            gate.set()
        assert shipped.result(timeout=120) == "site" and more.result(timeout=120) == "sitesite"
        assert shipped.report.extra["environment"] == more.report.extra["environment"]
