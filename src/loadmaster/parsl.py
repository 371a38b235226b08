"""``LoadmasterExecutor``: loadmaster as an executor of a Parsl workflow.

Runs in the Parsl workflow's process. Parsl's DataFlowKernel calls
:meth:`LoadmasterExecutor.start` once, then :meth:`~LoadmasterExecutor.submit`
from its launch thread for every task that is ready, and
:meth:`~LoadmasterExecutor.shutdown` at the end. Each task goes to a
:class:`loadmaster.Executor` (the local engine: a process forked from a warm
zygote per task, measured by its memory cgroup, limited, packed and sized from
the history), and the future that comes back is Parsl's too.

What Parsl gives an executor, and what becomes of it here:

* ``resource_specification`` (``parsl_resource_specification=`` of an app):
  the keys Work Queue and TaskVine take (:data:`SPEC_KEYS`; ``memory`` and
  ``disk`` in MB as they take them, here MiB = 2**20 bytes as cctools counts;
  ``running_time_min`` in minutes; ``priority``: larger starts first among
  the waiting tasks, as there). Fields left out are sized from
  loadmaster's history; an unknown key or a bad value raises Parsl's
  ``InvalidResourceSpecification`` at submit.
* The function: Parsl's wrapper around the app (``wrap_error``), whose
  ``__name__`` is the app's name (a bash app's ``__qualname__`` is the
  wrapper's for all of them): that is the task's category unless the
  spec names one.
* The arguments reach the function untouched, ``inputs=``, ``outputs=``,
  ``stdout=``, ``stderr=`` and ``parsl_resource_specification=`` included
  (Parsl's own executors pass them on too). Their paths are declared to the
  sandbox: inputs readable, the directories of outputs and of the std
  streams writable (a directory, not the file, so that a missing output
  is still missing when the app ends).
* The result, by value (cloudpickle, so classes local to the workflow
  survive). A Python app that raised returns Parsl's
  ``RemoteExceptionWrapper`` as its value; the task is recorded as failed in
  loadmaster's history (``TaskOptions.value_failure``) while Parsl gets the
  value and re-raises it as it always does.
* Monitoring: Parsl's own sampler is not forked into the task
  (:meth:`monitor_resources` is false), and its per-try wrapper is taken off
  (:func:`unwrap_monitoring`); each try's start, end and measured figures
  are sent to Parsl's monitoring database from its report instead
  (:func:`monitoring_messages`), once the try has ended.

``backend=`` (a Dask ``Client``, ``LocalCluster``, scheduler address or a
loadmaster ``Backend``) is passed on to ``loadmaster.Executor``: the workflow
then runs on that cluster's nodes, each try's report (and its row in Parsl's
monitoring database) naming the host it ran on.

Does not cover: Parsl's file staging (an executor gets the default staging
providers, ``storage_access=None``), blocks and providers (the engine, or
the Dask cluster given, decides the nodes).
"""

from __future__ import annotations

import collections
import datetime
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from parsl.app.errors import RemoteExceptionWrapper
from parsl.data_provider.files import File
from parsl.executors.base import ParslExecutor
from parsl.executors.errors import InvalidResourceSpecification
from parsl.monitoring.message_type import MessageType
from parsl.monitoring.radios.base import RadioConfig
from parsl.monitoring.radios.filesystem import FilesystemRadio

from loadmaster.errors import LoadmasterError
from loadmaster.executor import Executor, TaskFuture
from loadmaster.results import TaskReport
from loadmaster.spec import Resources

log = logging.getLogger("loadmaster.parsl")

MiB = 1 << 20
ZYGOTE_PRELOAD = ("loadmaster.parsl", "parsl.app.bash")  # what every Parsl task's function imports
WRAPPED_MAX = 256  # functions kept wrapped for their directory (Parsl's are one per app, most often)

SPEC_KEYS = frozenset({"cores", "memory", "disk", "gpus", "running_time_min", "priority", "category"})
"""The ``parsl_resource_specification`` keys accepted, as Work Queue and TaskVine take them."""


def failure_of(value: Any) -> str | None:
    """Say why a returned value stands for a failure: Parsl's ``RemoteExceptionWrapper`` (an app raised).

    Called by the engine thread on each result of a Parsl task
    (``TaskOptions.value_failure``); the future still gets the value.
    """
    if isinstance(value, RemoteExceptionWrapper):
        return f"{value.e_type.__name__}: {value.e_value}".splitlines()[0]
    return None


