"""What one finished attempt means: its :class:`TaskReport`, and its value or error.

Runs in the engine thread (``schedule/engine.py`` calls these for every
:class:`~loadmaster.node.orders.Done`). Pure functions of the task, the event
and the node it ran on: they read nothing else and change nothing, so the
engine keeps the decisions (retry, settle, record) and this module the
wording. The result bytes are unpickled here, in the client, as the user's
own data (never on the node), by the engine.

Does not cover: retrying bigger (the engine asks the planner), or the
measurement itself (the node's).
"""

from __future__ import annotations

import re
import signal

import cloudpickle

from loadmaster import sources
from loadmaster.errors import CommandFailed, RemoteTraceback, ResourceExhausted, TaskFailed, UnsafeResult
from loadmaster.node.orders import Done, Status
from loadmaster.results import CommandResult, MeasureMethod, Outcome, TaskReport
from loadmaster.spec import Resources, TaskSpec

_MEASURE_METHODS = {m.value: m for m in MeasureMethod}  # a dict lookup, not an Enum call per task


def signal_name(code: int) -> str:
    """``SIGKILL(-9)`` for an exit status of -9."""
    try:
        return f"{signal.Signals(-code).name}({code})"
    except ValueError:
        return f"signal {-code}"


def cancelled_before_start(task: TaskSpec, report: TaskReport | None = None) -> TaskFailed:
    """The error of a task cancelled before its process started."""
    return TaskFailed(f"task {task.task_id} ({task.category}) was cancelled before it started",
                      task_id=task.task_id, category=task.category, report=report)


def report(task: TaskSpec, ev: Done, allocation: Resources, host: str, outcome: Outcome,
           error: str = "") -> TaskReport:
    """The report of the attempt ``ev`` ended, run under ``allocation`` on ``host``."""
    m = ev.measured
    wall = m.wall_time
    extra = dict(m.extra) if m.extra else {}
    charged = extra.pop("peak_charged", None)
    on_gpu = extra.pop("peak_gpu_memory", None)
    if ev.sandbox_denied:
        extra = {**extra, "sandbox_denied": list(ev.sandbox_denied)}
    if task.env:
        extra["environment"] = task.env  # deps/: the environment it ran in
    lost = task.extra.get("lost")
    if lost:  # attempts lost with their zygote or node before this one (the engine's _lost)
        extra = {**extra, "lost": list(lost)}
    restaged = task.extra.get("restaged")
    if restaged:  # stagings that failed before this attempt (the engine's _restage), not counted as attempts
        extra = {**extra, "restaged": list(restaged)}
    rebuilt = task.extra.get("rebuilt")
    if rebuilt:  # kept outputs it reads that were lost and made again by re-running their producer (data/rebuild.py)
        extra = {**extra, "rebuilt": list(rebuilt)}
    return TaskReport(
        task_id=task.task_id, category=task.category, peak_memory=m.peak_memory,
        cpu_time=m.cpu_time, wall_time=wall, cores=m.cpu_time / wall if wall > 0 else 0.0,
        disk=m.disk, max_processes=m.max_processes, allocation=allocation,
        attempts=task.attempts, exit_status=ev.exit_status, host=host,
        measure_method=_MEASURE_METHODS.get(m.method) or MeasureMethod(m.method),
        outcome=outcome, exhausted=m.exhausted, started_at=m.started_at,
        finished_at=m.finished_at, input_size=task.input_size, error=error,
        extra=extra, peak_charged=charged if isinstance(charged, int) else None,
        peak_gpu_memory=on_gpu if isinstance(on_gpu, int) else None, stdout=ev.stdout, stderr=ev.stderr,
        data=ev.data,
    )


_NO_MODULE = re.compile(r"No module named '([A-Za-z_][\w.]{0,200})'")


def missing_module(ev: Done, err: BaseException) -> str:
    """The module a failed function task lacked (``ModuleNotFoundError``), or ``""``.

    From the exception where the client could unpickle it, else from the text
    the node sent (the function itself may not unpickle there).
    """
    cause = err.__cause__
    if isinstance(cause, ModuleNotFoundError) and cause.name:
        return cause.name
    if ev.status in (Status.RAISED, Status.BROKEN):
        text = err.remote_traceback if isinstance(err, TaskFailed) else ""
        found = _NO_MODULE.search(text or str(err))
        if found:
            return found.group(1)
    return ""


def unpicklable_result(task: TaskSpec, exc: BaseException, r: TaskReport) -> TaskFailed:
    """The error of a function task whose result cannot be unpickled in the client."""
    return TaskFailed(
        f"task {task.task_id} ({task.category}) returned a result that cannot be "
        f"unpickled here ({type(exc).__name__}: {exc}); is its class importable "
        "in the client?", task_id=task.task_id, category=task.category, report=r)


def _stderr_tail(ev: Done) -> str:
    """``; last lines of stderr:`` and its last five lines, or ``""`` when it printed none."""
    tail = "\n".join(ev.stderr.rstrip().splitlines()[-5:])
    return f"; last lines of stderr:\n{tail}" if tail else ""


