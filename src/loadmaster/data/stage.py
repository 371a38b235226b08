"""The node runtime's side of declared files: inputs into the cache before a task, outputs after.

Runs on the node: :meth:`NodeData.stage` on a staging thread when an order
with declared files arrives (``data/stagers.py``), :meth:`NodeData.finish`
in the node runtime's thread when its ``Done`` comes (``node/runtime.py``). Each input is pinned in the
cache while the task runs (no eviction under it) and the task gets the
entry's path (read only: the entry is 0444, and the sandbox grants it read
only). Each output gets a path in the attempt's own directory
``<workdir>/data/<task>-<attempt>/<i>/<name>``, which the sandbox grants
writable; after a successful task it is moved into the cache and, unless
kept, copied to the submitter's path through a temporary name in the same
directory and a rename, so a reader never sees half a file and a failed task
leaves nothing there.

Staging is synchronous here, on one of the runtime's staging threads
(``data/stagers.py``): a cache hit costs a lookup; a miss costs a copy of
the bytes, on that thread only.

Does not cover: hashing or storing (``data/cache.py``), getting bytes from
elsewhere (``data/fetch.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import time
import uuid
from dataclasses import dataclass, field

from loadmaster.data.cache import Cache, Pin, remove_tree
from loadmaster.data.fetch import Fetcher, LocalFetcher
from loadmaster.data.refs import DataOrder, DataReport, Produced, Staged
from loadmaster.errors import DataError


@dataclass(slots=True)
class Attempt:
    """One staged attempt: what the task sees, what to grant, what to release."""

    inputs: dict[str, str]
    outputs: dict[str, str]
    read: tuple[str, ...]
    write: tuple[str, ...]
    outdir: str
    order: DataOrder
    staged: tuple[Staged, ...]
    staging_time: float
    pins: list[Pin] = field(default_factory=list)
    command: bool = False  # the order is a command (it succeeded when it exited 0)


class NodeData:
    """Declared files of one node runtime (see the module docstring).

    Args:
        node: the node's name (in reports).
        workdir: the node's work directory (outputs are written under ``data/`` there).
        cache: the node's cache.
        fetcher: how a missing digest gets into the cache (default: :class:`LocalFetcher`).

    With ``pull_outputs`` set (a node serving transfers), a file output that is
    not kept stays in the cache, reported neither kept nor copied back: the client
    pulls it from this node's server (``data/transfer/client.py``).
    """

    def __init__(self, node: str, workdir: str, cache: Cache, fetcher: Fetcher | None = None) -> None:
        self.node, self.cache = node, cache
        self.host = socket.gethostname()
        self.fetcher = fetcher or LocalFetcher(self.host)
        self.pull_outputs = False  # outputs stay in the cache for the client to pull (a remote node)
        self.outroot = os.path.join(workdir, "data")
        os.makedirs(self.outroot, exist_ok=True)

    def report(self, att: Attempt | None, *, produced: tuple[Produced, ...] = (), output_time: float = 0.0,
               error: str = "") -> DataReport:
        """The :class:`DataReport` of an attempt."""
        return DataReport(self.node, self.host, self.cache.root, att.staged if att else (), produced,
                          att.staging_time if att else 0.0, output_time, error)

    def stage(self, task_id: int, attempt: int, order: DataOrder) -> Attempt:
        """Get every input into the cache (pinned) and make the output paths.

        Raises:
            DataError: an input could not be staged (nothing is left pinned).
        """
        t0 = time.monotonic()
        pins: list[Pin] = []
        inputs: dict[str, str] = {}
        staged: list[Staged] = []
        try:
            for ref in order.inputs:
                t1, wall = time.monotonic(), time.time()
                pin = self.cache.pin(ref.digest)
                pins.append(pin)
                path = self.cache.lookup(ref.digest)
                if path is not None:
                    self.cache.touch(ref.digest, ref.key)
                    staged.append(Staged(ref.key, ref.digest, ref.size, True, 0, "cache", time.monotonic() - t1,
                                         started_at=wall))
                else:
                    got = self.fetcher.fetch(ref.digest, ref.size, ref.kind, ref.sources, self.cache, ref.key)
                    path = got.path
                    staged.append(Staged(ref.key, ref.digest, ref.size, got.bytes_moved == 0, got.bytes_moved,
                                         got.source, got.seconds, got.via, wall))
                inputs[ref.key] = path
            outdir = os.path.join(self.outroot, f"{task_id}-{attempt}")
            outputs: dict[str, str] = {}
            if order.outputs:
                remove_tree(outdir)
                for i, out in enumerate(order.outputs):
                    d = os.path.join(outdir, str(i))
                    os.makedirs(d)
                    outputs[out.key] = os.path.join(d, os.path.basename(out.key) or "output")
        except BaseException:
            for p in pins:
                p.close()
            raise
        return Attempt(inputs, outputs, tuple(inputs.values()), (outdir,) if order.outputs else (), outdir,
                       order, tuple(staged), time.monotonic() - t0, pins)

    def finish(self, att: Attempt, ok: bool) -> DataReport:
        """After the task: on success, cache its outputs and copy them back; always unpin and clean up."""
        t0 = time.monotonic()
        produced: list[Produced] = []
        error = ""
        try:
            if ok:
                for out in att.order.outputs:
                    local = att.outputs[out.key]
                    if not os.path.lexists(local):
                        error = (f"the task did not write its declared output {out.key!r} (at {local!r} on "
                                 f"{self.node}); write to os.fspath(Output(...)) in the task")
                        break
                    check_output(local, out.key)
                    put = self.cache.put_path(local, name=out.key, move=True)
                    copied = False
                    if not out.keep and not self.pull_outputs:
                        copy_back(put.path, out.key)
                        copied = True
                    produced.append(Produced(out.key, put.digest, put.size, put.kind, out.keep, copied))
        except (OSError, DataError) as exc:
            error = f"declared output could not be saved on {self.node}: {exc}"
        finally:
            self.release(att)
        return self.report(att, produced=tuple(produced), output_time=time.monotonic() - t0, error=error)

    def release(self, att: Attempt) -> None:
        """Unpin the inputs and remove the attempt's output directory (idempotent)."""
        for p in att.pins:
            p.close()
        att.pins.clear()
        if att.order.outputs:
            remove_tree(att.outdir)