def resources_from_spec(spec: Mapping[str, Any]) -> tuple[Resources | None, str | None]:
    """Translate a ``parsl_resource_specification`` into loadmaster's request and category.

    Raises:
        InvalidResourceSpecification: an unknown key, or a value that is not
            a positive number where one is needed.
    """
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise InvalidResourceSpecification(
            unknown, f"LoadmasterExecutor accepts {', '.join(sorted(SPEC_KEYS))} "
            "(memory and disk in MB, running_time_min in minutes)")
    fields: dict[str, Any] = {}
    try:
        if spec.get("cores") is not None:
            fields["cores"] = float(spec["cores"])
        if spec.get("memory") is not None:
            fields["memory"] = int(float(spec["memory"]) * MiB)
        if spec.get("disk") is not None:
            fields["disk"] = int(float(spec["disk"]) * MiB)
        if spec.get("gpus") is not None:
            gpus = float(spec["gpus"])
            if not gpus.is_integer():
                raise ValueError(f"gpus: {spec['gpus']!r} is not a whole number")
            fields["gpus"] = int(gpus)
        if spec.get("running_time_min") is not None:
            fields["wall_time"] = float(spec["running_time_min"]) * 60.0
        res = Resources(**fields) if fields else None
    except (TypeError, ValueError) as exc:  # InvalidSpec is a ValueError
        raise InvalidResourceSpecification(set(fields) or set(spec), f"bad value: {exc}") from exc
    category = spec.get("category")
    if category is not None and not isinstance(category, str):
        raise InvalidResourceSpecification({"category"}, f"category must be a string, not {category!r}")
    return res, category


def priority_from_spec(spec: Mapping[str, Any]) -> float:
    """The spec's ``priority`` (larger starts first among the waiting tasks, as in Work Queue), 0 if none.

    Raises:
        InvalidResourceSpecification: a priority that is not a finite number.
    """
    value = spec.get("priority")
    if value is None:
        return 0.0
    try:
        if isinstance(value, bool):
            raise ValueError("a bool")
        prio = float(value)
        if not math.isfinite(prio):
            raise ValueError("not finite")
    except (TypeError, ValueError) as exc:
        raise InvalidResourceSpecification({"priority"}, f"priority must be a number, not {value!r}") from exc
    return prio


def _path_of(item: Any) -> str | None:
    """The local path of a Parsl ``File``, a path string, or a ``(name, mode)`` std-stream tuple."""
    if isinstance(item, File):
        return item.filepath if item.scheme in ("file", "") or item.local_path else None
    if isinstance(item, tuple) and item and isinstance(item[0], str | os.PathLike):
        item = item[0]
    if isinstance(item, str | os.PathLike):
        path = os.fspath(item)
        return path if path and "\0" not in path else None
    return None


def _existing_dir(path: str) -> str:
    """The nearest directory of ``path`` that exists (``path``'s own when it is one)."""
    d = os.path.abspath(path)
    if not os.path.isdir(d):
        d = os.path.dirname(d)
    while not os.path.isdir(d):
        d = os.path.dirname(d)
    return d


