"""The node's content-addressed cache: real files, real processes, kill -9 mid-write.

What a user (or the node runtime) relies on: an entry is named by its bytes
wherever they lived; a torn entry is never visible, whoever was killed when;
several processes writing one digest copy it once; the budget holds, least
recently used first, never an entry in use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loadmaster.data.cache import Cache
from loadmaster.data.digest import HashMemo, hash_file
from loadmaster.errors import DataError

SRC = str(Path(__file__).resolve().parent.parent / "src")
KiB = 1024


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def child(code: str, *args: str, **kw: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, **kw)  # type: ignore[call-overload]


def test_same_bytes_under_another_path_are_a_hit(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"))
    a = write(tmp_path / "one" / "ref.bin", os.urandom(300 * KiB))
    b = tmp_path / "two" / "copy-of-ref.bin"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    memo = HashMemo()
    da, size, kind = memo.path(str(a))
    db, _, _ = memo.path(str(b))
    assert da == db == hash_file(str(a)) and (size, kind) == (300 * KiB, "file")
    first = cache.put_path(str(a), digest=da, name=str(a))
    second = cache.put_path(str(b), digest=db, name=str(b))
    assert (first.hit, first.copied) == (False, 300 * KiB)
    assert (second.hit, second.copied) == (True, 0)
    assert Path(first.path).read_bytes() == a.read_bytes()
    assert os.stat(first.path).st_mode & 0o777 == 0o444
    [entry] = cache.entries()
    assert entry.digest == da and set(entry.names) == {str(a), str(b)} and entry.state == "ready"


def test_directory_digest_is_its_childrens_not_its_path(tmp_path: Path) -> None:
    for root in ("x", "y/deeper"):
        write(tmp_path / root / "atlas" / "a.nii", b"a" * 1000)
        write(tmp_path / root / "atlas" / "sub" / "b.txt", b"bee")
    memo = HashMemo()
    dx, size, kind = memo.path(str(tmp_path / "x" / "atlas"))
    dy, _, _ = memo.path(str(tmp_path / "y" / "deeper" / "atlas"))
    assert dx == dy and (size, kind) == (1003, "dir")
    (tmp_path / "y" / "deeper" / "atlas" / "sub" / "b.txt").write_bytes(b"bee!")
    assert memo.path(str(tmp_path / "y" / "deeper" / "atlas"))[0] != dx
    cache = Cache(str(tmp_path / "cache"))
    put = cache.put_path(str(tmp_path / "x" / "atlas"), digest=dx)
    assert (put.kind, put.size, put.copied) == ("dir", 1003, 1003)
    assert (Path(put.path) / "sub" / "b.txt").read_bytes() == b"bee"
    again = cache.put_path(str(tmp_path / "x" / "atlas"), digest=dx)
    assert again.hit and again.copied == 0


def test_hashing_is_paid_once_per_path_size_mtime_inode(tmp_path: Path) -> None:
    f = write(tmp_path / "data.bin", os.urandom(200 * KiB))
    db = str(tmp_path / "memo.sqlite")
    memo = HashMemo(db)
    d1 = memo.file(str(f))
    d2 = memo.file(str(f))
    assert d1 == d2 and memo.hashed_bytes == 200 * KiB
    other = HashMemo(db)  # another process's memo on the same node: the row is shared
    assert other.file(str(f)) == d1 and other.hashed_bytes == 0
    with open(f, "r+b") as fh:  # edited in place: same inode and size, new mtime
        fh.write(b"X")
    os.utime(f, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns + 1_000_000))
    assert other.file(str(f)) != d1 and other.hashed_bytes == 200 * KiB


def test_a_source_that_is_not_its_digest_is_never_visible(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"))
    good = write(tmp_path / "good", b"good bytes")
    bad = write(tmp_path / "bad", b"evil bytes")
    digest = hash_file(str(good))
    with pytest.raises(DataError, match="changed or is corrupt"):
        cache.put_path(str(bad), digest=digest)
    assert cache.lookup(digest) is None and not os.path.exists(cache.object_path(digest))
    assert cache.used() == 0 and os.listdir(tmp_path / "cache" / "partial") == []


WRITER = """
    import sys
    from loadmaster.data.cache import Cache
    root, digest, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    w = Cache(root).begin(digest, size)
    while w.received < size:
        chunk = sys.stdin.buffer.read1(65536)
        if not chunk:
            break
        w.write(chunk)
        print(w.received, flush=True)
    print("commit", w.commit(), flush=True)