def function_error(task: TaskSpec, ev: Done, r: TaskReport, *, plain_only: bool = False) -> TaskFailed:
    """The error of a function task that did not return: raised, broke, was killed or exited.

    Its message ends with the last lines the task wrote to stderr, as a command's does.
    """
    err = _function_error(task, ev, r, plain_only=plain_only)
    tail = _stderr_tail(ev)
    if tail:
        err.message += tail
        err.args = (err.message,)
    return err


def _function_error(task: TaskSpec, ev: Done, r: TaskReport, *, plain_only: bool = False) -> TaskFailed:
    head = f"task {task.task_id} ({task.category})"
    if ev.cancelled:
        return TaskFailed(f"{head} was cancelled", task_id=task.task_id, category=task.category, report=r)
    if ev.status == Status.RAISED:
        original, tb = None, ""
        try:
            if plain_only:
                raise UnsafeResult("results='plain' does not unpickle exception objects a task sends")
            original, tb = cloudpickle.loads(ev.payload)
            tb = sources.render(tb)  # frames of functions sent by value named by their files
        except BaseException as exc:
            tb = f"(the exception could not be unpickled here: {exc})"
        if original is not None:
            err = TaskFailed(f"{head} raised {type(original).__name__}: {original}",
                             task_id=task.task_id, category=task.category, report=r,
                             remote_traceback=tb)
            original.__cause__ = RemoteTraceback(tb)
            err.__cause__ = original
            return err
        return TaskFailed(f"{head} failed: {tb.splitlines()[0] if tb else 'unknown error'}",
                          task_id=task.task_id, category=task.category, report=r, remote_traceback=tb)
    if ev.status == Status.BROKEN:
        text = ev.payload.decode("utf-8", "replace")
        return TaskFailed(f"{head}: {text.splitlines()[0] if text else 'broken'}",
                          task_id=task.task_id, category=task.category, report=r, remote_traceback=text)
    code = ev.exit_status
    if code < 0:
        why = (f"was killed by {signal_name(code)}" + (
            "; a segmentation fault, an out-of-memory kill or a kill from outside are the usual causes"
            if code in (-signal.SIGSEGV, -signal.SIGKILL, -signal.SIGBUS, -signal.SIGABRT) else ""))
    else:
        why = f"exited with status {code} before returning a result (os._exit or sys.exit in a task?)"
    return TaskFailed(f"{head} {why}; peak memory {r.peak_memory >> 20} MiB",
                      task_id=task.task_id, category=task.category, report=r)


def command_error(task: TaskSpec, ev: Done, r: TaskReport) -> CommandFailed:
    """The error of a command that exited non-zero, was killed or cancelled."""
    code = ev.exit_status
    display = task.extra.get("display", task.category)
    how = f"was killed by {signal_name(code)}" if code < 0 else f"exited with status {code}"
    msg = f"command {display!r} was cancelled" if ev.cancelled else f"command {display!r} {how}"
    msg += _stderr_tail(ev)
    return CommandFailed(msg, returncode=code, stdout=ev.stdout, stderr=ev.stderr, task_id=task.task_id,
                         category=task.category, report=r)


def command_value(ev: Done) -> CommandResult:
    """A command's result (exit 0)."""
    return CommandResult(ev.exit_status, ev.stdout, ev.stderr)


def exhausted_error(task: TaskSpec, ev: Done, r: TaskReport, allocation: Resources, node: Resources,
                    *, grows: bool) -> ResourceExhausted:
    """The error of a task that ran out of its allocation and is not retried.

    ``node`` is the capacity of the node it ran on; ``grows`` whether the
    planner would have grown it (so it stopped because the executor is
    shutting down).
    """
    m = ev.measured
    resource = m.exhausted or "memory"
    used = m.used or m.peak_memory
    limit = m.limit or getattr(allocation, resource, 0) or 0
    unit = "s" if resource == "wall_time" else " MiB"
    scale = 1.0 if resource == "wall_time" else 1 / (1 << 20)
    stated = task.requested is not None and getattr(task.requested, resource) is not None
    if stated:
        why = f"you set {resource} in resources=, so it is not grown; raise it if the task needs more"
    elif grows:
        why = "the executor is shutting down"
    elif resource == "wall_time":
        why = "set a longer wall_time in resources="
    else:
        why = (f"the allocation cannot grow further: this executor has "
               f"{(getattr(node, resource, 0) or 0) * scale:.0f}{unit} of {resource}")
    return ResourceExhausted(
        f"task {task.task_id} ({task.category}) ran out of {resource}: used {used * scale:.1f}{unit} "
        f"of {limit * scale:.1f}{unit} allowed, after {task.attempts} attempt(s); {why}",
        resource=resource, limit=limit, used=used, task_id=task.task_id, category=task.category,
        report=r,
    )