def declared_paths(kwargs: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The readable and writable paths Parsl's ``inputs``/``outputs``/``stdout``/``stderr`` name.

    Inputs are declared as they are; outputs and std streams as their
    nearest existing directory (the sandbox would create a declared output
    file that does not exist, hiding an app that failed to write it).
    """
    reads = [p for p in (_path_of(x) for x in _items(kwargs.get("inputs"))) if p]
    writes = {_existing_dir(p) for p in (_path_of(x) for x in _items(kwargs.get("outputs"))) if p}
    for stream in ("stdout", "stderr"):
        p = _path_of(kwargs.get(stream))
        if p:
            writes.add(_existing_dir(p))
    return reads, sorted(writes)


def _items(value: Any) -> Iterable[Any]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return value
    return (value,)


def unwrap_monitoring(func: Callable[..., Any], kwargs: dict[str, Any]
                      ) -> tuple[Callable[..., Any], dict[str, Any], tuple[int, int] | None]:
    """Take Parsl's monitoring wrapper off a task: ``(app function, its kwargs, (task id, try id))``.

    With monitoring on, Parsl wraps every try in a new closure
    (``parsl.monitoring.remote.monitor_wrapper``) that tells the monitoring
    hub when the try starts and ends. This executor says so itself from the
    try's report (:func:`monitoring_messages`), so the task runs the app's
    own function, the same object for every try (pickled once, forked from
    a zygote that holds it), and writes nothing for monitoring. A function
    that is not that wrapper comes back as it is, with ``None``.
    """
    code = getattr(func, "__code__", None)
    inner = getattr(func, "__wrapped__", None)
    if (inner is None or code is None or code.co_qualname != "monitor_wrapper.<locals>.wrapped"
            or "_parsl_monitoring_task_id" not in kwargs):
        return func, kwargs, None
    rest = dict(kwargs)
    task_id = int(rest.pop("_parsl_monitoring_task_id"))
    try_id = int(rest.pop("_parsl_monitoring_try_id", 0))
    return inner, rest, (task_id, try_id)


def monitoring_messages(report: TaskReport, *, run_id: str, task_id: int, try_id: int,
                        hostname: str) -> list[tuple[MessageType, dict[str, Any]]]:
    """What Parsl's monitoring database gets for one try, from its loadmaster report.

    Two ``WORKER_TASK_INFO`` messages (the try started, at ``started_at``;
    it ended, at ``finished_at``), as Parsl's monitoring wrapper sends from a
    worker, and one row of the ``resource`` table with the figures of the
    task's whole process tree as loadmaster measured them:
    ``psutil_process_memory_resident`` is its peak memory (bytes),
    ``psutil_process_time_user`` its user + system CPU seconds (loadmaster
    does not split them; ``psutil_process_time_system`` is left empty),
    ``psutil_process_disk_write`` the bytes it wrote,
    ``psutil_process_children_count`` the most processes seen at once, less
    one, and ``psutil_process_status`` the report's outcome.
    """
    started = datetime.datetime.fromtimestamp(report.started_at)
    ended = datetime.datetime.fromtimestamp(report.finished_at or report.started_at)
    ids = {"run_id": run_id, "task_id": task_id, "try_id": try_id}
    worker = {**ids, "hostname": hostname, "block_id": None}
    return [
        (MessageType.WORKER_TASK_INFO, {**worker, "first_msg": True, "last_msg": False, "timestamp": started}),
        (MessageType.WORKER_TASK_INFO, {**worker, "first_msg": False, "last_msg": True, "timestamp": ended}),
        (MessageType.RESOURCE_INFO, {
            **ids,
            "timestamp": ended,
            "resource_monitoring_interval": 0.0,
            "hostname": hostname,
            "psutil_process_pid": None,
            "psutil_process_memory_resident": float(report.peak_memory),
            "psutil_process_memory_virtual": None,
            "psutil_process_memory_percent": None,
            "psutil_process_time_user": report.cpu_time,
            "psutil_process_time_system": None,
            "psutil_process_disk_write": float(report.disk),
            "psutil_process_disk_read": None,
            "psutil_process_children_count": float(max(0, report.max_processes - 1)),
            "psutil_process_status": report.outcome.value,
        }),
    ]


@dataclass(frozen=True)
class InDirectory:
    """``fn`` called in ``cwd``: a Parsl app runs in the workflow's directory, as under HTEX.

    Runs in the forked task process (after the sandbox, if any, was entered:
    the sandbox's rules still decide what may be read or written there).
    """

    fn: Callable[..., Any]
    cwd: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        os.chdir(self.cwd)
        return self.fn(*args, **kwargs)


def _executor_parameters() -> frozenset[str]:
    params = inspect.signature(Executor.__init__).parameters
    return frozenset(n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD)


class LoadmasterExecutor(ParslExecutor):
    """A Parsl executor whose tasks each run in a measured, limited process of loadmaster's.

    Put it in a Parsl ``Config(executors=[LoadmasterExecutor()])`` in place
    of a ``HighThroughputExecutor``; the apps stay as they are.

    Args:
        label: Parsl's name for this executor (also the run's label in
            loadmaster's history unless ``run_label`` is given).
        storage_access: Parsl staging providers (``None``: Parsl's defaults).
        working_dir: accepted for Parsl's interface; tasks run in the
            workflow's current directory (sandbox off) or in their sandbox.
        remote_monitoring_radio: how Parsl's monitoring wrapper in a task
            reports (``None``: a ``FilesystemRadio`` in the run directory).
        backend: passed on to ``loadmaster.Executor(backend=...)``: a Dask
            ``Client``, cluster object (``LocalCluster``, dask-jobqueue's) or
            scheduler address, whose nodes then run the workflow's tasks.
        run_label: the run's label in loadmaster's history.
        **options: any other ``loadmaster.Executor`` argument (``cores``,
            ``memory``, ``history``, ``strategy``, ``sandbox``, ...).

    Raises:
        TypeError: an option ``loadmaster.Executor`` does not take.
    """

    def __init__(
        self,
        label: str = "loadmaster",
        *,
        storage_access: list[Any] | None = None,
        working_dir: str | None = None,
        remote_monitoring_radio: RadioConfig | None = None,
        backend: Any = None,
        run_label: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.label = label
        self.storage_access = storage_access
        self.working_dir = working_dir
        self.remote_monitoring_radio = remote_monitoring_radio or FilesystemRadio()
        known = _executor_parameters()
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"LoadmasterExecutor: loadmaster.Executor takes no option(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(sorted(known))}")
        if backend is not None:
            options["backend"] = backend
        options["label"] = run_label or f"parsl-{label}"
        # Parsl's app wrappers import Parsl in the task at every call: the zygotes hold it
        # from the start (in parallel, while Parsl starts), not from their first task.
        options["preload"] = (*ZYGOTE_PRELOAD, *(m for m in options.get("preload", ()) if m not in ZYGOTE_PRELOAD))
        self.options: dict[str, Any] = options
        self.executor: Executor | None = None
        self._hostname = os.uname().nodename
        # One InDirectory per (function, directory), kept: loadmaster pickles a function
        # once and its zygotes unpickle it once, by identity (most of Parsl's are per app).
        self._wrapped: collections.OrderedDict[tuple[int, str], InDirectory] = collections.OrderedDict()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"LoadmasterExecutor(label={self.label!r}, {opts})"

    def start(self) -> None:
        """Start the loadmaster engine and its zygotes (called once by Parsl's DataFlowKernel)."""
        self.executor = Executor(**self.options)

    def monitor_resources(self) -> bool:
        """False: Parsl's sampler is not forked into each task; loadmaster measures the whole tree exactly."""
        return False

    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any],
               *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``func(*args, **kwargs)`` as one loadmaster task; return its future.

        Raises:
            InvalidResourceSpecification: an unknown key or bad value in
                ``resource_specification``.
            RuntimeError: the executor was not started, or was shut down.
        """
        if self.executor is None:
            raise RuntimeError(f"LoadmasterExecutor {self.label!r} was not started")
        res, category = resources_from_spec(resource_specification or {})
        priority = priority_from_spec(resource_specification or {})
        tries: tuple[int, int] | None = None
        if self.monitoring_messages is not None:
            func, kwargs, tries = unwrap_monitoring(func, kwargs)
        reads, writes = declared_paths(kwargs)
        if tries is None and self.monitoring_messages is not None:
            radio_dir = getattr(self.remote_monitoring_radio, "run_dir", None)
            if isinstance(radio_dir, str):  # where a FilesystemRadio's sender in the task writes
                writes.append(os.path.join(radio_dir, "monitor-fs-radio"))
        try:
            opts = self.executor.options(
                category=category or getattr(func, "__name__", None) or type(func).__name__,
                resources=res, inputs=reads, outputs=writes, value_failure=failure_of, priority=priority)
        except LoadmasterError as exc:  # e.g. more than the executor has
            raise InvalidResourceSpecification(set(resource_specification or {}), str(exc)) from exc
        fut = opts.submit(self._in_directory(func), *args, **kwargs)
        fut.parsl_executor_task_id = fut.task_id  # type: ignore[attr-defined]
        if tries is not None:
            self._send_figures_when_done(fut, *tries)
        return fut

    def _in_directory(self, func: Callable[..., Any]) -> InDirectory:
        cwd = os.getcwd()  # as under HTEX with a local provider, and as a relative path in the app means
        key = (id(func), cwd)
        wrapped = self._wrapped.get(key)
        if wrapped is not None and wrapped.fn is func:
            self._wrapped.move_to_end(key)
            return wrapped
        wrapped = self._wrapped[key] = InDirectory(func, cwd)
        if len(self._wrapped) > WRAPPED_MAX:
            self._wrapped.popitem(last=False)
        return wrapped

    def _send_figures_when_done(self, fut: TaskFuture, task_id: int, try_id: int) -> None:
        queue, run_id, here = self.monitoring_messages, self.run_id or "", self._hostname

        def send(done: Any) -> None:
            report = done.report
            if report is None or queue is None:  # cancelled before it started
                return
            try:
                for message in monitoring_messages(report, run_id=run_id, task_id=task_id, try_id=try_id,
                                                   hostname=report.host or here):
                    queue.put(message)
            except Exception:  # the monitoring hub went away: the workflow goes on
                log.debug("could not send task %d's figures to Parsl's monitoring", task_id, exc_info=True)

        fut.add_done_callback(send)

    def shutdown(self) -> None:
        """Wait for the running and waiting tasks, stop the zygotes, write the history."""
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        super().shutdown()
