"""Directories on the transfer wire: a manifest, then the files' bytes in its order.

A directory entry (a cache entry named by a hash of its children, or a
directory the submitter declared) is answered with the header
``{"ok": true, "size": <bytes of its files>, "offset": 0, "state": "tree",
"manifest": <length>}``, then the manifest (JSON, a list of ``[path, kind,
size]`` in walk order: each directory before what it holds), then each
file's bytes in manifest order. A tree is always sent whole (``offset`` 0):
a receiver cut short starts again from another holder.

The receiver trusts nothing in it: the manifest is bounded in length and
entries, every path is relative, made of plain names (no ``..``, no empty
or absolute parts), under a directory listed before it, never twice; the
sizes add up to the declared size. Only directories and regular files are
created (never a link), inside a new temporary directory; the tree is then
hashed whole and must be the digest asked for before it becomes visible
(``Cache.put_path``, or the client's rename into the submitter's path).

Does not cover: files (``server.py``, ``peer.py``), choosing sources (``planner.py``).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from loadmaster.data.transfer.protocol import ProtocolError, recv_exact

MAX_MANIFEST = 16 << 20  # bytes of manifest JSON
MAX_ENTRIES = 200_000
BUF = 1 << 20


def manifest_of(root: str) -> tuple[list[list[Any]], int]:
    """The manifest of the tree at ``root`` and the bytes of its files.

    Raises:
        ProtocolError: it holds something other than directories and regular files.
    """
    out: list[list[Any]] = []
    total = 0
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(dirpath, root)
        base = "" if rel == "." else rel + "/"
        for d in dirs:
            if os.path.islink(os.path.join(dirpath, d)):
                raise ProtocolError(f"{base}{d} is a link; trees hold only directories and regular files")
            out.append([base + d, "dir", 0])
        for f in sorted(files):
            st = os.lstat(os.path.join(dirpath, f))
            if not os.path.isfile(os.path.join(dirpath, f)) or os.path.islink(os.path.join(dirpath, f)):
                raise ProtocolError(f"{base}{f} is not a regular file")
            out.append([base + f, "file", st.st_size])
            total += st.st_size
    return out, total


def send_tree(conn: socket.socket, root: str, manifest: list[list[Any]], on_sent: Any = None) -> None:
    """Send ``manifest`` (as JSON) and then each file's bytes (the header went out before)."""
    body = json.dumps(manifest, separators=(",", ":")).encode()
    conn.sendall(body)
    for path, kind, size in manifest:
        if kind != "file":
            continue
        with open(os.path.join(root, path), "rb", buffering=0) as fh:
            if size:
                n = conn.sendfile(fh, 0, size)
                if on_sent is not None:
                    on_sent(n)


def manifest_length(root: str) -> tuple[list[list[Any]], int, int]:
    """``(manifest, bytes of files, length of the manifest's JSON)`` of the tree at ``root``."""
    manifest, total = manifest_of(root)
    return manifest, total, len(json.dumps(manifest, separators=(",", ":")).encode())


def check_manifest(raw: bytes, size: int) -> list[tuple[str, str, int]]:
    """The manifest's entries, validated (see the module docstring).

    Raises:
        ProtocolError: not a list of ``[path, kind, size]``, a bad path, or sizes that do not add up.
    """
    try:
        entries = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"the tree's manifest is not JSON: {exc}") from None
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise ProtocolError(f"the tree's manifest is not a list of at most {MAX_ENTRIES} entries")
    dirs = {""}
    seen: set[str] = set()
    out: list[tuple[str, str, int]] = []
    total = 0
    for e in entries:
        if (not isinstance(e, list) or len(e) != 3 or not isinstance(e[0], str) or e[1] not in ("dir", "file")
                or not isinstance(e[2], int) or isinstance(e[2], bool) or e[2] < 0):
            raise ProtocolError(f"a malformed manifest entry {str(e)[:80]!r}")
        path, kind, n = e
        parts = path.split("/")
        if (not path or "\x00" in path or path in seen or any(p in ("", ".", "..") for p in parts)
                or "/".join(parts[:-1]) not in dirs):
            raise ProtocolError(f"a manifest path {path[:80]!r} that is not a new plain name under a listed directory")
        seen.add(path)
        if kind == "dir":
            if n:
                raise ProtocolError(f"the directory {path[:80]!r} has a size")
            dirs.add(path)
        total += n
        out.append((path, kind, n))
    if total != size:
        raise ProtocolError(f"the tree's files hold {total} bytes, {size} were declared")
    return out


def recv_tree(sock: socket.socket, ans: dict[str, Any], size: int, dest: str) -> int:
    """Receive a tree announced by ``ans`` into the new directory ``dest``; return the bytes received.

    ``dest`` must not exist; on failure what was made of it is left for the caller to remove.

    Raises:
        ProtocolError: not a tree, a bad manifest, or the server stopped short.
    """
    length = ans.get("manifest")
    if ans.get("state") != "tree" or not isinstance(length, int) or not 0 < length <= MAX_MANIFEST:
        raise ProtocolError(f"asked for a directory, answered {str(ans)[:120]}")
    entries = check_manifest(recv_exact(sock, length), size)
    os.mkdir(dest, 0o755)
    got = 0
    buf = bytearray(BUF)
    view = memoryview(buf)
    for path, kind, n in entries:
        target = os.path.join(dest, path)
        if kind == "dir":
            os.mkdir(target, 0o755)
            continue
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with open(fd, "wb", buffering=0) as fh:
            left = n
            while left:
                k = sock.recv_into(view, min(BUF, left))
                if not k:
                    raise ProtocolError(f"the source stopped at {got} of {size} bytes of the tree")
                chunk = view[:k]
                while chunk:
                    chunk = chunk[fh.write(chunk) or 0:]
                left -= k
                got += k
    return got
