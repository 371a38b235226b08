"""Find the modules a function needs from its bytecode, globals and closures (runs in the client).

Walks the function's code objects (nested ones too) and looks at what they
name: ``IMPORT_NAME`` (an ``import`` anywhere in the body), globals read with
``LOAD_GLOBAL``/``LOAD_NAME`` that are modules (``np`` for ``import numpy as
np`` at module level, which source scanners miss), functions, classes or other
objects (their ``__module__``), the closure's cells and the defaults. A global
function or class of the user's own code is walked in turn (recursively, each
code object once); one that an installed distribution or the standard library
defines is not: its distribution brings what it needs.

Measured here: ~2.6 ms for a test function, exact, where ``modulefinder``
took 3 s and over-reported. What a run imports dynamically
(``importlib.import_module(name)``) cannot be seen here: the node reports it
(``sys.modules`` after the run), and the next environment includes it.

Does not cover: which distribution holds a module (``deps/dists.py``).
"""

from __future__ import annotations

import dis
import functools
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_IMPORT_OPS = frozenset({"IMPORT_NAME"})
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})


@dataclass
class Found:
    """What a function needs: module name -> why (the first few reasons, as text)."""

    modules: dict[str, list[str]] = field(default_factory=dict)
    walked: list[str] = field(default_factory=list)  # the user's functions whose code was read

    def add(self, module: str, why: str) -> None:
        """Note that ``module`` is needed, and why (at most three reasons kept per module)."""
        if not module or module == "builtins":
            return
        reasons = self.modules.setdefault(module, [])
        if len(reasons) < 3 and why not in reasons:
            reasons.append(why)

    def top_level(self) -> list[str]:
        """The top-level names of the modules found, sorted."""
        return sorted({m.split(".")[0] for m in self.modules})


def find_modules(fn: Callable[..., Any], is_users: Callable[[str], bool] | None = None) -> Found:
    """Return the modules ``fn`` needs, with why (see the module docstring).

    ``is_users(module_name)`` says whether a module is the user's own code (its
    functions and classes are walked too); by default, one whose top-level
    name is neither in the standard library nor in an installed distribution.
    """
    if is_users is None:
        from loadmaster.deps.dists import is_users_module

        is_users = is_users_module
    found = Found()
    _Walker(found, is_users).function(fn, getattr(fn, "__qualname__", repr(fn)))
    return found


class _Walker:
    def __init__(self, found: Found, is_users: Callable[[str], bool]) -> None:
        self.found = found
        self.is_users = is_users
        self.seen: set[int] = set()

    def function(self, fn: Any, where: str) -> None:
        fn = getattr(fn, "__wrapped__", fn)  # functools.wraps: the function underneath
        if isinstance(fn, types.MethodType):
            fn = fn.__func__
        code = getattr(fn, "__code__", None)
        if code is None or id(code) in self.seen:
            return
        self.seen.add(id(code))
        self.found.walked.append(where)
        module = getattr(fn, "__module__", None)
        if module and module != "__main__":
            self.found.add(module, f"{where} is defined there")
        fn_globals = getattr(fn, "__globals__", {})
        for cell_name, cell in zip(code.co_freevars, fn.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            self.value(value, f"{where}: closure variable {cell_name}")
        for default in (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()):
            self.value(default, f"{where}: a default argument")
        self.code(code, fn_globals, where)

    def code(self, code: types.CodeType, fn_globals: dict[str, Any], where: str) -> None:
        names: set[str] = set()
        for ins in dis.get_instructions(code):
            if ins.opname in _IMPORT_OPS:
                self.found.add(str(ins.argval), f"{where}: import {ins.argval}")
            elif ins.opname in _GLOBAL_OPS:
                names.add(str(ins.argval).removeprefix("NULL + ").removesuffix(" + NULL"))
        for name in sorted(names):
            if name in fn_globals:
                value = fn_globals[name]
                self.value(value, f"{where}: global {name}")
                if isinstance(value, types.ModuleType) and self.is_users(value.__name__):
                    # helper.g(...): the attributes this code names of the user's module are walked too.
                    for attr in code.co_names:
                        got = getattr(value, attr, None)
                        if isinstance(got, types.FunctionType | type | types.ModuleType) and got is not value:
                            self.value(got, f"{where}: {name}.{attr}")
        for const in code.co_consts:
            if isinstance(const, types.CodeType) and id(const) not in self.seen:
                self.seen.add(id(const))
                self.code(const, fn_globals, f"{where}.{const.co_name}")

    def value(self, value: Any, why: str) -> None:
        if isinstance(value, types.ModuleType):
            self.found.add(value.__name__, f"{why} is module {value.__name__}")
            return
        if isinstance(value, types.BuiltinFunctionType | types.BuiltinMethodType):
            module = getattr(value, "__module__", None)
            if module:
                self.found.add(module, f"{why} is {module}.{value.__name__}")
            return
        if isinstance(value, types.FunctionType | types.MethodType):
            module = getattr(value, "__module__", None) or ""
            if module == "__main__" or self.is_users(module):
                self.function(value, getattr(value, "__qualname__", "?"))
            elif module:
                self.found.add(module, f"{why} is {module}.{getattr(value, '__qualname__', '?')}")
            return
        if isinstance(value, type):
            module = value.__module__
            if module == "__main__" or self.is_users(module):
                if id(value) in self.seen:
                    return
                self.seen.add(id(value))
                if module != "__main__":
                    self.found.add(module, f"{why} is class {value.__qualname__} defined there")
                for base in value.__mro__[1:]:
                    if base is not object:
                        self.value(base, f"{why}: base class {base.__qualname__}")
                for attr in vars(value).values():
                    attr = getattr(attr, "__func__", attr)  # staticmethod, classmethod
                    if isinstance(attr, types.FunctionType):
                        self.function(attr, f"{value.__qualname__}.{attr.__name__}")
            else:
                self.found.add(module, f"{why} is class {module}.{value.__qualname__}")
            return
        if isinstance(value, functools.partial):
            self.value(value.func, f"{why} (partial)")
            return
        module = getattr(type(value), "__module__", "builtins")
        if module != "builtins":
            self.found.add(str(module), f"{why} is a {module}.{type(value).__qualname__}")
        if isinstance(value, list | tuple | set | frozenset) and len(value) <= 64:
            for item in value:
                self.value(item, f"{why} (an item)")
        elif isinstance(value, dict) and len(value) <= 64:
            for item in value.values():
                self.value(item, f"{why} (a value)")


def stdlib(name: str) -> bool:
    """Whether top-level module ``name`` belongs to the standard library (or is built in)."""
    top = name.split(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__future__"
