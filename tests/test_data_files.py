"""Declared files through the executor: ``File``/``Output`` in a task's arguments, staged, cached, copied back.

Real executors, zygotes and task processes; real files; the sandbox on and off.
What is checked is what a user sees: the task reads its input at a path in the
node's cache, its output appears at the submitter's path (or, kept, stays in
the cache for a later task), a failed task leaves nothing there, the same
bytes under another path move 0 bytes, and the report says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadmaster import Executor, File, InvalidSpec, Output, TaskFailed
from loadmaster.data.cache import Cache
from loadmaster.schedule.engine import STAGE_RETRIES

KiB = 1024


def upper(src: Any, dst: Any) -> dict[str, Any]:
    """Write ``src`` upper-cased to ``dst``; say where both were and whether the input could be written."""
    with open(src, "rb") as fh:
        data = fh.read()
    with open(dst, "wb") as fh:
        fh.write(data.upper())
    try:
        open(src, "ab").close()
        wrote_input = True
    except OSError:
        wrote_input = False
    return {"src": os.fspath(src), "dst": os.fspath(dst), "wrote_input": wrote_input}


def read_all(files: Any) -> list[bytes]:
    """Read every file of a nested structure of ``File`` s (lists, tuples, dicts)."""
    out = []
    for f in files["items"]:
        path = f[0] if isinstance(f, tuple) else f
        with open(path, "rb") as fh:
            out.append(fh.read())
    return out


def write_then_fail(dst: Any) -> None:
    with open(dst, "wb") as fh:
        fh.write(b"half")
    raise RuntimeError("failed after writing half its output")


def forget_output(dst: Any) -> str:
    return "did not write"


def size_of(f: Any) -> int:
    return os.path.getsize(f)


@pytest.fixture
def ex(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    sandbox = getattr(request, "param", False)
    with Executor(history=":memory:", cache_dir=str(tmp_path / "cache"), sandbox=sandbox, ledger=False,
                  zygotes=1, workdir=str(tmp_path / "node")) as e:
        yield e


@pytest.mark.parametrize("ex", [False, True], ids=["no-sandbox", "sandbox"], indirect=True)
def test_task_reads_its_staged_input_and_its_output_appears(ex: Executor, tmp_path: Path) -> None:
    src = tmp_path / "in" / "sample.txt"
    src.parent.mkdir()
    src.write_bytes(b"hello data " * 100)
    (tmp_path / "out").mkdir()
    dst = tmp_path / "out" / "sample.upper"
    fut = ex.submit(upper, File(src), Output(dst))
    seen = fut.result(timeout=120)
    assert dst.read_bytes() == b"HELLO DATA " * 100
    cache = str(tmp_path / "cache")
    assert seen["src"].startswith(cache + "/objects/") and seen["src"] != str(src)
    assert not seen["dst"].startswith(str(tmp_path / "out"))  # written on the node, then copied back
    assert seen["wrote_input"] is (ex.sandbox.enabled is False and os.getuid() == 0)
    r = fut.report
    assert r is not None and r.data is not None and r.input_size == 1100
    assert (r.data.bytes_fetched, r.data.cache_hits, r.data.inputs[0].source) == (1100, 0, "client")
    [out] = r.data.outputs
    assert out.copied_back and not out.kept and out.size == 1100
    assert r.as_dict()["data"]["bytes_fetched"] == 1100
    assert [p.name for p in dst.parent.iterdir()] == ["sample.upper"]  # no temporary left beside it


def test_the_same_bytes_under_another_path_move_zero_bytes(ex: Executor, tmp_path: Path) -> None:
    a = tmp_path / "a" / "ref.bin"
    a.parent.mkdir()
    a.write_bytes(os.urandom(512 * KiB))
    first = ex.submit(size_of, File(a))
    assert first.result(timeout=120) == 512 * KiB
    b = tmp_path / "b" / "renamed.bin"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    second = ex.submit(size_of, File(b))
    assert second.result(timeout=120) == 512 * KiB
    r1, r2 = first.report, second.report
    assert r1 is not None and r1.data is not None and r2 is not None and r2.data is not None
    assert r1.data.bytes_fetched == 512 * KiB
    assert (r2.data.bytes_fetched, r2.data.cache_hits, r2.data.inputs[0].source) == (0, 1, "cache")


def test_files_anywhere_in_the_arguments(ex: Executor, tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}"
        p.write_bytes(f"file {i}".encode())
        paths.append(p)
    fut = ex.submit(read_all, {"items": [File(paths[0]), (File(paths[1]), "x"), File(paths[2])]})
    assert fut.result(timeout=120) == [b"file 0", b"file 1", b"file 2"]
    r = fut.report
    assert r is not None and r.data is not None and len(r.data.inputs) == 3 and r.input_size == 18


def test_size_given_wins_over_the_declared_inputs(ex: Executor, tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    fut = ex.options(size=5000).submit(size_of, File(p))
    assert fut.result(timeout=120) == 100
    assert fut.report is not None and fut.report.input_size == 5000


def test_edited_in_place_after_a_run_the_new_bytes_are_staged(ex: Executor, tmp_path: Path) -> None:
    p = tmp_path / "edited.txt"
    p.write_bytes(b"version one")
    assert ex.submit(read_all, {"items": [File(p)]}).result(timeout=120) == [b"version one"]
    with open(p, "r+b") as fh:  # in place: a hard link into the cache would now show this in the old entry
        fh.write(b"VERSION")
    again = ex.submit(read_all, {"items": [File(p)]})
    assert again.result(timeout=120) == [b"VERSION one"]
    assert again.report is not None and again.report.data is not None
    assert again.report.data.bytes_fetched == len(b"VERSION one")


@pytest.mark.parametrize("ex", [False, True], ids=["no-sandbox", "sandbox"], indirect=True)
def test_command_argv_files_and_outputs(ex: Executor, tmp_path: Path) -> None:
    src = tmp_path / "words"
    src.write_bytes(b"abc\n")
    dst = tmp_path / "WORDS"
    fut = ex.submit_command(["sh", "-c", 'tr a-z A-Z < "$0" > "$1"; echo "$0"', File(src), Output(dst)])
    res = fut.result(timeout=120)
    assert dst.read_bytes() == b"ABC\n"
    assert res.stdout.strip().startswith(str(tmp_path / "cache" / "objects"))
    assert fut.report is not None and fut.report.input_size == 4


def test_a_failed_task_leaves_no_output(ex: Executor, tmp_path: Path) -> None:
    dst = tmp_path / "never.txt"
    with pytest.raises(TaskFailed, match="failed after writing half"):
        ex.submit(write_then_fail, Output(dst)).result(timeout=120)
    assert not dst.exists()
    assert [n for n in os.listdir(tmp_path) if "never" in n] == []
    with pytest.raises(TaskFailed, match="did not write its declared output"):
        ex.submit(forget_output, Output(dst)).result(timeout=120)
    assert not dst.exists()


def test_a_kept_output_is_an_input_for_a_later_task(ex: Executor, tmp_path: Path) -> None:
    src = tmp_path / "raw"
    src.write_bytes(b"intermediate")
    mid = tmp_path / "mid.txt"
    first = ex.submit(upper, File(src), Output(mid, keep=True))
    first.result(timeout=120)
    assert not mid.exists()  # kept in the node's cache only
    assert first.report is not None and first.report.data is not None
    [out] = first.report.data.outputs
    assert out.kept and not out.copied_back
    second = ex.submit(read_all, {"items": [File(mid)]})
    assert second.result(timeout=120) == [b"INTERMEDIATE"]
    assert second.report is not None and second.report.data is not None
    assert second.report.data.cache_hits == 1 and second.report.data.bytes_fetched == 0


def test_declaration_errors_are_raised_at_submit(ex: Executor, tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="cannot be read here"):
        ex.submit(size_of, File(tmp_path / "missing"))
    with pytest.raises(InvalidSpec, match="directory does not exist"):
        ex.submit(forget_output, Output(tmp_path / "no-such-dir" / "out"))


def wait_for_fifo(path: str) -> str:
    """Block until someone opens the FIFO ``path`` for writing, then read it."""
    with open(path, "rb") as fh:
        return fh.read().decode()


def test_a_file_changed_before_staging_fails_the_task_with_what_to_do(tmp_path: Path) -> None:
    src = tmp_path / "changing"
    src.write_bytes(b"as submitted")
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    with Executor(cores=1, history=":memory:", cache_dir=str(tmp_path / "cache"), sandbox=False, ledger=False,
                  zygotes=1, workdir=str(tmp_path / "node")) as ex:
        gate = ex.options(resources={"cores": 1}).submit(wait_for_fifo, str(fifo))
        late = ex.options(resources={"cores": 1}).submit(size_of, File(src))  # waits: the one core is taken
        src.write_bytes(b"changed after submit, before staging")
        with open(fifo, "wb") as fh:
            fh.write(b"go")
        assert gate.result(timeout=120) == "go"
        with pytest.raises(TaskFailed, match=r"could not be staged.*changed") as info:
            late.result(timeout=120)
        r = info.value.report
        assert r is not None and r.data is not None and "changed" in r.data.error
        assert [e for e in Cache(str(tmp_path / "cache")).entries() if e.state == "ready"] == []
        # A staging failure is not the task's: re-staged STAGE_RETRIES times, still one attempt.
        assert r.attempts == 1 and [x["attempt"] for x in r.extra["restaged"]] == [1] * STAGE_RETRIES


def test_options_inputs_are_declared_files(ex: Executor, tmp_path: Path) -> None:
    p = tmp_path / "opt-input"
    p.write_bytes(b"y" * 321)
    fut = ex.options(inputs=[p]).submit(size_of, str(p))
    assert fut.result(timeout=120) == 321
    r = fut.report
    assert r is not None and r.input_size == 321 and r.data is not None and r.data.inputs[0].key == str(p)


def test_inside_the_task_file_of_a_declared_path_is_the_staged_copy(ex: Executor, tmp_path: Path) -> None:
    p = tmp_path / "named-by-string"
    p.write_bytes(b"z")
    fut = ex.options(inputs=[p]).submit(_staged_path_of, str(p))
    assert fut.result(timeout=120).startswith(str(tmp_path / "cache" / "objects"))


def _staged_path_of(path: str) -> str:
    from loadmaster import File

    return os.fspath(File(path))


def test_loadmaster_cache_lists_what_the_node_holds(tmp_path: Path) -> None:
    src = tmp_path / "listed.bin"
    src.write_bytes(b"q" * 4096)
    with Executor(history=":memory:", cache_dir=str(tmp_path / "cache"), cache_budget="1MiB", sandbox=False,
                  ledger=False, zygotes=1, workdir=str(tmp_path / "node")) as ex:
        ex.submit(size_of, File(src)).result(timeout=120)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    out = subprocess.run([sys.executable, "-m", "loadmaster.cli", "cache", "--dir", str(tmp_path / "cache")],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert "1 entry, 4 KiB of a 1 MiB budget" in out and str(src) in out and "ready" in out
    doc = json.loads(subprocess.run(
        [sys.executable, "-m", "loadmaster.cli", "cache", "--dir", str(tmp_path / "cache"), "--json"],
        env=env, capture_output=True, text=True, check=True).stdout)
    [entry] = doc["entries"]
    assert entry["size"] == 4096 and entry["names"] == [str(src)] and doc["budget"] == 1 << 20
    gone = subprocess.run([sys.executable, "-m", "loadmaster.cli", "cache", "--dir", str(tmp_path / "cache"),
                           "--evict", "4KiB"], env=env, capture_output=True, text=True, check=True).stdout
    assert "evicted 4 KiB" in gone and "0 entries" in gone


def tree_summary(src: Any, out: Any) -> list[str]:
    """List a staged tree's files; write a tree of outputs."""
    names = sorted(str(p.relative_to(src)) for p in Path(src).rglob("*") if p.is_file())
    os.makedirs(os.path.join(out, "sub"))
    for n in names:
        with open(os.path.join(out, "sub", n.replace("/", "_")), "w") as fh:
            fh.write(n)
    return names


