"""What crosses the seam between the engine and a node runtime: orders down, events up.

Built by the engine (client), carried by a backend (in process for the local
backend; pickled over the network by the Dask backend), read by a
:class:`~loadmaster.node.runtime.NodeRuntime`, which answers with events.
Everything here is a plain dataclass of plain values (ints, strings, bytes,
:class:`~loadmaster.spec.Resources`, tuples), so it pickles with the standard
pickler and means the same on every node.

Orders and events carry bytes a task produced (``Done.payload``, the
command's ``stdout``/``stderr``): the runtime never unpickles them; the
engine unpickles a result only as the user's own data, in the client.

This module covers: :class:`NodeConfig` (how to build a node runtime),
:class:`NodeInfo` (what a node runtime says about itself), :class:`Order`
(one task attempt to run), the events :class:`Done`, :class:`Output`,
:class:`HandedBack`, :class:`Lost` (from a node) and :class:`NodeJoined`, :class:`NodeLeft` (from a
backend).

It does *not* cover the zygote's wire format (``node/process/protocol.py``,
private to ``node/``), nor how a backend carries these (``backends/``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from loadmaster.data.refs import DataOrder, DataReport
from loadmaster.spec import Resources


class OrderKind(enum.IntEnum):
    """What an order runs."""

    FUNCTION = 0  # the same values as the zygote's KIND_FUNCTION / KIND_COMMAND
    COMMAND = 1


class Status(enum.IntEnum):
    """How a task attempt's process ended, as the node saw it (``Done.status``)."""

    SILENT = -1  # the process ended without a word (killed, os._exit); see ``exit_status``
    OK = 0       # payload: the cloudpickled result
    RAISED = 1   # payload: cloudpickled (exception, formatted traceback), or text
    EXEC = 2     # a command: it exec'd; ``exit_status`` says how it ended
    BROKEN = 3   # payload: text; the task process failed outside user code


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How to build one :class:`~loadmaster.node.runtime.NodeRuntime`.

    Attributes:
        name: the node's name in events and in the scheduler (unique per backend).
        workdir: the node's work directory (``None``: a fresh temporary one).
        caps: caps on what the node offers (``None`` fields: what it grants).
        zygotes: forking processes (``None``: 2 when the node has 2+ cores).
        preload: modules the zygotes import before forking.
        measure: ``"auto"`` (a memory cgroup per task where possible) or ``"sampling"``.
        fork: ``"libc"`` or ``"os"`` (see ``Executor``).
        sample_ms: the tree sampler's period, in milliseconds.
        sandbox_dir: where task sandboxes are created (``""``: the default).
        probe_sandbox: probe the kernel's sandbox support at start (warns once if degraded).
        ledger: the node memory ledger's path, ``None`` for the default place,
            or ``False`` for none (the node then only knows its own tasks).
        label: the name reservations carry in the ledger.
        deps_source: a directory holding wheel sets (``KEY.tar``) for orders
            with an ``env`` whose data does not carry their set (the
            executor's do: staged into ``cache_dir``); ``""``:
            ``LOADMASTER_DEPS_CACHE`` or the default cache; see ``deps/source.py``.
        env_root: where environments are built on this node (``""``: the default).
        cache_dir: the node's content-addressed cache of declared files (``""``:
            ``$LOADMASTER_CACHE``, else ``/var/tmp/loadmaster-<uid>/cache``).
        cache_budget: bytes that cache may hold (``None``: 16 GiB, at most a
            quarter of the node's disk); counted against the node's disk.
    """

    name: str = "local"
    workdir: str | None = None
    caps: Resources = field(default_factory=Resources)
    zygotes: int | None = None
    preload: tuple[str, ...] = ()
    measure: str = "auto"
    fork: str = "libc"
    sample_ms: float = 10.0
    sandbox_dir: str = ""
    probe_sandbox: bool = False
    ledger: str | bool | None = None
    label: str = "loadmaster"
    deps_source: str = ""
    env_root: str = ""
    cache_dir: str = ""
    cache_budget: int | None = None


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a node runtime says about itself once started.

    Attributes:
        name: the node's name (``NodeConfig.name``).
        host: ``socket.gethostname()`` on the node (``TaskReport.host``).
        capacity: what tasks may use there in all, after the headroom rule.
        gpu_ids: the node's GPU ids.
        measure_method: a ``MeasureMethod`` value (how peaks are measured there).
        notes: warnings about degraded measurement or sandboxing there.
        follows: whether the node takes orders with ``after`` (hand-ahead).
        workdir: the node's work directory.
        sources: where each capacity figure came from (``"cgroup"``, ``"slurm"``...).
        cache_dir: the node's cache of declared files.
        transfer_address: its transfer server (``"ip:port"``), or ``""`` when it serves none.
    """

    name: str
    host: str
    capacity: Resources
    gpu_ids: tuple[str, ...] = ()
    measure_method: str = ""
    notes: tuple[str, ...] = ()
    follows: bool = True
    workdir: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    cache_dir: str = ""
    transfer_address: str = ""


@dataclass(frozen=True, slots=True)
class Command:
    """A shell command to exec (an order's ``command``); output is kept by the node."""

    argv: tuple[str, ...]
    cwd: str | None = None
    env: dict[str, str] | None = None


@dataclass(slots=True)
class Order:
    """One task attempt for a node to run.

    Attributes:
        task_id: the engine's id of the task (unique per executor).
        attempt: 1 for the first attempt, 2 for the first retry, ...
        kind: function or command.
        fn_key: the function's key (0 for a command); the node keeps each
            function's bytes per zygote and needs ``fn_bytes`` only once per
            key: the engine always attaches them (they are shared, not copied)
            and the runtime strips them where a zygote has them already.
        fn_bytes: the cloudpickled function.
        payload: the pickled ``(args, kwargs)`` of a function task.
        allocation: the limits the attempt runs under (memory, disk, wall time).
        gpu_ids: the GPUs it may see.
        sandbox: ``(policy, inputs, outputs)`` or ``None`` (no sandbox).
        command: what a command task execs.
        after: the id of a task this one follows on that task's zygote, on
            what that task holds (hand-ahead), or -1.
        env: the key of the environment it runs in (``deps/``), or ``""``
            for the node's own; a zygote of that environment forks it.
        data: its declared files (``loadmaster.File``/``Output``), or ``None``.
        stream: send its stdout and stderr up as :class:`Output` events while
            it runs (someone watches it), not only in its ``Done``.
    """

    task_id: int
    attempt: int
    kind: OrderKind
    fn_key: int
    fn_bytes: bytes
    payload: bytes
    allocation: Resources
    gpu_ids: tuple[str, ...] = ()
    sandbox: tuple[Any, tuple[str, ...], tuple[str, ...]] | None = None
    command: Command | None = None
    after: int = -1
    env: str = ""
    data: DataOrder | None = None
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one attempt used, as the node measured it (``Done.measured``).

    Attributes:
        pid: the task process's pid (0: never started).
        peak_memory: bytes the attempt's tree added to the node, at its highest.
        method: a ``MeasureMethod`` value.
        cpu_time, wall_time: seconds.
        disk: bytes written.
        max_processes: most processes at once in its tree.
        started_at, finished_at: wall-clock times on the node.
        exhausted: which limit it ran into (``"memory"``, ``"disk"``,
            ``"wall_time"``) or ``None``.
        limit, used: that limit and what was used of it.
        extra: what the node adds (``"sandbox"``, ``"cancelled"``...).
    """

    pid: int
    peak_memory: int
    method: str
    cpu_time: float
    wall_time: float
    disk: int
    max_processes: int
    started_at: float
    finished_at: float
    exhausted: str | None = None
    limit: float = 0
    used: float = 0
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class Done:
    """A node's event: one attempt ended (however it ended).

    Attributes:
        node: the node's name.
        task_id: the task.
        status: see :class:`Status` (an int).
        exit_status: 0, the exit code, or minus the signal number.
        payload: untrusted bytes from the task (see :class:`Status`).
        measured: the numbers.
        stdout, stderr: a command's output, decoded on the node, each capped
            at ``OUTPUT_MAX`` bytes (``""`` for a function task).
        sandbox_denied: paths a sandboxed command was denied (from its stderr,
            judged on the node while the files still exist).
        cancelled: whether it was stopped by a cancel.
        attempt: the order's ``attempt`` (0: not known); the engine drops a
            ``Done`` of an attempt it no longer waits for (its node was taken
            for lost, and the task placed again).
        data: what the node did with the declared files (``None``: there were none).
    """

    node: str
    task_id: int
    status: int
    exit_status: int
    payload: bytes
    measured: Measurement
    stdout: str = ""
    stderr: str = ""
    sandbox_denied: tuple[str, ...] = ()
    cancelled: bool = False
    attempt: int = 0
    data: DataReport | None = None


@dataclass(frozen=True, slots=True)
class Output:
    """A node's event: bytes a running streamed task wrote to its stdout or stderr.

    Sent only for orders with ``stream`` (``node/outputs.py``), in order, before
    the attempt's ``Done``; together an attempt's events of one stream are what
    its report keeps of that stream, up to ``outputs.STREAM_MAX`` bytes.

    Attributes:
        node: the node's name.
        task_id: the task.
        attempt: the order's attempt.
        stream: ``"stdout"`` or ``"stderr"``.
        data: untrusted bytes from the task (at most ``outputs.CHUNK_MAX``), not
            decoded; they may end inside a line or a UTF-8 character.
        final: the stream's last event of this attempt.
    """

    node: str
    task_id: int
    attempt: int
    stream: str
    data: bytes
    final: bool = False


@dataclass(frozen=True, slots=True)
class HandedBack:
    """A node's event: an order given with ``after`` waited too long and was not started."""

    node: str
    task_id: int
    attempt: int = 0  # the order's attempt (0: not known), as in Done


@dataclass(frozen=True, slots=True)
class Lost:
    """A node's event: these tasks' process died with them (the node has replaced it)."""

    node: str
    task_ids: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class NodeJoined:
    """A backend's event: a node can take orders."""

    info: NodeInfo


@dataclass(frozen=True, slots=True)
class NodeLeft:
    """A backend's event: a node is gone, with whatever it was running."""

    name: str
    reason: str


NodeEvent: TypeAlias = Done | Output | HandedBack | Lost
Event: TypeAlias = Done | Output | HandedBack | Lost | NodeJoined | NodeLeft

OUTPUT_MAX = 16 << 20  # bytes of a command's stdout/stderr kept in Done (each)
