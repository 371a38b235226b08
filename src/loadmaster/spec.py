"""What a task asks for: :class:`Resources` and the internal :class:`TaskSpec`.

Runs in the client. ``Resources`` is public; ``TaskSpec`` is what the executor
hands the scheduler.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from loadmaster.errors import InvalidSpec
from loadmaster.sizes import format_duration, format_size, parse_duration, parse_size


@dataclass(frozen=True)
class Resources:
    """Resources a task asks for, or a node grants.

    A field left ``None`` means "not stated": for a task, loadmaster sizes it
    from the category's history; for a node, it is unlimited.

    Attributes:
        cores: CPU cores (may be fractional, e.g. 0.5).
        memory: bytes; accepts ``"512MiB"``, ``"2GB"`` or an int.
        disk: bytes written to disk; same forms as memory.
        gpus: whole GPUs.
        wall_time: seconds; accepts ``"90s"``, ``"10m"`` or a number.

    Raises:
        InvalidSpec (a ``ValueError``): a negative, unparsable or nonsensical value.
    """

    cores: float | None = None
    memory: int | None = None
    disk: int | None = None
    gpus: int | None = None
    wall_time: float | None = None

    def __post_init__(self) -> None:
        if self.cores is not None:
            if isinstance(self.cores, bool) or not isinstance(self.cores, int | float):
                raise InvalidSpec(f"cores: {self.cores!r} is not a number; give e.g. 1 or 0.5")
            if not math.isfinite(self.cores) or self.cores <= 0:
                raise InvalidSpec(f"cores: {self.cores!r} must be a positive number, e.g. 1 or 0.5")
            object.__setattr__(self, "cores", float(self.cores))
        if self.memory is not None:
            object.__setattr__(self, "memory", parse_size(self.memory, what="memory"))
        if self.disk is not None:
            object.__setattr__(self, "disk", parse_size(self.disk, what="disk"))
        if self.gpus is not None and (isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0):
            raise InvalidSpec(f"gpus: {self.gpus!r} must be a whole number >= 0")
        if self.wall_time is not None:
            object.__setattr__(self, "wall_time", parse_duration(self.wall_time))

    @classmethod
    def coerce(cls, value: Resources | dict[str, Any] | None) -> Resources | None:
        """Accept a ``Resources``, a dict of its fields, or ``None``.

        Raises:
            InvalidSpec: unknown keys or bad values.
        """
        if value is None or isinstance(value, Resources):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise InvalidSpec(
                    f"resources: unknown field(s) {', '.join(unknown)}; "
                    f"accepted: {', '.join(sorted(known))}"
                )
            return cls(**value)
        raise InvalidSpec(f"resources: {value!r} is not a Resources or a dict of its fields")

    def filled_from(self, other: Resources) -> Resources:
        """Return a copy with every ``None`` field taken from ``other``."""
        return replace(
            self,
            **{f.name: getattr(other, f.name) for f in fields(self) if getattr(self, f.name) is None},
        )

    def exceeds(self, capacity: Resources) -> list[str]:
        """Return the names of fields that ask for more than ``capacity`` has."""
        over = []
        for name in ("cores", "memory", "disk", "gpus"):
            mine, cap = getattr(self, name), getattr(capacity, name)
            if mine is not None and cap is not None and mine > cap:
                over.append(name)
        return over

    def format_field(self, name: str) -> str:
        """Return field ``name`` as a person reads it: ``"21.53 GiB"``, ``"1h 30m"``, ``"0.5"`` (cores).

        ``"-"`` when the field is not set.
        """
        value = getattr(self, name)
        if value is None:
            return "-"
        if name in ("memory", "disk"):
            return format_size(value)
        if name == "wall_time":
            return format_duration(value)
        return f"{value:g}"

    def describe(self) -> str:
        """Return the set fields in human units, e.g. ``"2 cores, 21.53 GiB memory"``.

        ``"no limits"`` when nothing is set. Used in error messages (the repr
        gives raw bytes).
        """
        parts = []
        for f in fields(self):
            if getattr(self, f.name) is None:
                continue
            text = self.format_field(f.name)
            if f.name in ("cores", "gpus"):
                noun = "core" if f.name == "cores" else "GPU"
                parts.append(f"{text} {noun}" + ("" if getattr(self, f.name) == 1 else "s"))
            else:
                parts.append(f"{text} {f.name.replace('_', ' ')}")
        return ", ".join(parts) or "no limits"

    def describe_excess(self, capacity: Resources) -> str:
        """Return what this asks beyond ``capacity``, e.g. ``"memory 1 TiB > 21.53 GiB"``.

        One ``name asked > has`` per field in :meth:`exceeds`, joined by ``", "``.
        """
        return ", ".join(
            f"{name} {self.format_field(name)} > {capacity.format_field(name)}" for name in self.exceeds(capacity)
        )

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a plain dict (for JSON and SQLite)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class TaskKind(enum.Enum):
    """Whether a task runs a Python function or a shell command."""

    FUNCTION = "function"
    COMMAND = "command"


@dataclass(slots=True)
class TaskSpec:
    """One task as the executor hands it to the scheduler (internal).

    ``requested`` is what the user asked for; the planner fills the rest.
    ``payload`` is the pickled ``(args, kwargs)`` of a function task;
    ``command`` what a command task execs. ``fn_key`` identifies the function
    (``fn`` its pickled bytes), sent to each zygote once. ``attempts`` counts
    the attempts handed to a node. The user's future, and where and under
    what allocation an attempt runs, are the engine's (``schedule/engine.py``:
    its ``futures`` table, ``Attempt``), not the task's.
    ``value_failure`` is ``TaskOptions.value_failure``: the engine calls it on
    the returned value to tell a failure returned as a value.
    ``data`` is its declared files (``File``/``Output``), or ``None``.
    """

    task_id: int
    kind: TaskKind
    category: str
    requested: Resources | None
    payload: bytes
    fn_key: int = 0
    fn: Any = None
    input_size: int | None = None
    attempts: int = 0
    submitted_at: float = 0.0
    sandbox: Any = None
    command: Any = None  # a loadmaster.node.orders.Command for a command task
    extra: dict[str, Any] = field(default_factory=dict)
    value_failure: Callable[[Any], str | None] | None = None
    env: str = ""  # the key of the environment it runs in (deps/), "" for the node's own
    priority: float = 0.0  # larger starts first among the waiting (schedule/policy.py, insert_by_priority)
    data: Any = None  # a loadmaster.data.refs.DataOrder: its declared files
    watch: Any = None  # a loadmaster.output.OutputWatch: its output is streamed to it
