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


def test_an_environment_another_user_planted_is_not_used(tmp_path: Path) -> None:
    # Keys are predictable (a hash of names and versions): in a root others can write, another
    # user could plant ROOT/KEY/site with code every task of that environment would import.
    from loadmaster.deps import build
    from loadmaster.deps.source import LocalSource
    from loadmaster.errors import DependencyError

    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    root = tmp_path / "envs"
    key = "ab" * 10
    planted = root / key / "site"
    planted.mkdir(parents=True)
    (planted / "tinypkg.py").write_text("import os; os.system('touch /tmp/pwned')\n")
    (root / key / build.READY).write_text("{}")
    os.chown(root / key, 65534, 65534)
    with pytest.raises(DependencyError, match="someone else made it"):
        build.ensure(key, LocalSource(str(tmp_path)), str(root))
    os.chown(root / key, 0, 0)
    os.chmod(root / key, 0o777)  # ours, but anyone may swap what is inside
    with pytest.raises(DependencyError, match="someone else made it"):
        build.ensure(key, LocalSource(str(tmp_path)), str(root))
    os.chmod(root / key, 0o700)
    assert build.ensure(key, LocalSource(str(tmp_path)), str(root)).method == "warm"  # ours: used


def test_a_lock_file_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    from loadmaster.deps import build
    from loadmaster.deps.source import LocalSource

    root = tmp_path / "envs"
    root.mkdir()
    key = "cd" * 10
    victim = tmp_path / "victim"
    os.symlink(victim, root / f"{key}.lock")
    with pytest.raises(OSError):
        build.ensure(key, LocalSource(str(tmp_path)), str(root))
    assert not victim.exists(), "the lock's open followed a symlink and created a file elsewhere"


