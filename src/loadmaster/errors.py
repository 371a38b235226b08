"""The one exception hierarchy of loadmaster.

Every error a user can meet derives from :class:`LoadmasterError`. Errors that
cross the fork boundary (from a task's process back to the client) keep all
their fields as instance attributes, which ``BaseException.__reduce__`` carries
through pickling, so they arrive whole.

Each message says what went wrong, the evidence, and what to do next.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: a sandboxed zygote imports this module, and typing ~0.5 MB
if TYPE_CHECKING:
    from typing import Any

    from loadmaster.results import TaskReport


class LoadmasterError(Exception):
    """Base of every error raised by loadmaster."""


class InvalidSpec(LoadmasterError, ValueError):
    """Raised when a resource request, size or task declaration is malformed or impossible.

    It is a ``ValueError`` too, so ``except ValueError`` catches it.
    """


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a task's process.

    Set as ``__cause__`` of the :class:`TaskFailed` raised by ``future.result()``.
    """

    def __init__(self, tb: str = "") -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class TaskFailed(LoadmasterError):
    """Raised by ``future.result()`` when a task did not complete normally.

    Attributes: ``task_id``, ``category``, ``report`` (the :class:`TaskReport` of
    the last attempt, if one was made) and ``remote_traceback`` (the formatted
    traceback from the task's process, or ``""``).
    """

    def __init__(
        self,
        message: str = "task failed",
        *,
        task_id: int | None = None,
        category: str | None = None,
        report: TaskReport | None = None,
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.category = category
        self.report = report
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return self.message


class ResourceExhausted(TaskFailed):
    """Raised when a task used more of a resource than its final allocation allowed.

    ``resource`` is one of ``"memory"``, ``"disk"``, ``"wall_time"``; ``limit`` and
    ``used`` are in bytes (memory, disk) or seconds (wall_time).
    """

    def __init__(
        self,
        message: str = "resource exhausted",
        *,
        resource: str = "",
        limit: float = 0,
        used: float = 0,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.resource = resource
        self.limit = limit
        self.used = used


class CommandFailed(TaskFailed):
    """Raised when a shell command exits with a non-zero status (or is killed by a signal).

    ``returncode`` follows ``subprocess``: negative for a signal. ``stdout`` and
    ``stderr`` hold what the command printed (as text, possibly truncated).
    """

    def __init__(
        self,
        message: str = "command failed",
        *,
        returncode: int = 1,
        stdout: str = "",
        stderr: str = "",
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class ExecutorShutdown(LoadmasterError, RuntimeError):
    """Raised when a task is submitted to, or was pending in, an executor that shut down.

    Also raised by a submit once the program's exit has begun ("cannot
    schedule new futures after interpreter shutdown", as ``concurrent.futures``
    raises): the executors are finishing their tasks then, and take no more.
    """


class WorkerLost(LoadmasterError):
    """Raised when a process that forks tasks (a zygote) did not start, or died.

    ``Executor()`` raises it when a zygote does not start (its error is printed
    above). A zygote that dies has its tasks retried; a task lost that way too
    often fails with :class:`TaskFailed` whose ``__cause__`` is a ``WorkerLost``.
    """


class HistoryError(LoadmasterError):
    """Raised when the history database cannot be used: corrupt, foreign, or unwritable.

    ``path`` names the file. loadmaster never overwrites such a file.
    """

    def __init__(self, message: str = "history unusable", *, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


class LedgerError(LoadmasterError):
    """Raised when the node-wide memory ledger cannot be used (bad path, network file system)."""


class LedgerTimeout(LedgerError, TimeoutError):
    """Raised when a memory reservation did not fit within its timeout."""


class UnsafeResult(LoadmasterError):
    """Raised when ``results="plain"`` meets a result that is not plain data (it names a class or function)."""


class SandboxError(LoadmasterError):
    """Raised when a sandbox policy is invalid (not when the kernel lacks a feature)."""


class NodeError(LoadmasterError, ValueError):
    """Raised when the scheduler is told of a node twice, of a node it does not know, or of a
    node that cannot hold any task (no cores, no memory, GPU ids that do not match its count).
    """


class DependencyError(LoadmasterError):
    """Raised when a function's dependencies cannot be packed, fetched or built into an environment.

    The message names the distribution or wheel set and what to do.
    """


class DataError(LoadmasterError):
    """A declared file (``File``/``Output``) could not be hashed, cached, staged or delivered.

    The message names the file and says what to do (give an existing path, free disk
    space, raise the cache budget, ...).
    """