@pytest.mark.parametrize("ex", [False, True], ids=["no-sandbox", "sandbox"], indirect=True)
def test_directories_in_and_out(ex: Executor, tmp_path: Path) -> None:
    atlas = tmp_path / "atlas"
    (atlas / "regions").mkdir(parents=True)
    (atlas / "a.txt").write_text("a")
    (atlas / "regions" / "b.txt").write_text("bb")
    fut = ex.submit(tree_summary, File(atlas), Output(tmp_path / "result"))
    assert fut.result(timeout=120) == ["a.txt", "regions/b.txt"]
    assert sorted(p.name for p in (tmp_path / "result" / "sub").iterdir()) == ["a.txt", "regions_b.txt"]
    r = fut.report
    assert r is not None and r.data is not None and r.input_size == 3
    assert r.data.inputs[0].bytes_copied == 3 and r.data.outputs[0].kind == "dir"


def test_inputs_the_budget_cannot_hold_fail_the_task_saying_so(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"b" * 8192)
    with Executor(history=":memory:", cache_dir=str(tmp_path / "cache"), cache_budget=4096, sandbox=False,
                  ledger=False, zygotes=1, workdir=str(tmp_path / "node")) as ex, \
            pytest.raises(TaskFailed, match=r"cannot hold 8192 more bytes.*raise the cache budget"):
        ex.submit(size_of, File(big)).result(timeout=120)


def test_an_options_input_that_is_no_file_stays_a_grant(ex: Executor, tmp_path: Path) -> None:
    # Parsl passes every inputs= item (plain strings too): a path naming nothing is granted, not declared.
    missing = tmp_path / "not-written-yet"
    fut = ex.options(inputs=[missing, "hi"]).submit(size_of_or_none, str(missing))
    assert fut.result(timeout=120) is None
    r = fut.report
    assert r is not None and r.data is None


def size_of_or_none(path: str) -> int | None:
    return os.path.getsize(path) if os.path.exists(path) else None
