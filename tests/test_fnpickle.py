"""Functions shipped by value are rebuilt in the zygote without importing cloudpickle.

Each case pickles real functions with cloudpickle (by value: their module is
registered so), then unpickles them in a fresh interpreter through
``loadmaster.node.process.fnpickle`` and runs them there; the child reports its result
and whether cloudpickle got imported. The last test does the same through a
real Executor (zygote + task process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import cloudpickle
import pytest

from loadmaster import Executor

SOURCE = '''
import math
SCALE = 10

def plain(x):
    """Doc."""
    return x * SCALE + math.floor(2.5)

def with_kwdefaults(x, *, step: int = 3) -> int:
    return x + step

def make_counter(start):
    count = start
    def counter(n):
        return count + n
    return counter

def recursive(n):
    return 1 if n <= 1 else n * recursive(n - 1)

def uses_other(x):
    return plain(x) + with_kwdefaults(x)

def gen(n):
    yield from range(n)

def make_late():
    def late():
        return later_bound()
    later_bound = lambda: "late"
    return late

def make_empty():
    def get():
        return value  # noqa: F821 - never bound: an empty cell when pickled
    if False:
        value = 1
    return get

class Point:
    def __init__(self, x):
        self.x = x

def make_point(x):
    return Point(x).x
'''

CHILD = r'''
import json, sys
from loadmaster.node.process import fnpickle
fnpickle.enable()
fn = fnpickle.loads(sys.stdin.buffer.read())
args = json.loads(sys.argv[1])
try:
    value = fn(*args)
    if hasattr(value, "__next__"):
        value = list(value)
    out = {"value": value}
except Exception as exc:
    out = {"error": f"{type(exc).__name__}: {exc}"}
out["cloudpickle_imported"] = "cloudpickle" in sys.modules
out["name"] = getattr(fn, "__qualname__", "")
out["doc"] = getattr(fn, "__doc__", None)
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def mod() -> types.ModuleType:
    m = types.ModuleType("lm_fnpickle_case")
    sys.modules[m.__name__] = m
    exec(compile(SOURCE, "<lm_fnpickle_case>", "exec"), m.__dict__)
    cloudpickle.register_pickle_by_value(m)
    yield m
    cloudpickle.unregister_pickle_by_value(m)
    del sys.modules[m.__name__]


def run_in_fresh(fn: object, *args: object) -> dict[str, object]:
    data = cloudpickle.dumps(fn, protocol=5)
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], input=data, capture_output=True,
                          timeout=60, check=True)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize(("case", "args", "expected"), [
    ("plain", (4,), 42),
    ("with_kwdefaults", (4,), 7),
    ("recursive", (5,), 120),
    ("uses_other", (1,), 16),
    ("gen", (3,), [0, 1, 2]),
])
def test_functions_are_rebuilt_without_cloudpickle(mod: types.ModuleType, case: str, args: tuple[int, ...],
                                                   expected: object) -> None:
    out = run_in_fresh(getattr(mod, case), *args)
    assert out["value"] == expected
    assert out["cloudpickle_imported"] is False
    assert out["name"] == case


def test_attributes_and_closures_survive(mod: types.ModuleType) -> None:
    out = run_in_fresh(mod.plain, 1)
    assert out["doc"] == "Doc."
    out = run_in_fresh(mod.make_counter(100), 5)
    assert out == {"value": 105, "cloudpickle_imported": False, "name": "make_counter.<locals>.counter",
                   "doc": None}
    out = run_in_fresh(mod.make_late())
    assert out["value"] == "late" and out["cloudpickle_imported"] is False
    out = run_in_fresh(lambda a, b=2: a * b, 21)
    assert out["value"] == 42


def test_what_it_does_not_serve_goes_to_cloudpickle(mod: types.ModuleType) -> None:
    # A class sent by value: rebuilt by the real cloudpickle, which then is imported.
    out = run_in_fresh(mod.make_point, 3)
    assert out["value"] == 3 and out["cloudpickle_imported"] is True


def test_an_empty_closure_cell_stays_empty(mod: types.ModuleType) -> None:
    out = run_in_fresh(mod.make_empty())
    assert "NameError" in str(out.get("error")) and "free variable 'value'" in str(out.get("error"))
    assert out["cloudpickle_imported"] is False


def test_an_executor_task_runs_a_by_value_function_without_cloudpickle(mod: types.ModuleType) -> None:
    def probe(x: int) -> tuple[int, bool]:
        return mod_plain(x), "cloudpickle" in sys.modules

    mod_plain = mod.plain
    with Executor(history=":memory:", sandbox=False, ledger=False, cores=1) as ex:
        value, imported = ex.submit(probe, 2).result(timeout=60)
        assert value == 22
        assert imported is False
        # A by-value argument (a lambda) is served the same way in the task process.
        assert ex.submit(mod.uses_other, 1).result(timeout=60) == 16
        assert ex.submit(lambda f: f(5), lambda y: y + 1).result(timeout=60) == 6