def _wheel_set(directory: Path, key: str, members: list[tuple[tarfile.TarInfo, bytes]], wheels: list[str]) -> None:
    import io
    import json

    directory.mkdir(exist_ok=True)
    with tarfile.open(directory / f"{key}.tar", "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
        manifest = json.dumps({"key": key, "wheels": wheels}).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    # Its digest beside it, as a consistent sender would name it: what is tested is the unpacking.
    from loadmaster.deps.pack import record_digest

    record_digest(str(directory / f"{key}.tar"))


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def _zip(names: list[str]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in names:
            zf.writestr(n, "import os\n")
    return buf.getvalue()


@pytest.mark.parametrize("attack", ["tar_dotdot", "tar_absolute", "tar_symlink_out", "tar_hardlink_out",
                                    "wheel_dotdot", "wheel_absolute", "wheel_data_dotdot", "manifest_outside"])
# manifest_outside: the manifest names a real wheel elsewhere on the node (read, then unpacked into the site)
def test_a_hostile_wheel_set_writes_nothing_outside_its_environment(tmp_path: Path, attack: str) -> None:
    # Sets come from the submitter today; a peer's cache (the data layer) may serve them later.
    from loadmaster.deps import build
    from loadmaster.deps.source import LocalSource

    key = "ef" * 10
    out = tmp_path / "outside"
    out.mkdir()
    victim = out / "victim.py"
    victim.write_text("genuine\n")
    rel = os.path.relpath(victim, tmp_path / "envs" / "x" / "wheels")
    elsewhere = out / "elsewhere-1.0-py3-none-any.whl"
    elsewhere.write_bytes(_zip(["victim.py"]))
    w = "evil-1.0-py3-none-any.whl"
    members, wheels = {
        "tar_dotdot": ([_file(f"../../../{rel}", b"pwned")], []),
        "tar_absolute": ([_file(str(victim), b"pwned")], []),
        "tar_symlink_out": ([_link(w, str(victim))], [w]),
        "tar_hardlink_out": ([_link(w, str(victim), tarfile.LNKTYPE)], [w]),
        "wheel_dotdot": ([_file(w, _zip([f"../../{'../' * 8}{str(victim).lstrip('/')}"]))], [w]),
        "wheel_absolute": ([_file(w, _zip([str(victim)]))], [w]),
        "wheel_data_dotdot": ([_file(w, _zip([f"evil-1.0.data/purelib/{'../' * 12}{str(victim).lstrip('/')}"]))], [w]),
        "manifest_outside": ([], [str(elsewhere)]),
    }[attack]
    _wheel_set(tmp_path / "sets", key, members, wheels)
    try:  # refused (tarfile's data filter, zipfile, ours), or made harmless: an absolute tar name lands inside
        build.ensure(key, LocalSource(str(tmp_path / "sets")), str(tmp_path / "envs"), method="unpack")
        refused = False
    except Exception:
        refused = True
    assert victim.read_text() == "genuine\n"
    assert refused or attack == "tar_absolute", "a hostile set was built"
    assert [p for p in tmp_path.rglob("victim.py") if p != victim and "envs" not in p.parts] == []
    assert not (tmp_path / "envs" / key / "site" / "victim.py").exists()


# ── a wheel set's bytes are bound to the digest the submitter took when it packed it ──────────────

@pytest.fixture
def tiny_set(tmp_path: Path) -> Iterator[object]:
    from loadmaster.deps import pack

    site = tiny_site(tmp_path)
    sys.path.insert(0, str(site))
    dists.forget()
    try:
        yield pack.pack(dists.with_requirements(["tinypkg"]), str(tmp_path / "sets"))
    finally:
        sys.path.remove(str(site))
        dists.forget()


def _evil_twin(path: Path) -> None:
    """Replace the set at ``path`` by a well-formed one of the same size and manifest whose package differs."""
    import io
    import zipfile

    size = path.stat().st_size
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m, data in members:
            if m.name.endswith(".whl"):
                src = zipfile.ZipFile(io.BytesIO(data))
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
                    for info in src.infolist():  # CRCs made afresh: only the set's digest can tell
                        body = src.read(info)
                        zf.writestr(info, body.replace(b"VALUE = ", b"PWNED = "))
                data = buf.getvalue()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    assert len(out.getvalue()) == size
    path.write_bytes(out.getvalue())


def test_a_set_replaced_in_the_node_cache_is_refused_fetched_again_and_never_built(
        tmp_path: Path, tiny_set: object, caplog: pytest.LogCaptureFixture) -> None:
    from loadmaster.data.cache import Cache
    from loadmaster.data.fetch import LocalFetcher
    from loadmaster.data.refs import InputRef, Source
    from loadmaster.deps import build
    from loadmaster.deps.source import CacheSource

    packed = tiny_set
    cache = Cache(str(tmp_path / "node" / "cache"))
    put = cache.put_path(packed.path, digest=packed.digest)  # type: ignore[attr-defined]
    entry = Path(put.path)
    entry.chmod(0o644)  # the entry as someone with the node's rights rewrote it
    twin = tmp_path / "twin.tar"
    twin.write_bytes(Path(packed.path).read_bytes())  # type: ignore[attr-defined]
    _evil_twin(twin)
    entry.write_bytes(twin.read_bytes())
    ref = InputRef(packed.path, packed.digest, packed.size, "file",  # type: ignore[attr-defined]
                   (Source("client", LocalFetcher().host, packed.path),))  # type: ignore[attr-defined]
    source = CacheSource(cache, LocalFetcher(), ref)
    env = build.ensure(packed.key, source, str(tmp_path / "envs"))  # type: ignore[attr-defined]
    assert env.built and source.fetched == 1  # refused, dropped, fetched again from the submitter
    assert "not its digest" in caplog.text
    init = Path(env.site) / "tinypkg" / "__init__.py"
    assert b"VALUE = " in init.read_bytes() and b"PWNED" not in init.read_bytes()
    assert Path(cache.lookup(packed.digest) or "").read_bytes() == Path(packed.path).read_bytes()  # type: ignore[attr-defined]
    cache.close()


def test_a_set_whose_every_copy_is_replaced_is_refused_with_a_clear_error_and_nothing_built(
        tmp_path: Path, tiny_set: object) -> None:
    from loadmaster.deps import build
    from loadmaster.deps.source import LocalSource
    from loadmaster.errors import DependencyError

    packed = tiny_set
    _evil_twin(Path(packed.path))  # type: ignore[attr-defined]
    with pytest.raises(DependencyError, match=r"is not the one the submitter packed.*still not: nothing was built"):
        build.ensure(packed.key, LocalSource(str(tmp_path / "sets")), str(tmp_path / "envs"))  # type: ignore[attr-defined]
    assert [p.name for p in (tmp_path / "envs").iterdir() if not p.name.endswith((".lock", ".use"))] == []


def test_a_set_replaced_after_packing_never_reaches_a_task(tmp_path: Path, tiny_set: object,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the executor: the node stages the set by the digest taken at pack; other bytes
    # under its path fail the staging (the cache checks them), the task fails saying so, nothing is built.
    from loadmaster.errors import TaskFailed

    udir = tmp_path / "u2"
    udir.mkdir()
    (udir / "tinyuse.py").write_text("import tinypkg\n\n\ndef value(n):\n    return tinypkg.VALUE * n\n")
    monkeypatch.syspath_prepend(str(udir))
    monkeypatch.setenv("LOADMASTER_DEPS_CACHE", str(tmp_path / "sets2"))
    monkeypatch.setenv("LOADMASTER_ENVS", str(tmp_path / "envs"))
    dists.forget()
    import tinyuse  # type: ignore[import-not-found]

    try:
        with Executor(deps=True, sandbox=False, ledger=False, history=":memory:",
                      cache_dir=str(tmp_path / "cache")) as ex:
            plan = ex.deps.plan(tinyuse.value, "value")  # type: ignore[union-attr]
            assert plan.packed is not None and "tinypkg" in plan.needs.dists
            _evil_twin(Path(plan.packed.path))
            fut = ex.options(category="value").submit(tinyuse.value, 2)
            with pytest.raises(TaskFailed, match="could not be staged"):
                fut.result(timeout=120)
    finally:
        sys.modules.pop("tinyuse", None)
    assert not (tmp_path / "envs").exists() or [p for p in (tmp_path / "envs").iterdir() if p.is_dir()] == []
