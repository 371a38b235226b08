"""A hostile task tries to make the client ship what it should not (deps/: names a task reports).

What a task reports is hostile input: the top-level modules its run imported
(``extra["imported"]``, learned by the history) and the module of a
``ModuleNotFoundError`` (which retries the task with that module added). Such a
name may add an installed distribution, never the submitter's own files: else
a task could name any module on the client's path (a ``settings.py`` with a
password next to the script) and read it in its next environment. The logic
is the client's, the same as root and as an ordinary user: run as root here.
"""

from __future__ import annotations

import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadmaster import Executor
from loadmaster.deps import dists
from tests.deps_fixtures.userdir import tiny_site

SECRET = "lm_client_secret"


def claims_missing(name: str) -> str:
    raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def claims_imported(name: str) -> str:
    import sys
    import types

    sys.modules[name] = types.ModuleType(name)  # reported as imported by this run
    return "ok"


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LOADMASTER_DEPS_CACHE", str(tmp_path / "wheelsets"))
    monkeypatch.setenv("LOADMASTER_ENVS", str(tmp_path / "envs"))
    mine = tmp_path / "project"  # the submitter's own directory, on its path (a script's directory)
    mine.mkdir()
    (mine / f"{SECRET}.py").write_text("PASSWORD = 'hunter2'\n")
    site = tiny_site(tmp_path)
    sys.path[:0] = [str(mine), str(site)]
    dists.forget()
    yield tmp_path
    for p in list(sys.path):
        if p.startswith(str(tmp_path)):
            sys.path.remove(p)
    sys.modules.pop(SECRET, None)
    sys.modules.pop("tinypkg", None)
    dists.forget()


def shipped(tmp: Path) -> list[str]:
    """Every file name in every wheel set packed so far."""
    out = []
    for tar_path in (tmp / "wheelsets").glob("*.tar") if (tmp / "wheelsets").is_dir() else ():
        with tarfile.open(tar_path) as tar:
            out += tar.getnames()
            for member in tar.getmembers():
                if member.name.endswith(".whl"):
                    import io
                    import zipfile

                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    out += zipfile.ZipFile(io.BytesIO(data)).namelist()
    return out


def test_a_module_not_found_that_names_the_clients_file_does_not_ship_it(client: Path) -> None:
    with Executor(history=str(client / "h.sqlite"), deps=True, ledger=False) as ex:
        fut = ex.submit(claims_missing, SECRET)
        with pytest.raises(Exception, match=SECRET):
            fut.result(timeout=120)
        assert fut.report.attempts == 1, "the task was retried in an environment with the client's file"
    assert not any(SECRET in n for n in shipped(client)), shipped(client)
    assert not any(SECRET in f for _, _, fs in os.walk(client / "envs") for f in fs) if (client / "envs").exists() \
        else True


def test_an_imported_name_a_task_reports_does_not_ship_the_clients_file(client: Path) -> None:
    history = str(client / "h.sqlite")
    with Executor(history=history, deps=True, ledger=False) as ex:
        assert ex.options(category="hostile").submit(claims_imported, SECRET).result(timeout=120) == "ok"
    with Executor(history=history, deps=True, ledger=False) as ex:
        assert SECRET in ex.history.learned_imports("hostile")  # learned (it is only a name)
        plan = ex.deps.plan(claims_imported, "hostile")  # type: ignore[union-attr]
        assert SECRET not in plan.needs.user, plan.needs.user
        assert SECRET in plan.needs.unknown
        assert ex.options(category="hostile").submit(claims_imported, "x").result(timeout=120) == "ok"
    assert not any(SECRET in n for n in shipped(client)), shipped(client)


def test_a_reported_name_still_adds_an_installed_distribution(client: Path) -> None:
    plan = dists.resolve([], ("tinypkg",))
    assert "tinypkg" in plan.dists and not plan.user


def test_a_reported_name_that_cannot_be_packed_does_not_break_later_submits(client: Path) -> None:
    # An installed distribution without a RECORD (a system package) cannot be packed:
    # a task that reports its module must not make every later submit of its category fail.
    site = client / "system-site"
    info = site / "norecord-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: norecord\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("norecord\n")
    (site / "norecord.py").write_text("VALUE = 1\n")
    sys.path.insert(0, str(site))
    dists.forget()
    history = str(client / "h.sqlite")
    with Executor(history=history, deps=True, ledger=False) as ex:
        assert ex.options(category="hostile").submit(claims_imported, "norecord").result(timeout=120) == "ok"
    with Executor(history=history, deps=True, ledger=False) as ex:
        assert "norecord" in ex.history.learned_imports("hostile")
        assert ex.options(category="hostile").submit(claims_imported, "x").result(timeout=120) == "ok"
