"""The submitting side's environments: for each function, the key of the environment it runs in.

Used by the executor with ``Executor(deps=True)``. The first time a function
is submitted (per category) its modules are found (``deps/find.py``), joined
with what the category's earlier runs imported (the history's
``learned_imports``), mapped to distributions and the user's files
(``deps/dists.py``), and the wheel set is packed once, cached by key
(``deps/pack.py``). Later submissions of the same function cost a dict
look-up. A task that fails on a node with ``ModuleNotFoundError`` gets, once,
an environment with the missing module's distribution added
(:meth:`Environments.with_missing`).

The wheel set goes to the nodes as one more declared input of each task of
its environment (:meth:`Environments.declare`): a ``data.refs.InputRef``
named by the tar's content digest, taken when it was packed, with the
submitter's path as a source. The data layer then moves it like a ``File``:
into each node's cache once, from peers on the Dask backend (the submitter is
one source among them, with a small limit), and the node builds from its
cache (``deps/source.py``'s ``CacheSource``).

Does not cover: building on the node (``deps/build.py``, through the node
runtime), moving bytes (``data/``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadmaster.deps import dists, find, pack
from loadmaster.errors import DependencyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """One environment for a function: its key, what is in it, and why."""

    key: str  # "" when nothing needs shipping (the node's own environment)
    needs: dists.Needs
    found: find.Found
    packed: pack.Packed | None  # None when nothing needs shipping
    learned: tuple[str, ...] = ()


class Environments:
    """Environment keys by function, packed once (thread-safe: submit may come from any thread).

    Args:
        cache_dir: where wheel sets are cached (``None``: ``pack.default_cache_dir()``);
            a node's :class:`~loadmaster.deps.source.LocalSource` reads the same directory.
        wheel_dirs: directories of ready wheels to use as they are (default:
            ``LOADMASTER_WHEEL_DIRS``, directories separated by ``os.pathsep``).
        learned: ``category -> modules`` earlier runs imported (``History.learned_imports``).
    """

    MAX = 1024  # functions remembered

    def __init__(self, cache_dir: str | None = None, wheel_dirs: tuple[str, ...] = (),
                 learned: Callable[[str], list[str]] | None = None) -> None:
        self.cache_dir = cache_dir or pack.default_cache_dir()
        env_dirs = os.environ.get("LOADMASTER_WHEEL_DIRS", "")
        self.wheel_dirs = wheel_dirs or tuple(d for d in env_dirs.split(os.pathsep) if d)
        self._learned = learned
        self._lock = threading.Lock()
        self._plans: dict[tuple[int, str], tuple[weakref.ref[Any], Plan]] = {}
        self._by_key: dict[str, Plan] = {}
        self._served: set[str] = set()  # keys whose set the submitter's transfer server was told of

    def plan(self, fn: Callable[..., Any], category: str) -> Plan:
        """The environment of ``fn`` submitted under ``category`` (found and packed the first time)."""
        # Held weakly (the executor holds callables weakly); a bound method by its function.
        target = getattr(fn, "__func__", fn)
        entry = self._plans.get((id(target), category))
        if entry is not None and entry[0]() is target:
            return entry[1]
        learned = tuple(self._learned(category)) if self._learned is not None else ()
        found = find.find_modules(fn)
        try:
            plan = self._make(found, learned)
        except DependencyError as exc:
            if not learned:
                raise
            # Learned names are what tasks reported (hostile input): one that cannot be
            # packed must not fail every later submit of the category. Without them.
            log.warning("category %s: the modules earlier runs imported (%s) cannot be packed (%s); "
                        "packing without them", category, ", ".join(learned), exc)
            plan = self._make(found, ())
        try:
            ref = weakref.ref(target)
        except TypeError:
            return plan  # not weakly referable (a builtin): found again at each submit
        with self._lock:
            if len(self._plans) >= self.MAX:
                self._plans.pop(next(iter(self._plans)))
            self._plans[(id(target), category)] = (ref, plan)
        return plan

    def _make(self, found: find.Found, learned: tuple[str, ...], extra: tuple[str, ...] = ()) -> Plan:
        needs = dists.resolve(found, (*learned, *extra))
        if not needs.dists and not needs.user:
            # Nothing to ship: the node's own environment (and zygotes) serve it.
            plan = Plan("", needs, found, None, (*learned, *extra))
        else:
            packed = pack.pack(needs, self.cache_dir, self.wheel_dirs)
            plan = Plan(packed.key, needs, found, packed, (*learned, *extra))
        with self._lock:
            self._by_key[plan.key] = plan
        return plan

    def with_missing(self, key: str, module: str) -> Plan | None:
        """The environment ``key`` with the provider of ``module`` added, or None if nothing here provides it.

        Called when a task in environment ``key`` raised ``ModuleNotFoundError``
        for ``module`` on a node (an import this side could not see).
        """
        if not module:
            return None
        # Key "": nothing was shipped (many functions share it): the module alone.
        plan = self._by_key.get(key) if key else Plan("", dists.Needs(), find.Found(), None)
        if plan is None:
            return None
        top = module.split(".")[0]
        extra = dists.resolve([], (top,))  # the task named it: a distribution only, never the user's files
        if not extra.dists and not extra.user:
            return None
        if set(extra.dists) <= set(plan.needs.dists) and set(extra.user) <= set(plan.needs.user):
            return None  # already there: adding it again would not help
        return self._make(plan.found, plan.learned, (top,))

    def declare(self, key: str, data: Any, replicas: Any, transfers: Any = None) -> Any:
        """``data`` (a task's ``DataOrder``, or None) with environment ``key``'s wheel set as one more input.

        ``""``: nothing to ship, ``data`` as it is. The set's sources are the
        nodes ``replicas`` (the executor's ``ReplicaTable``) says hold it,
        then the submitter's file; ``transfers`` (``ClientTransfers``, remote
        nodes) serves it from the submitter's server, told once per key.
        """
        if not key:
            return data
        from loadmaster.data.declare import HOST
        from loadmaster.data.refs import DataOrder, InputRef, Source

        plan = self._by_key[key]
        packed = plan.packed
        assert packed is not None and packed.digest
        ref = InputRef(packed.path, packed.digest, packed.size, "file",
                       (*replicas.sources(packed.digest), Source("client", HOST, packed.path)))
        if transfers is not None and key not in self._served:
            transfers.declared(DataOrder((ref,)))
            self._served.add(key)
        if data is None:
            return DataOrder((ref,))
        return dataclasses.replace(data, inputs=(*data.inputs, ref))

    def missing(self, key: str, module: str, data: Any, replicas: Any, transfers: Any = None
                ) -> tuple[str, Any] | None:
        """The engine's ``on_missing_module``: the key of :meth:`with_missing`'s environment and the
        task's ``data`` with that environment's wheel set in place of ``key``'s, or None."""
        plan = self.with_missing(key, module)
        if plan is None:
            return None
        from loadmaster.deps.source import without_wheels

        data = without_wheels(data, key) if key and data is not None else data
        return plan.key, self.declare(plan.key, data, replicas, transfers)
