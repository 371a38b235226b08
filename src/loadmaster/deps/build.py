"""Build an environment from a wheel set once per node, and reuse it (runs on the node).

An environment is a directory ``ROOT/KEY/site`` of installed packages that a
zygote puts first on its ``PYTHONPATH``. It is built once per node:

* under a lock file (``ROOT/KEY.lock``): concurrent workers of one node wait
  for the first to finish, then reuse what it built;
* in a temporary directory renamed into place when complete (a crash leaves
  no half environment);
* by unpacking the set's wheels (zip files) into ``site``, or with
  ``uv pip install --offline --no-index --no-deps --target`` from them
  (``method="uv"`` or ``LOADMASTER_ENV_METHOD=uv``; the ``deps`` extra, or
  ``uv`` on ``PATH``). Unpacking is the default: the set is exact (no
  resolution to do), and here it was as fast as uv for numpy (2.4 s against
  2.2 s, compiling included) and faster for a pure-Python set (74 ms against
  0.24-0.74 s: uv's start and its cold cache; bench/deps.py);
* with bytecode compiled once (``compileall``), since these machines set
  ``PYTHONDONTWRITEBYTECODE`` and a zygote that compiled numpy would carry
  the compiler's garbage into every fork.

A warm environment (already built) costs a ``stat`` and a lock. The
environment is held (a shared lock, ``deps/evict.py``) until
:meth:`Environment.release` or the process's end, and environments are kept
under a disk budget, least recently used first out, never one held by any
process of the node.

The set's bytes are hashed before anything is unpacked and must be the
digest its source names (the submitter's, taken when it packed it): a set
corrupted or replaced in transit or in a cache is refused, dropped, and
fetched once more; never built from.

Does not cover: getting the wheel set (``deps/source.py``).
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loadmaster.deps import evict
from loadmaster.deps.evict import READY
from loadmaster.deps.pack import MANIFEST
from loadmaster.deps.source import WheelSet, WheelSource, check_key
from loadmaster.errors import DependencyError


@dataclass(frozen=True)
class Environment:
    """A built environment on a node: its key, its site directory, and how it came to be."""

    key: str
    site: str
    built: bool  # False: it was there already (warm)
    method: str  # "uv", "unpack", or "warm"
    seconds: float
    held: int = field(default=-1, compare=False, repr=False)  # the fd of its use lock (deps/evict.py)

    def release(self) -> None:
        """Let go of the environment: it may be evicted once no process of the node holds it."""
        if self.held >= 0:
            with contextlib.suppress(OSError):
                os.close(self.held)
            object.__setattr__(self, "held", -1)


def default_root() -> str:
    """Where environments live on this node.

    ``LOADMASTER_ENVS``, else ``LOADMASTER_CACHE_DIR/envs`` (the node's cache
    directory), else the user's cache directory.
    """
    given = os.environ.get("LOADMASTER_ENVS")
    if given:
        return given
    cache = os.environ.get("LOADMASTER_CACHE_DIR")
    if cache:
        return os.path.join(cache, "envs")
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("loadmaster"), "envs")


def find_uv() -> str | None:
    """The ``uv`` binary: from the ``uv`` package if installed, else on ``PATH``; None without one."""
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def ensure(key: str, source: WheelSource, root: str | None = None, method: str = "auto",
           budget: int | None = None) -> Environment:
    """Return the environment of ``key`` on this node, held, building it from ``source`` if it is not there.

    ``method``: ``"auto"`` (``LOADMASTER_ENV_METHOD``, else ``"unpack"``), ``"uv"`` or ``"unpack"``.
    ``budget``: bytes the node's environments may take (``None``:
    ``LOADMASTER_ENVS_BUDGET``, else no limit); after a build, the least
    recently used ones nobody holds are evicted down to it
    (:func:`loadmaster.deps.evict.evict`). The caller holds the environment
    until :meth:`Environment.release` (or its process ends).

    Raises:
        DependencyError: the set cannot be fetched, or does not install.
        InvalidSpec: ``LOADMASTER_ENVS_BUDGET`` is not a size.
    """
    t0 = time.perf_counter()
    root = root or default_root()
    check_key(key)
    final = os.path.join(root, key)
    site = os.path.join(final, "site")
    limit = budget if budget is not None else evict.budget_from_env()
    held = evict.hold(root, key)  # before looking: an evictor cannot remove it from under us now
    try:
        if os.path.exists(os.path.join(final, READY)):
            _check_owned(final)
            evict.touch(final)
            return Environment(key, site, False, "warm", time.perf_counter() - t0, held)
        with _locked(os.path.join(root, f"{key}.lock")):
            if os.path.exists(os.path.join(final, READY)):  # another worker built it meanwhile
                _check_owned(final)
                evict.touch(final)
                return Environment(key, site, False, "warm", time.perf_counter() - t0, held)
            used = _build_verified(key, source, root, final, method)
        if limit is not None:
            evict.evict(root, limit)
    except BaseException:
        os.close(held)
        raise
    return Environment(key, site, True, used, time.perf_counter() - t0, held)


def _check_owned(final: str) -> None:
    """Refuse an environment this user did not build: keys are predictable, and in a root
    others can write (a shared ``LOADMASTER_ENVS``) another user could plant one."""
    st = os.lstat(final)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise DependencyError(
            f"the environment {final} is not a directory of this user's that only it can write "
            f"(owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}); someone else made it: remove it, "
            "and keep LOADMASTER_ENVS in a directory only you can write")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class CorruptSet(DependencyError):
    """A wheel set whose bytes are not the digest the submitter packed (refused before anything is unpacked)."""


def _build_verified(key: str, source: WheelSource, root: str, final: str, method: str) -> str:
    """Build from ``source``'s set; a set whose bytes are not its digest is refused, dropped and fetched once more."""
    for attempt in (1, 2):
        ws = source.fetch(key)
        try:
            return _build(key, ws, root, final, method)
        except CorruptSet as exc:
            source.refused(key, ws)
            if attempt == 2:
                raise DependencyError(f"{exc}; fetched again, it was still not: nothing was built. Check the "
                                      "submitter's wheel-set cache (pack it again) and the nodes' caches") from exc
        finally:
            ws.release()
    raise AssertionError("unreachable")


