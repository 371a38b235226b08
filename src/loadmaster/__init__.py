"""loadmaster: run many Python functions and shell commands, each in its own measured process,
packed onto the node by what they really use.

The public API is what this module exports. Names are imported on first use
(PEP 562), so that a zygote, which imports this package too, stays small:
every megabyte it holds costs each fork ~40 µs.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the zygote ~1 MB
if TYPE_CHECKING:
    from typing import Any

    from loadmaster.data.files import File, Output
    from loadmaster.data.refs import DataReport
    from loadmaster.errors import (
        CommandFailed,
        DataError,
        ExecutorShutdown,
        HistoryError,
        InvalidSpec,
        LedgerError,
        LedgerTimeout,
        LoadmasterError,
        ResourceExhausted,
        SandboxError,
        TaskFailed,
        WorkerLost,
    )
    from loadmaster.executor import Executor, TaskFuture
    from loadmaster.node.sandbox.policy import Sandbox
    from loadmaster.options import TaskOptions
    from loadmaster.results import CommandResult, MeasureMethod, Outcome, TaskReport
    from loadmaster.spec import Resources

_WHERE = {
    "CommandFailed": "loadmaster.errors",
    "ExecutorShutdown": "loadmaster.errors",
    "HistoryError": "loadmaster.errors",
    "InvalidSpec": "loadmaster.errors",
    "LedgerError": "loadmaster.errors",
    "LedgerTimeout": "loadmaster.errors",
    "LoadmasterError": "loadmaster.errors",
    "ResourceExhausted": "loadmaster.errors",
    "SandboxError": "loadmaster.errors",
    "TaskFailed": "loadmaster.errors",
    "WorkerLost": "loadmaster.errors",
    "Executor": "loadmaster.executor",
    "TaskFuture": "loadmaster.executor",
    "CommandResult": "loadmaster.results",
    "MeasureMethod": "loadmaster.results",
    "Outcome": "loadmaster.results",
    "TaskReport": "loadmaster.results",
    "Resources": "loadmaster.spec",
    "Sandbox": "loadmaster.node.sandbox.policy",
    "TaskOptions": "loadmaster.options",
    "File": "loadmaster.data.files",
    "Output": "loadmaster.data.files",
    "DataError": "loadmaster.errors",
    "DataReport": "loadmaster.data.refs",
}

__all__ = [
    "CommandFailed",
    "CommandResult",
    "DataError",
    "DataReport",
    "Executor",
    "ExecutorShutdown",
    "File",
    "HistoryError",
    "InvalidSpec",
    "LedgerError",
    "LedgerTimeout",
    "LoadmasterError",
    "MeasureMethod",
    "Outcome",
    "Output",
    "ResourceExhausted",
    "Resources",
    "Sandbox",
    "SandboxError",
    "TaskFailed",
    "TaskFuture",
    "TaskOptions",
    "TaskReport",
    "WorkerLost",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'loadmaster' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