"""


def test_kill_9_mid_write_leaves_nothing_visible(tmp_path: Path) -> None:
    root = str(tmp_path / "cache")
    cache = Cache(root)
    data = os.urandom(1 << 20)
    digest = hash_file(str(write(tmp_path / "src", data)))
    proc = child(WRITER, root, digest, str(len(data)), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    got = 0
    while got < len(data) // 2:  # the writer says how far it got: half the bytes are in
        got = int(proc.stdout.readline())
    view = cache.partial(digest)
    assert view is not None and view.size == len(data) and view.received() == got and view.ready() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Nothing torn is visible: no entry, to this process or to a new one.
    assert cache.lookup(digest) is None and not os.path.lexists(cache.object_path(digest))
    reopened = Cache(root)  # its sweep drops the dead writer's partial entry
    assert reopened.partial(digest) is None and reopened.used() == 0
    put = reopened.put_path(str(tmp_path / "src"), digest=digest)
    assert not put.hit and Path(put.path).read_bytes() == data


def test_kill_9_while_caching_an_output_leaves_only_a_swept_temporary(tmp_path: Path) -> None:
    root = str(tmp_path / "cache")
    Cache(root)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = child("""
        import sys
        from loadmaster.data.cache import Cache
        Cache(sys.argv[1]).put_path(sys.argv[2])  # an output: digest not known in advance
    """, root, str(fifo))
    with open(fifo, "wb") as fh:  # opens once the writer has opened its end
        fh.write(b"half of an output " * 4096)
        fh.flush()
        tmps = [n for n in os.listdir(Path(root) / "tmp") if n.endswith(".f")]
        while not tmps or os.path.getsize(Path(root) / "tmp" / tmps[0]) == 0:
            tmps = [n for n in os.listdir(Path(root) / "tmp") if n.endswith(".f")]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cache = Cache(root)
    assert cache.entries() == [] and os.listdir(Path(root) / "tmp") == []
    assert [p for p in (Path(root) / "objects").rglob("*") if p.is_file()] == []


def test_concurrent_writers_of_one_digest_copy_it_once(tmp_path: Path) -> None:
    root = str(tmp_path / "cache")
    Cache(root)
    src = write(tmp_path / "shared.bin", os.urandom(4 << 20))
    digest = hash_file(str(src))
    procs = [child("""
        import sys
        from loadmaster.data.cache import Cache
        put = Cache(sys.argv[1]).put_path(sys.argv[2], digest=sys.argv[3])
        print(put.copied, put.hit)
    """, root, str(src), digest, stdout=subprocess.PIPE) for _ in range(4)]
    outs = [p.communicate()[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(o[0]) for o in outs) == 4 << 20  # one of them copied, three found it ready
    assert sorted(o[1] for o in outs) == ["False", "True", "True", "True"]
    cache = Cache(root)
    assert [e.digest for e in cache.entries()] == [digest]
    assert Path(cache.object_path(digest)).read_bytes() == src.read_bytes()


def test_lru_under_the_budget_never_evicts_a_pinned_entry(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"), budget=3 * KiB)
    files = [write(tmp_path / f"f{i}", bytes([i]) * KiB) for i in range(5)]
    d = [hash_file(str(f)) for f in files]
    for i in range(3):
        cache.put_path(str(files[i]), digest=d[i])
    cache.touch(d[0])  # f0 used last: f1 is now the least recently used
    cache.put_path(str(files[3]), digest=d[3])
    assert cache.lookup(d[1]) is None and all(cache.lookup(x) for x in (d[0], d[2], d[3]))
    pin = cache.pin(d[2])  # f2 is the least recently used, but a task is reading it
    cache.put_path(str(files[4]), digest=d[4])
    assert cache.lookup(d[2]) is not None and cache.lookup(d[0]) is None
    assert cache.used() <= cache.budget
    pins = [cache.pin(x) for x in (d[3], d[4])]
    big = write(tmp_path / "big", b"z" * KiB)
    with pytest.raises(DataError, match="cannot hold"):
        cache.put_path(str(big), digest=hash_file(str(big)))
    assert cache.lookup(hash_file(str(big))) is None
    for p in (pin, *pins):
        p.close()


def test_an_entry_can_be_read_while_it_arrives(tmp_path: Path) -> None:
    cache = Cache(str(tmp_path / "cache"))
    data = os.urandom(256 * KiB)
    digest = hash_file(str(write(tmp_path / "src", data)))
    w = cache.begin(digest, len(data))
    assert w is not None
    w.write(data[:100_000])
    view = cache.partial(digest)
    assert view is not None and view.received() == 100_000
    with open(view.path, "rb") as fh:  # a reader (a transfer serving it on) reads what arrived
        assert fh.read(view.received()) == data[:100_000]
        w.write(data[100_000:])
        path = w.commit()
        assert fh.read() == data[100_000:]  # the same file, renamed into place
    assert view.ready() == path and cache.begin(digest, len(data)) is None
