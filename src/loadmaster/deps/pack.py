"""Key a dependency set and pack its wheels once, on the submitting side.

The key is a hash of the interpreter's tags (implementation, version, cache
tag, platform), the exact distributions and versions, and the content of the
user's module files: equal keys mean equal environments on every node.

The wheel set is a plain tar (not gzip: 2.3 s against 54 ms for a
numpy-sized set here) of one wheel per distribution, plus ``manifest.json``.
Its content digest (the data layer's BLAKE2b-256 of the tar's bytes) is
taken once, when it is packed, and kept beside it (``KEY.digest``): nodes get
the set by that digest and refuse bytes that do not hash to it
(``deps/build.py``).
A wheel is taken from a directory of cached wheels when one of that exact
name, version and tag is there; otherwise it is rebuilt from the installed
distribution's ``RECORD`` (its files as installed, stored uncompressed,
without bytecode, with a fresh ``RECORD``). The user's own modules go in one
more wheel, ``lm_user_modules``, as files. Sets are cached by key (one file
``KEY.tar`` in the cache directory): packing the same set again costs a
``stat``.

Does not cover: what goes in the set (``deps/dists.py``), building it on a
node (``deps/build.py``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata as md
import io
import json
import os
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass

from loadmaster.deps.dists import Needs, normalise
from loadmaster.errors import DependencyError

MANIFEST = "manifest.json"
USER_WHEEL = "lm_user_modules"


def interpreter_tags() -> dict[str, str]:
    """What an environment built here is bound to: implementation, version, cache tag and platform."""
    return {
        "implementation": sys.implementation.name,
        "version": ".".join(map(str, sys.version_info[:3])),
        "cache_tag": sys.implementation.cache_tag or "",
        "platform": sysconfig.get_platform(),
        "abiflags": getattr(sys, "abiflags", ""),
    }


def _user_files(needs: Needs) -> list[tuple[str, str]]:
    """The user's module files as (path in the wheel, path here), sorted."""
    out = []
    for mod in sorted(needs.user.values(), key=lambda m: m.name):
        if os.path.isdir(mod.path):
            base = os.path.dirname(mod.path)
            for root, dirs, files in os.walk(mod.path):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                for f in sorted(files):
                    if f.endswith(".pyc") or f.startswith("."):
                        continue
                    full = os.path.join(root, f)
                    out.append((os.path.relpath(full, base), full))
        else:
            out.append((os.path.basename(mod.path), mod.path))
    return out


def env_key(needs: Needs) -> str:
    """The environment's key: a hash of the interpreter tags, the distributions and the user's files."""
    h = hashlib.sha256()
    h.update(json.dumps(interpreter_tags(), sort_keys=True).encode())
    for d in sorted(needs.dists.values(), key=lambda d: normalise(d.name)):
        h.update(f"\0{normalise(d.name)}=={d.version}".encode())
    for arc, path in _user_files(needs):
        h.update(f"\0{arc}\0".encode())
        with open(path, "rb") as fh:
            h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class Packed:
    """A wheel set on the submitting side: its key, its tar file, and how it came to be."""

    key: str
    path: str
    wheels: tuple[str, ...]
    cached: bool  # it was already in the cache (nothing packed)
    seconds: float
    size: int
    digest: str = ""  # the tar's content digest (loadmaster.data.digest), taken when it was packed


def digest_path(tar_path: str) -> str:
    """Where the content digest of the wheel set ``KEY.tar`` is kept (``KEY.digest`` beside it)."""
    return tar_path[:-len(".tar")] + ".digest" if tar_path.endswith(".tar") else tar_path + ".digest"


def read_digest(tar_path: str) -> str:
    """The digest recorded for ``tar_path`` when it was packed, or ``""`` (none, or not for its size)."""
    try:
        with open(digest_path(tar_path)) as fh:
            digest, _, size = fh.read().strip().partition(" ")
        return digest if size.isdigit() and int(size) == os.path.getsize(tar_path) else ""
    except (OSError, ValueError):
        return ""


def record_digest(tar_path: str) -> str:
    """Hash ``tar_path`` and keep its digest beside it (written whole, then renamed)."""
    from loadmaster.data.digest import hash_file

    digest = hash_file(tar_path)
    out = digest_path(tar_path)
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{digest} {os.path.getsize(tar_path)}\n")
    os.replace(tmp, out)
    return digest


def default_cache_dir() -> str:
    """Where wheel sets are cached on the submitting side (``LOADMASTER_DEPS_CACHE`` overrides)."""
    given = os.environ.get("LOADMASTER_DEPS_CACHE")
    if given:
        return given
    import platformdirs

    return os.path.join(platformdirs.user_cache_dir("loadmaster"), "wheelsets")


