"""loadmaster's per-task options, kept apart from the function's own keyword arguments.

Runs in the client, in the caller's thread. ``Executor.submit(fn, *args,
**kwargs)`` passes every keyword to ``fn``, as ``concurrent.futures``
promises; what loadmaster itself needs to know about a task (its category,
resources, input size, sandbox policy, readable and writable paths) goes
through ``ex.options(...)``, which checks it once and returns a frozen
:class:`TaskOptions` bound to the executor:

    ex.options(resources={"memory": "2GiB"}, category="align").submit(align, sample, size=256)

Here ``size=256`` reaches ``align``. A keyword named like one of these options
given to plain ``ex.submit`` goes to the function too; when the function's
signature cannot take it, :func:`check_no_clash` raises ``InvalidSpec`` at
submit instead of failing in the task (or, as before, being taken silently).

Does not cover: what the options mean to sizing, packing or the sandbox
(``plan/``, ``schedule/``, ``node/sandbox/``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loadmaster.errors import InvalidSpec

if TYPE_CHECKING:
    import os

    from loadmaster.executor import Executor, TaskFuture
    from loadmaster.node.sandbox.policy import Sandbox
    from loadmaster.spec import Resources

OPTION_NAMES = frozenset({"category", "resources", "size", "sandbox", "inputs", "outputs"})
"""The keywords loadmaster took from ``submit`` before; a clash with them is checked."""

ValueFailure = Callable[[Any], "str | None"]
"""A check of a task's returned value: a non-empty string says why the value stands for a failure."""

_FIELDS = OPTION_NAMES | {"value_failure", "priority", "stream", "on_output"}


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """loadmaster's options for the tasks submitted through it (made by ``Executor.options``).

    Attributes (already checked and normalised):
        category: tasks of a category are sized together (``None``: the
            function's qualified name, or the command's program).
        resources: what each task needs; fields left ``None`` are sized from
            the category's history.
        size: a hint of each task's input size in bytes, for size-aware sizing.
        sandbox: the tasks' :class:`Sandbox` policy (``None``: the executor's).
        inputs: absolute paths the tasks may read.
        outputs: absolute paths the tasks may write.
        value_failure: called (in the engine thread) with each returned value;
            a non-empty string marks the task failed in its report and the
            history, with that error, while the future still gets the value
            (for wrappers that return an exception as a value, such as
            Parsl's ``RemoteExceptionWrapper``). Keep it quick and total.
        priority: among the waiting tasks, those of a larger priority start
            first (as Work Queue and TaskVine order them); 0 by default.
        stream: print the tasks' output lines as they come (``loadmaster/output.py``).
        on_output: called with ``(future, stream, line)`` for each line as it comes.

    The view is immutable; :meth:`options` returns a changed copy.
    """

    executor: Executor = field(repr=False, compare=False)
    category: str | None = None
    resources: Resources | None = None
    size: int | None = None
    sandbox: Sandbox | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    value_failure: ValueFailure | None = None
    priority: float = 0.0
    stream: bool = False
    on_output: Callable[[Any, str, str], None] | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` under these options; every keyword reaches ``fn``.

        Raises:
            ExecutorShutdown: the executor was shut down.
        """
        return self.executor._submit_function(fn, args, kwargs, self)

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """Like ``Executor.map``, each task under these options."""
        return self.executor._map(fn, iterables, timeout, self)

    def submit_command(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> TaskFuture:
        """Like ``Executor.submit_command``, under these options."""
        return self.executor.submit_command(
            cmd, category=self.category, resources=self.resources, cwd=cwd, env=env, size=self.size,
            sandbox=self.sandbox, inputs=self.inputs, outputs=self.outputs, priority=self.priority,
            stream=self.stream, on_output=self.on_output,
        )

    def options(self, **changes: Any) -> TaskOptions:
        """Return these options with ``changes`` (the keywords of ``Executor.options``) applied.

        Raises:
            InvalidSpec: an unknown option or a bad value.
        """
        unknown = sorted(set(changes) - _FIELDS)
        if unknown:
            raise InvalidSpec(f"options: unknown option(s) {', '.join(unknown)}; "
                              f"accepted: {', '.join(sorted(_FIELDS))}")
        current = {name: getattr(self, name) for name in _FIELDS}
        return self.executor.options(**{**current, **changes})


def check_no_clash(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse, at submit, a keyword named like a loadmaster option that ``fn`` cannot take.

    Such a keyword is the function's own whenever its signature accepts it (a
    parameter of that name, or ``**kwargs``); a callable with no signature
    Python can read (some builtins) gets it unchecked.

    Raises:
        InvalidSpec: ``fn`` has no parameter for one of those keywords.
    """
    clash = OPTION_NAMES.intersection(kwargs)
    if not clash:
        return
    import inspect  # only on this path: most submissions carry no such keyword

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    refused = sorted(n for n in clash
                     if n not in params or params[n].kind is inspect.Parameter.POSITIONAL_ONLY)
    if not refused:
        return
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    given = ", ".join(f"{n}=..." for n in refused)
    raise InvalidSpec(
        f"submit({name}, ..., {given}): {name}() takes no keyword argument "
        f"{', '.join(repr(n) for n in refused)}, and submit() passes keywords to the function; "
        f"loadmaster options go through ex.options({refused[0]}=...).submit({name}, ...)"
    )
