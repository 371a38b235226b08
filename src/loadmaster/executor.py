"""The :class:`Executor`: the ``concurrent.futures`` face of loadmaster.

Runs in the user's process. ``submit`` and ``submit_command`` check and pickle
the task in the caller's thread (so bad input fails at once, nothing queued),
then hand it to the engine thread (``schedule/engine.py``), which sizes, packs,
starts and settles it. Every task runs in its own process forked from a warm
zygote (``node/process/zygote.py``) and comes back with a :class:`TaskReport` on
``future.report``.

Does not cover: how tasks are measured (``node/``), sized (``plan/``) or
packed (``schedule/``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import math
import os
import shlex
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from loadmaster.backends.base import Backend
from loadmaster.backends.local import LocalBackend
from loadmaster.data.files import File, Output, collecting
from loadmaster.data.replicas import ReplicaTable
from loadmaster.errors import DependencyError, InvalidSpec, TaskFailed
from loadmaster.lifecycle import RunLife
from loadmaster.node.orders import Command, NodeConfig
from loadmaster.node.sandbox.policy import Sandbox, default_parent_dir
from loadmaster.options import TaskOptions, ValueFailure, check_no_clash
from loadmaster.output import OnOutput, OutputWatch, watch_for
from loadmaster.pickling import FunctionCache, cannot_pickle, dumps_args
from loadmaster.plan.strategy import SizingStrategy
from loadmaster.results import TaskReport
from loadmaster.schedule import callbacks
from loadmaster.sizes import parse_size
from loadmaster.spec import Resources, TaskKind, TaskSpec

log = logging.getLogger("loadmaster.executor")

DISPLAY_MAX = 200  # characters of a command kept to name it in messages and reports


def _shorten(text: str) -> str:
    """``text``, or its start with an ellipsis and its length when it is long (a 10 MB line)."""
    if len(text) <= DISPLAY_MAX:
        return text
    return f"{text[:DISPLAY_MAX]}… ({len(text):,} characters)"


class TaskFuture(concurrent.futures.Future):  # type: ignore[type-arg,unused-ignore]
    """A ``Future`` with the task's :class:`TaskReport` on ``.report`` once it is done."""

    report: TaskReport | None
    task_id: int

    def __init__(self, task_id: int, watch: OutputWatch | None = None) -> None:
        super().__init__()
        self.task_id = task_id
        self.report = None
        self._watch = watch  # a streamed task's (loadmaster/output.py)
        if watch is not None:
            watch.future = self

    def _invoke_callbacks(self) -> None:
        watch = self._watch
        if watch is not None and not callbacks.call_later(watch.close):
            watch.close()  # settled off the engine thread (a cancel): nothing of it is queued
        # Settled on the engine thread: the callbacks run on its callback thread instead.
        if self._done_callbacks and callbacks.invoke(self):  # type: ignore[attr-defined]
            return
        super()._invoke_callbacks()  # type: ignore[misc]

    def result(self, timeout: float | None = None) -> Any:
        """As ``Future.result``; a streamed task's lines have all been handed over when it returns."""
        try:
            return super().result(timeout)
        finally:
            self._flushed(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``; a streamed task's lines have all been handed over when it returns."""
        try:
            return super().exception(timeout)
        finally:
            self._flushed(timeout)

    def _flushed(self, timeout: float | None) -> None:
        if self._watch is not None and self.done() and not callbacks.on_runner():
            self._watch.wait(timeout)


class Executor(concurrent.futures.Executor):
    """Runs Python functions and shell commands, each in its own measured process.

    With no arguments it uses what this machine really grants (CPU affinity,
    cgroup limits, Slurm's allocation; for memory, no more than the node's
    ``MemAvailable`` at start), less a memory headroom of 5 % (at least 256
    MiB) for the system, this process and the zygotes; ``cores``, ``memory``,
    ``disk`` and ``gpus`` cap that further.

    Args:
        cores, memory, disk, gpus: caps on what the executor may use; sizes
            as ints (bytes) or strings (``"4GiB"``).
        history: the SQLite history file, ``":memory:"``, or ``None`` for the
            default (``$LOADMASTER_HISTORY`` or the user's data directory).
        strategy: the sizing strategy for every category (a name from
            ``docs/sizing.md``: ``learned``, ``size-aware``, ``max-seen``,
            ``max-throughput``, ``min-waste``, ``fixed``).
        category_strategies: a strategy per category, overriding ``strategy``.
        order: which waiting task starts first: ``"longest-first"`` (the
            longest predicted wall time, from the category's history and the
            task's ``size=``; see ``docs/sizing.md``) or ``"fifo"``
            (submission order); either with bounded backfill.
        preload: modules the zygotes import before forking (e.g. ``["numpy"]``).
        label: a name for this run in the history and reports.
        zygotes: how many forking processes (default: 2 when there are 2+ cores).
        workdir: where task output and scratch files go (default: a temp dir).
        measure: ``"auto"`` (a memory cgroup per task where this process may
            create one, else high-water marks and sampling) or ``"sampling"``.
        fork: ``"libc"`` (fast, skips CPython's at-fork hooks; the zygote stays
            single-threaded) or ``"os"`` (``os.fork``).
        sample_ms: the period of the tree sampler, in milliseconds.
        ledger: the node-wide memory ledger shared with every other loadmaster
            process on this node (``None``: the default place, see
            ``docs/ledger.md``; a path; ``False``: none, this executor then
            only knows its own tasks).
        sandbox: the default :class:`Sandbox` policy of every task (on unless
            ``False``): a fresh work directory, a private ``/tmp``, Landlock
            file rules; see ``docs/sandbox.md``. ``submit(..., sandbox=)``
            overrides it per task.
        sandbox_dir: where task sandboxes are created (default
            ``/var/tmp/loadmaster-<uid>/sandboxes``).
        results: ``"pickle"`` (default) unpickles what a task returns, which
            can run code in this process: for tasks you trust. ``"plain"``
            accepts plain data only (None, bool, int, float, str, bytes, list,
            tuple, dict, set; see ``loadmaster.plain``): a result naming any
            class or function fails with ``UnsafeResult`` as its cause, and a
            task that raised is reported without its exception object.
        backend: what carries tasks to nodes: a
            :class:`~loadmaster.backends.base.Backend`; or a Dask cluster (a
            ``distributed.Client``, a scheduler address ``"tcp://host:port"``,
            or a cluster object such as ``LocalCluster`` or dask-jobqueue's
            ``SLURMCluster``: each node of it runs a node runtime built from
            the arguments above, ``workdir`` aside; see ``docs/cluster.md``);
            default: this machine, one node runtime in this process
            (``backends/local.py``) built from the arguments above. With a
            ``Backend`` object given, the node arguments (caps, ``zygotes``,
            ``workdir``, ``measure``, ``fork``, ``sample_ms``, ``ledger``,
            ``sandbox_dir``) are the backend's.
        deps: ship each function's dependencies (``docs/dependencies.md``):
            the modules it needs are found and packed once into a wheel set,
            and it runs in an environment built from that set once per node;
            ``TaskReport.extra["environment"]`` names it. Off by default (the
            nodes then have what the client has).
        cache_dir: the node's cache of declared files (``File``/``Output``;
            default ``$LOADMASTER_CACHE``, else ``/var/tmp/loadmaster-<uid>/cache``;
            see ``docs/data.md``).
        cache_budget: bytes that cache may hold (default 16 GiB, at most a
            quarter of the disk); taken off the disk tasks may use.

    The run ends when the executor is shut down (``shutdown()``, the end
    of a ``with`` block) and its tasks have ended; without ``shutdown()``,
    when the program exits (after its tasks, as ``concurrent.futures``'
    executors do) or once the executor is no longer referenced and its tasks
    have ended. Then its zygotes exit, its temporary work directory is
    removed and the run is finished in the history (``lifecycle.py``).

    Raises:
        InvalidSpec: a cap or a strategy is malformed.
        HistoryError: the history file is corrupt, foreign or unwritable.
        WorkerLost: a zygote did not start.

    A constructor that raises leaves nothing behind: no zygote, no
    unfinished run in the history, no temporary directory.
    """

    def __init__(
        self,
        cores: float | None = None,
        memory: int | str | None = None,
        disk: int | str | None = None,
        gpus: int | None = None,
        history: str | os.PathLike[str] | None = None,
        *,
        strategy: str | SizingStrategy | None = None,
        category_strategies: Mapping[str, str | SizingStrategy] | None = None,
        order: str = "longest-first",
        preload: Sequence[str] = (),
        label: str | None = None,
        zygotes: int | None = None,
        workdir: str | None = None,
        measure: str = "auto",
        fork: str = "libc",
        sample_ms: float = 10.0,
        ledger: str | os.PathLike[str] | bool | None = None,
        sandbox: Sandbox | bool | Mapping[str, Any] | None = None,
        sandbox_dir: str | None = None,
        results: str = "pickle",
        backend: Backend | str | Any = None,
        deps: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_budget: int | str | None = None,
    ) -> None:
        if measure not in ("auto", "sampling"):
            raise InvalidSpec(f"measure: {measure!r}; accepted: 'auto', 'sampling'")
        if results not in ("pickle", "plain"):
            raise InvalidSpec(f"results: {results!r}; accepted: 'pickle', 'plain'")
        if order not in ("longest-first", "fifo"):
            raise InvalidSpec(f"order: {order!r}; accepted: 'longest-first', 'fifo'")
        if fork not in ("libc", "os"):
            raise InvalidSpec(f"fork: {fork!r}; accepted: 'libc', 'os'")
        caps = Resources(
            cores=cores,
            memory=None if memory is None else parse_size(memory, what="memory"),
            disk=None if disk is None else parse_size(disk, what="disk"),
            gpus=gpus,
        )
        self.label = label or "loadmaster"
        self.sandbox = Sandbox.coerce(dict(sandbox) if isinstance(sandbox, Mapping) else sandbox)
        config = NodeConfig(
            name="local", workdir=workdir, caps=caps, zygotes=zygotes,
            preload=tuple(preload), measure=measure, fork=fork, sample_ms=sample_ms,
            sandbox_dir=sandbox_dir or default_parent_dir(), probe_sandbox=self.sandbox.enabled,
            ledger=False if ledger is False else (None if ledger is None or ledger is True
                                                  else os.fspath(ledger)),
            label=self.label, deps_source=_deps_source() if deps else "",
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else "",
            cache_budget=None if cache_budget is None else parse_size(cache_budget, what="cache_budget"),
        )
        self._cache_root = config.cache_dir
        self._memo: Any = None  # the hash memo of declared inputs, made on the first File
        self.replicas = ReplicaTable()  # who holds which declared file (data/replicas.py)
        if backend is None:
            backend = LocalBackend(config)
        elif not isinstance(backend, Backend):
            from loadmaster.backends.dask import coerce_backend

            # Each node of a cluster has its own work directory and, unless given, its own
            # default sandbox directory (the client's defaults are paths on the client).
            backend = coerce_backend(backend, dataclasses.replace(
                config, name="", workdir=None, sandbox_dir=sandbox_dir or ""))
        self.backend: Backend = backend
        self._transfers: Any = None  # data/transfer/client.py: the submitter's server and the planner
        secret = getattr(backend, "secret", None)
        if not isinstance(backend, LocalBackend) and isinstance(secret, bytes):
            from loadmaster.data.transfer.client import ClientTransfers, address_towards

            # Remote nodes fetch declared files from the submitter's server (and from each other).
            try:
                self._transfers = ClientTransfers(secret, self.replicas,
                                                  address_towards(str(getattr(backend, "address", ""))))
            except BaseException:
                backend.close()
                raise
        try:
            life = RunLife.start(backend, history=history, label=self.label, strategy=strategy,
                                 category_strategies=category_strategies, order=order, results=results,
                                 replicas=self.replicas, transfers=self._transfers)
        except BaseException:
            if self._transfers is not None:
                self._transfers.close()
            raise
        self._life = life
        self.node_info = life.info  # the node the scheduler packs (its capacity, host, sources)
        self.node = life.info.capacity
        self.measure_method = life.measure_method
        self.history = life.history
        self.run_id = life.run_id
        self.planner = life.planner
        self._engine = life.engine
        self.deps = None
        if deps:
            from loadmaster.deps.client import Environments

            self.deps = Environments(cache_dir=config.deps_source, learned=life.history.learned_imports)
            # Holds no reference to this executor.
            life.engine.on_missing_module = functools.partial(
                self.deps.missing, replicas=self.replicas, transfers=self._transfers)
        self._ids = itertools.count(1)
        self._fns = FunctionCache()
        # Dropped without shutdown(): its run still finishes its tasks, then ends (lifecycle.py).
        self._finalizer = weakref.finalize(self, life.stop)
        life.begin()

    # ── submission ────────────────────────────────────────────────────────────
    def _check_resources(self, resources: Resources | Mapping[str, Any] | None) -> Resources | None:
        res = Resources.coerce(dict(resources) if isinstance(resources, Mapping) else resources)
        if res is not None and res.exceeds(self.node):
            # The first node is too small: another may hold it (the engine fails a task that
            # fits no node, or lets it wait where the cluster grows by itself).
            nodes = [n.capacity for n in self.backend.nodes()] or [self.node]
            if all(res.exceeds(cap) for cap in nodes) and not self.backend.grows():
                big = max(nodes, key=lambda c: (c.memory or 0, c.cores or 0.0))
                one = len(nodes) == 1
                raise InvalidSpec(
                    f"resources ask for more than {'this executor' if one else 'its largest node'} has "
                    f"({res.describe_excess(big)}); ask for at most "
                    f"{'the executor' if one else 'the largest node'}'s capacity ({big.describe()})"
                )
        return res

    def _sandbox_for(
        self,
        sandbox: Sandbox | bool | Mapping[str, Any] | None,
        inputs: Sequence[str | os.PathLike[str]],
        outputs: Sequence[str | os.PathLike[str]],
    ) -> tuple[Sandbox, tuple[str, ...], tuple[str, ...]] | None:
        policy = self.sandbox if sandbox is None else Sandbox.coerce(
            dict(sandbox) if isinstance(sandbox, Mapping) else sandbox)
        if not policy.enabled:
            return None
        return (policy, tuple(os.path.abspath(os.fspath(p)) for p in inputs),
                tuple(os.path.abspath(os.fspath(p)) for p in outputs))

    def _declare(self, seen: list[File | Output], argv: tuple[tuple[int, str], ...] = ()) -> Any:
        """The task's declared files as a ``DataOrder`` (``data/declare.py``). Raises InvalidSpec."""
        from loadmaster.data.declare import declare

        if self._memo is None:
            from loadmaster.data.cache import default_root
            from loadmaster.data.digest import HashMemo

            self._memo = HashMemo(os.path.join(os.path.abspath(self._cache_root or default_root()), "index.sqlite"))
        data = declare(seen, self._memo, self.replicas, argv)
        if self._transfers is not None:
            self._transfers.declared(data)
        return data

    def _enqueue(self, task: TaskSpec, fut: TaskFuture) -> TaskFuture:
        self._life.submit(task, fut)
        return fut

    def options(
        self,
        *,
        category: str | None = None,
        resources: Resources | Mapping[str, Any] | None = None,
        size: int | str | None = None,
        sandbox: Sandbox | bool | Mapping[str, Any] | None = None,
        inputs: Sequence[str | os.PathLike[str]] = (),
        outputs: Sequence[str | os.PathLike[str]] = (),
        value_failure: ValueFailure | None = None,
        priority: float = 0.0,
        stream: bool = False,
        on_output: OnOutput | None = None,
    ) -> TaskOptions:
        """Return a view of this executor whose tasks get these loadmaster options.

        ``ex.options(resources={"memory": "2GiB"}).submit(fn, x, size=3)`` runs
        ``fn(x, size=3)`` with 2 GiB; the view also has ``map`` and
        ``submit_command``. The options are checked here, once.

        Args:
            category: tasks of a category are sized together (default: the
                function's qualified name, or the command's program).
            resources: what each task needs (:class:`Resources` or a dict);
                fields left out are sized from the category's history.
            size: a hint of each task's input size in bytes, for size-aware sizing.
            sandbox: the tasks' :class:`Sandbox` policy (default: the executor's).
            inputs: paths the tasks may read (files or directories).
            outputs: paths the tasks may write; nothing else outside a task's
                sandbox is writable.
            value_failure: a check of each returned value that says why it
                stands for a failure (see :class:`TaskOptions`).
            priority: among the waiting tasks, those of a larger priority
                start first (then ``order``'s own ranking); 0 by default.
            stream: print each line the tasks write to their stdout or stderr
                as they write it, to this process's stdout or stderr, prefixed
                with the task's name (``[category #id] ``).
            on_output: instead, call ``on_output(future, stream, line)`` with
                each line as it comes (``stream``: ``"stdout"`` or ``"stderr"``),
                on loadmaster's callback thread. See ``loadmaster/output.py``.

        A streamed task's ``future.result()`` returns once all its lines have
        been handed over; its report keeps its whole output as before.

        Raises:
            InvalidSpec: bad ``resources`` (malformed, or more than the executor
                has), ``size`` or ``priority`` (not a finite number), an
                ``on_output`` that is not callable, or both ``stream`` and ``on_output``.
            SandboxError: a bad ``sandbox`` policy.
        """
        _check_streaming(stream, on_output)
        return TaskOptions(
            executor=self,
            category=category,
            resources=self._check_resources(resources),
            size=None if size is None else parse_size(size, what="size"),
            sandbox=None if sandbox is None else Sandbox.coerce(
                dict(sandbox) if isinstance(sandbox, Mapping) else sandbox),
            inputs=tuple(os.path.abspath(os.fspath(p)) for p in inputs),
            outputs=tuple(os.path.abspath(os.fspath(p)) for p in outputs),
            value_failure=value_failure,
            priority=_priority(priority),
            stream=bool(stream),
            on_output=on_output,
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` in its own monitored process; return its future.

        Every keyword reaches ``fn``. loadmaster's own per-task options
        (category, resources, size, sandbox, inputs, outputs) go through
        :meth:`options`: ``ex.options(resources=...).submit(fn, ...)``. The
        category defaults to the function's qualified name.

        Raises:
            InvalidSpec: a keyword named like one of those options that ``fn``
                cannot take (it would otherwise fail in the task, or be mistaken
                for an option); ``fn`` not callable; a ``multiprocessing.Manager``
                proxy among the arguments (a task cannot reach its manager).
            ExecutorShutdown: the executor was shut down, or the program is
                exiting (a ``RuntimeError``, as ``concurrent.futures`` raises).

        An unpicklable function or argument does not raise here: the future
        fails with :class:`TaskFailed` saying which, the pickling error as its
        ``__cause__``. The executor keeps no reference to ``fn`` once its
        task has ended.
        """
        if kwargs:
            check_no_clash(fn, kwargs)
        return self._submit_function(fn, args, kwargs, None)

    def _submit_function(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any],
                         opts: TaskOptions | None, pickled: tuple[int, bytes] | None = None) -> TaskFuture:
        """Submit ``fn(*args, **kwargs)`` under ``opts`` (already checked; ``None``: the defaults).

        ``pickled``: ``fn``'s key and bytes, when the caller has them (one
        ``map`` pickles a bound method once). For :meth:`submit`, :meth:`map`
        and :class:`TaskOptions` only.
        """
        if not callable(fn):
            raise InvalidSpec(f"submit: {fn!r} is not callable; to run a shell command use submit_command")
        box: tuple[Sandbox, tuple[str, ...], tuple[str, ...]] | None
        if opts is None:
            cat, res, size, judge, prio = None, None, None, None, 0.0
            box = None if not self.sandbox.enabled else (self.sandbox, (), ())
        else:
            cat, res, size, judge, prio = opts.category, opts.resources, opts.size, opts.value_failure, opts.priority
            box = self._sandbox_for(opts.sandbox, opts.inputs, opts.outputs)
        cat = cat or getattr(fn, "__qualname__", None) or type(fn).__name__
        task_id = next(self._ids)
        watch = None if opts is None else watch_for(opts.stream, opts.on_output, f"[{cat} #{task_id}] ")
        fut = TaskFuture(task_id, watch)
        try:
            key, fn_bytes = pickled or self._fns.entry(fn)
            with collecting() as seen:  # the File and Output objects in the arguments, found by pickling
                payload = dumps_args((args, kwargs))
            env = self.deps.plan(fn, cat).key if self.deps is not None else ""
        except InvalidSpec:  # a multiprocessing.Manager proxy
            raise
        except DependencyError as exc:
            fut.set_exception(TaskFailed(f"task {task_id} ({cat}): its dependencies cannot be packed: {exc}",
                                         task_id=task_id, category=cat))
            return fut
        except Exception as exc:
            fut.set_exception(cannot_pickle(task_id, cat, exc))
            return fut
        if opts is not None and opts.inputs:
            seen.extend(_declarable(opts.inputs))
        data = self._declare(seen) if seen else None
        if data is not None and size is None:
            size = sum(r.size for r in data.inputs)
        if env:  # the wheel set goes as one more input (not counted in the task's size)
            data = self.deps.declare(env, data, self.replicas, self._transfers)  # type: ignore[union-attr]
        task = TaskSpec(task_id=task_id, kind=TaskKind.FUNCTION, category=cat, requested=res,
                        payload=payload, fn_key=key, fn=fn_bytes, input_size=size,
                        submitted_at=time.time(), sandbox=box, value_failure=judge, env=env,
                        priority=prio, data=data, watch=watch)
        return self._enqueue(task, fut)

    def submit_command(
        self,
        cmd: str | Sequence[str],
        *,
        category: str | None = None,
        resources: Resources | Mapping[str, Any] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        size: int | str | None = None,
        sandbox: Sandbox | bool | Mapping[str, Any] | None = None,
        inputs: Sequence[str | os.PathLike[str]] = (),
        outputs: Sequence[str | os.PathLike[str]] = (),
        priority: float = 0.0,
        stream: bool = False,
        on_output: OnOutput | None = None,
    ) -> TaskFuture:
        """Run a shell command in its own monitored process tree; return its future.

        ``cmd`` is a string (run by ``/bin/sh -c``) or an argv list (run
        directly). The future's result is a :class:`CommandResult`; a non-zero
        exit raises :class:`CommandFailed`. The category defaults to the
        program's name. ``env`` replaces the environment when given.
        Sandboxed (the default), the command runs in its sandbox's work
        directory unless ``cwd`` is given; ``cwd`` is then writable too.
        ``sandbox``, ``inputs``, ``outputs``, ``priority``, ``stream`` and
        ``on_output`` are as for :meth:`options` (a program that writes to a
        file buffers its output: ``stdbuf -oL``, ``python -u`` stream by line).

        Raises:
            InvalidSpec: an empty command, bad ``resources``, or a ``cwd`` that
                is not an existing directory.
            ExecutorShutdown: the executor was shut down, or the program is exiting.
        """
        if isinstance(cmd, str):
            if not cmd.strip():
                raise InvalidSpec("submit_command: the command is empty; give a shell line or an argv list")
            argv = ["/bin/sh", "-c", cmd]
            # The program's name is the first word: split only the line's start (shlex is
            # pure Python, ~1 s per 100 KB, so a 10 MB line used to hang here).
            head = cmd[:4096]
            try:
                words = shlex.split(head)
            except ValueError:  # an open quote (perhaps where the slice cut it)
                words = head.split()
            program = os.path.basename(words[0]) if words else "sh"
            display = _shorten(cmd)
        else:
            items: Sequence[Any] = cmd  # File and Output are path-likes too
            declared: list[File | Output] = [a for a in items if isinstance(a, File | Output)]
            marks = tuple((i, a.path) for i, a in enumerate(items) if isinstance(a, File | Output))
            argv = [os.fspath(a) for a in cmd]
            if not argv or not argv[0]:
                raise InvalidSpec("submit_command: the command is empty; give a shell line or an argv list")
            program = os.path.basename(argv[0])
            display = _shorten(shlex.join(argv[:64]) + (" …" if len(argv) > 64 else ""))
        _check_streaming(stream, on_output)
        res = self._check_resources(resources)
        box = self._sandbox_for(sandbox, inputs, outputs)
        if isinstance(cmd, str):
            declared, marks = [], ()  # a shell line: no File objects in it
        declared.extend(_declarable(inputs))
        data = self._declare(declared, marks) if declared else None
        task_id = next(self._ids)
        if cwd is not None:
            run_in: str | None = os.path.abspath(os.fspath(cwd))
            if not os.path.isdir(os.fspath(cwd)):
                raise InvalidSpec(
                    f"submit_command: cwd {run_in!r} "
                    f"{'is not a directory' if os.path.exists(cwd) else 'does not exist'}; "
                    "give an existing directory (or no cwd)"
                )
        else:
            run_in = None if box is not None else os.getcwd()
        command = Command(argv=tuple(argv), cwd=run_in, env=dict(env) if env is not None else None)
        watch = watch_for(stream, on_output, f"[{category or program} #{task_id}] ")
        fut = TaskFuture(task_id, watch)
        task = TaskSpec(task_id=task_id, kind=TaskKind.COMMAND, category=category or program,
                        requested=res, payload=b"", command=command,
                        input_size=None if size is None else parse_size(size, what="size"),
                        submitted_at=time.time(), extra={"display": display}, sandbox=box,
                        priority=_priority(priority), data=data, watch=watch)
        if data is not None and task.input_size is None:
            task.input_size = sum(r.size for r in data.inputs)
        return self._enqueue(task, fut)

    def map(  # type: ignore[override,unused-ignore]
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: results in order, one task per item.

        Every task is submitted at once (``chunksize`` is accepted and ignored:
        each item is its own measured task). For loadmaster's options, use
        ``ex.options(...).map(...)``.

        Raises (when iterating): the first failure in order (:class:`TaskFailed`),
        or ``TimeoutError`` when ``timeout`` seconds have passed since the call.
        A task that timed out and every task after it are stopped (waiting
        ones never start, running ones have their tree stopped), as they are
        when the iterator is closed early: their results cannot be reached.
        """
        return self._map(fn, iterables, timeout, None)

    def _map(self, fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...], timeout: float | None,
             opts: TaskOptions | None) -> Iterator[Any]:
        try:  # once for the whole map (a bound method is otherwise pickled at each submit)
            pickled: tuple[int, bytes] | None = self._fns.entry(fn) if callable(fn) else None
        except Exception:
            pickled = None  # each task's future fails, saying why
        futures = [self._submit_function(fn, args, {}, opts, pickled) for args in zip(*iterables, strict=False)]
        deadline = None if timeout is None else time.monotonic() + timeout
        futures.reverse()

        def results() -> Iterator[Any]:
            try:
                while futures:
                    # Popped, and not named in this frame across the yield: the
                    # iterator keeps no result alive once it has handed it over.
                    yield self._result_or_stop(futures.pop(), deadline)
            finally:
                for f in futures:
                    self.cancel(f)

        return results()

    def _result_or_stop(self, fut: TaskFuture, deadline: float | None) -> Any:
        try:
            return fut.result(None if deadline is None else deadline - time.monotonic())
        except BaseException:
            self.cancel(fut)
            raise
        finally:
            del fut

    # ── life cycle ────────────────────────────────────────────────────────────
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; finish (or with ``cancel_futures``, cancel) the waiting ones.

        With ``wait`` (the default) returns once every task has ended, the
        zygotes have exited and the run is finished in the history. Without,
        it returns at once, and the run ends by itself when its last task has
        (so it does for an executor dropped without ``shutdown()``, and at the
        program's exit, which waits for every executor's tasks first, as
        ``concurrent.futures``' executors do).

        Raises:
            HistoryError: (with ``wait``) the end of the run could not be written.
        """
        self._life.stop(cancel_futures)
        if wait:
            self._life.join()
            self._life.raise_end_error()

    def cancel(self, future: TaskFuture) -> bool:
        """Cancel a task: a waiting one never starts; a running one has its tree stopped.

        Returns ``False`` when the task has already ended. A task stopped this
        way (or one already handed to its zygote) ends in ``TaskFailed``
        saying it was cancelled.
        """
        if future.cancel():
            return True
        if future.done():
            return False
        self._engine.cancel(future.task_id)
        return True


def _check_streaming(stream: bool, on_output: OnOutput | None) -> None:
    if on_output is not None and not callable(on_output):
        raise InvalidSpec(f"on_output={on_output!r} is not callable; give a function of (future, stream, line)")
    if stream and on_output is not None:
        raise InvalidSpec("give stream=True (print the lines) or on_output= (a function of your own), not both")


def _priority(value: float) -> float:
    """``value`` as a task's priority (a finite number; larger starts first)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidSpec(f"priority: {value!r} is not a finite number; give an int or a float "
                          "(larger starts first, 0 by default)")
    return float(value)


def _deps_source() -> str:
    """Where this client packs wheel sets: the directory its nodes read them from (deps/source.py)."""
    from loadmaster.deps.pack import default_cache_dir

    return default_cache_dir()


def _declarable(inputs: Iterable[str | os.PathLike[str]]) -> list[File]:
    """``inputs=`` paths that exist, as declared files; one that does not (yet) is only granted.

    Parsl, for one, passes every ``inputs=`` item, plain strings included, and a path
    there need not name a file: it stays a read grant of the sandbox, as before data
    were declared.
    """
    return [File(p) for p in inputs if os.path.lexists(p)]