def _verified(fh: Any, key: str, ws: WheelSet) -> None:
    """Hash the open set ``fh`` whole; raise :class:`CorruptSet` unless it is ``ws.digest``."""
    from loadmaster.data.digest import new_hasher

    h = new_hasher()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := fh.readinto(buf):
        h.update(view[:n])
    if h.hexdigest() != ws.digest:
        raise CorruptSet(f"the wheel set of environment {key} ({ws.path}) is not the one the submitter packed: "
                         f"its bytes hash to {h.hexdigest()[:16]}…, the order names {ws.digest[:16]}…; refused")
    fh.seek(0)


def _build(key: str, ws: WheelSet, root: str, final: str, method: str) -> str:
    tmp = tempfile.mkdtemp(prefix=f".{key}-", dir=root)
    try:
        wheels_dir = os.path.join(tmp, "wheels")
        os.makedirs(wheels_dir)
        # One open file, hashed then read: the bytes unpacked are the bytes checked
        # (a set renamed over meanwhile is not read).
        with open(ws.path, "rb", buffering=0) as fh:
            _verified(fh, key, ws)
            with tarfile.open(fileobj=fh) as tar:
                tar.extractall(wheels_dir, filter="data")
        with open(os.path.join(wheels_dir, MANIFEST)) as fh:
            manifest = json.load(fh)
        if manifest.get("key") != key:
            raise DependencyError(f"the wheel set fetched for {key} says it is {manifest.get('key')!r}")
        names = manifest["wheels"]
        bad = [w for w in names if not isinstance(w, str) or os.path.basename(w) != w or w.startswith(".")
               or not w.endswith(".whl")]
        if bad:
            raise DependencyError(f"the wheel set {key} names wheels outside it: {bad[:3]}")
        wheels = [os.path.join(wheels_dir, w) for w in names]
        site = os.path.join(tmp, "site")
        if method == "auto":
            method = os.environ.get("LOADMASTER_ENV_METHOD", "unpack")
        uv = find_uv() if method == "uv" else None
        if method == "uv" and uv is None:
            raise DependencyError("method='uv' but no uv here: pip install 'loadmaster[deps]' (or put uv on PATH)")
        if uv is not None:
            _uv_install(uv, wheels, wheels_dir, site, root)
            used = "uv"
        else:
            os.makedirs(site)
            for w in wheels:
                _unpack(w, site)
            used = "unpack"
        compileall.compile_dir(site, quiet=2, workers=1)
        shutil.rmtree(wheels_dir)
        with open(os.path.join(tmp, READY), "w") as fh:
            json.dump({"key": key, "method": used, "wheels": manifest["wheels"], "digest": ws.digest,
                       "bytes": evict.tree_bytes(site)}, fh)
        os.rename(tmp, final)
        return used
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _uv_install(uv: str, wheels: list[str], wheels_dir: str, site: str, root: str) -> None:
    env = dict(os.environ)
    env.setdefault("UV_CACHE_DIR", os.path.join(root, ".uv-cache"))  # one file system: uv links from it
    argv = [uv, "pip", "install", "--offline", "--no-index", "--no-deps", "--find-links", wheels_dir,
            "--target", site, "--quiet", "--link-mode", "copy", *wheels]
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise DependencyError(f"uv could not install the wheel set (exit {done.returncode}): {done.stderr.strip()}")


def _unpack(wheel: str, site: str) -> None:
    """Install one wheel by unpacking it (``NAME.data/purelib|platlib`` into ``site``, scripts left out)."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            head, _, rest = name.partition("/")
            if head.endswith(".data"):
                kind, _, rest = rest.partition("/")
                if kind not in ("purelib", "platlib") or not rest:
                    continue
                name = rest
            target = os.path.realpath(os.path.join(site, name))
            if not target.startswith(os.path.realpath(site) + os.sep):
                raise DependencyError(f"the wheel {os.path.basename(wheel)} holds a path outside its site: {name}")
            if name.endswith("/"):
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode)