def check_output(path: str, key: str) -> None:
    """Refuse an output that is, or holds, anything but plain files and directories.

    What a task leaves is hostile: a symlink (or a hard link) to ``/etc/shadow``
    would be hashed, made read-only (``chmod`` follows links: the target's
    mode would change) and copied to the submitter, with the node's rights.
    The task's processes have all ended here, so nothing changes after the check.

    Raises:
        DataError: a symbolic link, a hard-linked file, or a special file.
    """
    def bad(p: str, st: os.stat_result) -> str:
        if stat.S_ISLNK(st.st_mode):
            return f"{p!r} is a symbolic link"
        if stat.S_ISREG(st.st_mode):
            return f"{p!r} has {st.st_nlink} hard links" if st.st_nlink > 1 else ""
        return "" if stat.S_ISDIR(st.st_mode) else f"{p!r} is not a regular file or a directory"

    why = bad(path, os.lstat(path))
    if not why and os.path.isdir(path):
        for dirpath, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                why = bad(os.path.join(dirpath, name), os.lstat(os.path.join(dirpath, name)))
                if why:
                    break
            if why:
                break
    if why:
        raise DataError(f"the declared output {key!r}: {why}; an output holds only regular files and "
                        "directories (links are refused: they would reach files the task may not)")


def replace_tree(tmp: str, dest: str) -> None:
    """Rename the complete tree ``tmp`` to ``dest``; an existing directory there is replaced whole."""
    if os.path.isdir(dest) and not os.path.islink(dest):
        old = tmp + ".old"
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(tmp, dest)


def copy_back(src: str, dest: str) -> None:
    """Copy cache entry ``src`` (file or tree) to ``dest`` atomically: a temporary name beside it, then rename.

    An existing file at ``dest`` is replaced; an existing directory is replaced whole.

    Raises:
        OSError: ``dest``'s directory is missing or not writable.
    """
    parent = os.path.dirname(dest)
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.loadmaster-{uuid.uuid4().hex[:12]}")
    try:
        if os.path.isdir(src):
            shutil.copytree(src, tmp, copy_function=shutil.copyfile)
            for dirpath, _dirs, files in os.walk(tmp):
                os.chmod(dirpath, 0o755)
                for f in files:
                    os.chmod(os.path.join(dirpath, f), 0o644)
            replace_tree(tmp, dest)
            return
        else:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(tmp)
        raise