def pack(needs: Needs, cache_dir: str | None = None, wheel_dirs: tuple[str, ...] = ()) -> Packed:
    """Pack the wheel set of ``needs`` into ``cache_dir/KEY.tar`` unless it is there already.

    ``wheel_dirs``: directories of wheels to take as they are when one
    matches a distribution's exact name, version and tag.

    Raises:
        DependencyError: a distribution's files cannot be read (no ``RECORD``).
    """
    t0 = time.perf_counter()
    key = env_key(needs)
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{key}.tar")
    if os.path.exists(path):
        with tarfile.open(path) as tar:
            have = tuple(n for n in tar.getnames() if n.endswith(".whl"))
        digest = read_digest(path) or record_digest(path)  # a set packed before digests were kept
        return Packed(key, path, have, True, time.perf_counter() - t0, os.path.getsize(path), digest)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".tar", dir=cache_dir)
    names: list[str] = []
    try:
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for d in sorted(needs.dists.values(), key=lambda d: normalise(d.name)):
                dist = md.distribution(d.name)
                cached = _cached_wheel(dist, wheel_dirs)
                if cached is not None:
                    tar.add(cached, arcname=os.path.basename(cached))
                    names.append(os.path.basename(cached))
                else:
                    name, data = rebuild_wheel(dist)
                    _add_bytes(tar, name, data)
                    names.append(name)
            user = _user_files(needs)
            if user:
                name, data = _user_wheel(key, user)
                _add_bytes(tar, name, data)
                names.append(name)
            manifest = {"key": key, "tags": interpreter_tags(), "wheels": names,
                        "dists": {normalise(d.name): d.version for d in needs.dists.values()},
                        "user_modules": sorted(needs.user)}
            _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        digest = record_digest(tmp)
        os.replace(digest_path(tmp), digest_path(path))
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, digest_path(tmp)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
        raise
    return Packed(key, path, tuple(names), False, time.perf_counter() - t0, os.path.getsize(path), digest)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _wheel_tag(dist: md.Distribution) -> str:
    """The first ``Tag:`` of the installed ``WHEEL`` file (``py3-none-any`` when there is none)."""
    text = dist.read_text("WHEEL") or ""
    for line in text.splitlines():
        if line.startswith("Tag:"):
            return line.split(":", 1)[1].strip()
    return "py3-none-any"


def _wheel_name(dist: md.Distribution) -> str:
    name = normalise(dist.metadata["Name"]).replace("-", "_")
    return f"{name}-{dist.version}-{_wheel_tag(dist)}.whl"


def _cached_wheel(dist: md.Distribution, wheel_dirs: tuple[str, ...]) -> str | None:
    want = _wheel_name(dist)
    for d in wheel_dirs:
        p = os.path.join(d, want)
        if os.path.isfile(p):
            return p
    return None


def _record_line(arc: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arc},sha256={digest},{len(data)}"


def rebuild_wheel(dist: md.Distribution) -> tuple[str, bytes]:
    """A wheel of the installed distribution ``dist`` from its ``RECORD``: (file name, bytes).

    Files outside the site directory (scripts, headers, data installed
    elsewhere) and bytecode are left out; files stored, not compressed.

    Raises:
        DependencyError: the distribution has no ``RECORD`` (installed without one).
    """
    files = dist.files
    name = _wheel_name(dist)
    if files is None:
        raise DependencyError(
            f"the installed distribution {dist.metadata['Name']} {dist.version} has no RECORD, so its files "
            "are not known; reinstall it with pip or uv, or put its wheel in a wheel directory")
    site = os.path.realpath(str(dist.locate_file("")))
    buf = io.BytesIO()
    records: list[str] = []
    record_arc = ""
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in files:
            arc = str(f).replace(os.sep, "/")
            if arc.startswith("../") or "/__pycache__/" in f"/{arc}" or arc.endswith(".pyc"):
                continue
            if arc.endswith(".dist-info/RECORD"):
                record_arc = arc
                continue
            full = os.path.realpath(str(dist.locate_file(f)))
            if not full.startswith(site + os.sep) or not os.path.isfile(full):
                continue
            with open(full, "rb") as fh:
                data = fh.read()
            info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (os.stat(full).st_mode & 0o777 | 0o100000) << 16
            zf.writestr(info, data)
            records.append(_record_line(arc, data))
        if not record_arc:
            raise DependencyError(f"{dist.metadata['Name']} {dist.version}: no .dist-info/RECORD among its files")
        records.append(f"{record_arc},,")
        zf.writestr(zipfile.ZipInfo(record_arc, date_time=(1980, 1, 1, 0, 0, 0)), "\n".join(records) + "\n")
    return name, buf.getvalue()


def _user_wheel(key: str, files: list[tuple[str, str]]) -> tuple[str, bytes]:
    """One wheel holding the user's module files (``lm_user_modules``, version 0+KEY)."""
    version = f"0+{key[:12]}"
    info_dir = f"{USER_WHEEL}-{version}.dist-info"
    buf = io.BytesIO()
    records = []
    meta = {
        f"{info_dir}/METADATA": f"Metadata-Version: 2.1\nName: {USER_WHEEL}\nVersion: {version}\n".encode(),
        f"{info_dir}/WHEEL": b"Wheel-Version: 1.0\nGenerator: loadmaster\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for arc, path in files:
            with open(path, "rb") as fh:
                data = fh.read()
            zf.writestr(zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0)), data)
            records.append(_record_line(arc, data))
        for arc, data in meta.items():
            zf.writestr(zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0)), data)
            records.append(_record_line(arc, data))
        records.append(f"{info_dir}/RECORD,,")
        zf.writestr(zipfile.ZipInfo(f"{info_dir}/RECORD", date_time=(1980, 1, 1, 0, 0, 0)),
                    "\n".join(records) + "\n")
    return f"{USER_WHEEL}-{version}-py3-none-any.whl", buf.getvalue()
