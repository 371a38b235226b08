"""Keep the bytecode of the zygote's own modules fresh, so that a zygote never compiles them.

A zygote that imports a module without a fresh ``.pyc`` compiles its source,
and the compiler's garbage (~2 MiB here for ``zygote.py`` and its neighbours)
stays resident in its heap: every fork copies those page-table entries and
every child's exit tears them down again (~12 % more CPU per task, measured
with ``bench/zygote_cost.py``). That happens whenever the sources changed since
their bytecode was last written and ``PYTHONDONTWRITEBYTECODE`` is set (common
in containers and CI) or the source tree is an editable checkout.

So the client, once per process and before its first zygote starts, writes the
missing or stale ``.pyc`` files of the modules a zygote imports (what ``pip``
does at install time), with the standard library's ``compileall``. Only
loadmaster's own modules, in their own ``__pycache__``; where that directory is
not writable nothing is written and the zygote compiles as before.

Does not cover: the user's modules a zygote preloads or unpickles functions
from; their bytecode is the user's (``python -m compileall`` fixes the same cost).
"""

from __future__ import annotations

import functools
import importlib.util
import os

# What a zygote imports: at start, and on its first sandboxed task.
ZYGOTE_MODULES = (
    "loadmaster",
    "loadmaster.errors",
    "loadmaster.node",
    "loadmaster.node.process",
    "loadmaster.node.measure",
    "loadmaster.node.sandbox",
    "loadmaster.node.process.protocol",
    "loadmaster.node.measure.procfs",
    "loadmaster.node.process.fnpickle",
    "loadmaster.node.process.fncache",
    "loadmaster.node.process.taskenv",
    "loadmaster.node.process.running",
    "loadmaster.node.process.collect",
    "loadmaster.node.process.sampler",
    "loadmaster.node.measure.gpu",
    "loadmaster.node.measure.cgroup_slots",
    "loadmaster.node.process.taskproc",
    "loadmaster.node.process.slotforker",
    "loadmaster.node.process.slotforking",
    "loadmaster.node.process.zygote",
    "loadmaster.node.sandbox.spec",
    "loadmaster.node.sandbox.paths",
    "loadmaster.node.sandbox.cleanup",
    "loadmaster.node.sandbox.prepare",
    "loadmaster.node.sandbox.child",
    "loadmaster.node.sandbox.denials",
    "loadmaster.node.sandbox.seccomp",
    "loadmaster.node.sandbox.policy",
    "loadmaster.node.sandbox.capabilities",
    "loadmaster.node.sandbox.landlock",
    "loadmaster.node.sandbox.namespaces",
    "loadmaster.node.sandbox.ns_slots",
)


def _zygote_optimize_level() -> int:
    """The ``-O`` level a zygote runs at: it is started without flags, so only ``PYTHONOPTIMIZE`` counts."""
    value = os.environ.get("PYTHONOPTIMIZE", "")
    if not value:
        return 0
    return int(value) if value.isdigit() else 1


@functools.cache
def ensure_fresh() -> tuple[str, ...]:
    """Write the zygote modules' missing or stale bytecode, once per process (see :func:`refresh`)."""
    return refresh(ZYGOTE_MODULES)


def refresh(names: tuple[str, ...]) -> tuple[str, ...]:
    """Write the missing or stale bytecode of modules ``names``; return the sources that could not be.

    Never raises for an unwritable or odd installation (a zygote then
    compiles what it imports, as Python would). Modules that are not plain
    ``.py`` files (zipped, frozen, bytecode only) are left alone.
    """
    import compileall  # imported here: the client needs it once, a zygote never

    level = _zygote_optimize_level()
    failed = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        path = spec.origin if spec is not None else None
        if not path or not path.endswith(".py") or not os.path.isfile(path):
            continue
        try:
            ok = compileall.compile_file(path, quiet=2, optimize=level)
        except OSError:
            ok = False
        if not ok:
            failed.append(path)
    return tuple(failed)
