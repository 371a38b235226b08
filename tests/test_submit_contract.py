"""The futures contract: a function's own keyword arguments reach it; loadmaster's go through options().

``concurrent.futures`` promises that ``submit(fn, *args, **kwargs)`` calls
``fn(*args, **kwargs)``. These tests check it for the names loadmaster used to
take for itself, the clash check, the ``options()`` view, and ``map``'s
timeout and references.
"""

from __future__ import annotations

import dataclasses
import gc
import linecache
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from loadmaster import CommandFailed, Executor, InvalidSpec, ResourceExhausted, TaskFailed
from loadmaster.plan.history import History

MiB = 1 << 20
SRC = str(Path(__file__).resolve().parents[1] / "src")


def resize(img: str, size: int = 64) -> tuple[str, int]:
    return img, size


def all_the_names(*, category: str, resources: dict, size: int, sandbox: bool,
                  inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    return {"category": category, "resources": resources, "size": size, "sandbox": sandbox,
            "inputs": inputs, "outputs": outputs}


def takes_anything(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return kwargs


def only_img(img: str) -> str:
    return img


def size_positional_only(img: str, size: int, /) -> int:
    return size


def touch(mb: int) -> int:
    b = bytearray(mb * MiB)
    for i in range(0, len(b), 4096):
        b[i] = 1
    return len(b)


def sleep_then_mark(path: str, s: float) -> None:
    time.sleep(s)
    with open(path, "w") as fh:
        fh.write("ran to the end")


class Box:
    """A result that can be weakly referenced."""

    def __init__(self, i: int) -> None:
        self.i = i


def make_box(i: int) -> Box:
    return Box(i)


@pytest.fixture(scope="module")
def ex() -> Executor:
    with Executor(history=":memory:", label="test-contract") as e:
        yield e


def test_keywords_named_like_options_reach_the_function(ex: Executor) -> None:
    f = ex.submit(resize, "img.png", size=256)
    assert f.result(30) == ("img.png", 256)
    given = {"category": "mine", "resources": {"memory": "1GiB"}, "size": 3, "sandbox": False,
             "inputs": ["/nonexistent/in"], "outputs": ["/nonexistent/out"]}
    g = ex.submit(all_the_names, **given)
    assert g.result(30) == given
    # None of them was taken as an option: the category is the function's name.
    assert g.report is not None and g.report.category == "all_the_names"
    assert g.report.input_size is None
    h = ex.submit(takes_anything, 1, category="c", outputs=["x"], other=2)
    assert h.result(30) == {"category": "c", "outputs": ["x"], "other": 2}


def test_a_clash_the_function_cannot_take_raises_at_submit(ex: Executor) -> None:
    with pytest.raises(InvalidSpec, match=r"submit\(\) passes keywords to the function.*ex\.options\(size=") as info:
        ex.submit(only_img, "img.png", size=256)
    assert "only_img" in str(info.value)
    with pytest.raises(InvalidSpec, match=r"'resources'"):
        ex.submit(only_img, "img.png", resources={"memory": "1GiB"})
    with pytest.raises(InvalidSpec, match=r"'size'"):
        ex.submit(size_positional_only, "img.png", size=3)
    # A callable whose signature Python cannot read gets its keywords unchecked.
    assert ex.submit(dict, size=3, category="c").result(30) == {"size": 3, "category": "c"}


def test_options_submit(ex: Executor) -> None:
    opts = ex.options(category="resizing", resources={"memory": "300MiB"}, size="2MiB")
    f = opts.submit(resize, "img.png", size=512)
    assert f.result(30) == ("img.png", 512)
    r = f.report
    assert r is not None and r.category == "resizing" and r.input_size == 2 * MiB
    assert r.allocation.memory == 300 * MiB
    # The stated memory is a limit: more fails, and is not grown.
    with pytest.raises(ResourceExhausted) as info:
        opts.submit(touch, 400).result(60)
    assert info.value.resource == "memory" and info.value.category == "resizing"
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.category = "other"  # type: ignore[misc]
    assert opts.options(category="other").category == "other"
    assert opts.options(category="other").resources == opts.resources
    cmd = ex.options(category="greeting").submit_command("echo hi")
    assert cmd.result(30).stdout == "hi\n" and cmd.report is not None and cmd.report.category == "greeting"


def test_options_are_checked_once_when_made(ex: Executor) -> None:
    with pytest.raises(InvalidSpec, match="unknown field"):
        ex.options(resources={"colour": "red"})
    with pytest.raises(InvalidSpec, match="more than this executor has"):
        ex.options(resources={"cores": 10_000})
    with pytest.raises(ValueError, match="size"):
        ex.options(size="lots")
    with pytest.raises(InvalidSpec, match="unknown option"):
        ex.options().options(colour="red")


def test_options_map(ex: Executor) -> None:
    assert list(ex.options(category="mapped").map(resize, ["a", "b"], [1, 2])) == [("a", 1), ("b", 2)]
    with pytest.raises(ResourceExhausted):
        list(ex.options(resources={"memory": "100MiB"}).map(touch, [10, 300]))


def test_map_timeout_stops_the_task_that_timed_out_and_the_rest(tmp_path) -> None:
    history = str(tmp_path / "h.sqlite")
    marks = [str(tmp_path / f"mark-{i}") for i in range(3)]
    with Executor(history=history, cores=2, ledger=False) as e:
        it = e.options(outputs=[tmp_path], category="slow").map(sleep_then_mark, marks, [30] * 3, timeout=0.5)
        with pytest.raises(TimeoutError):
            next(it)
    # Shut down (which waits for every task): none of them ran to its end.
    assert [m for m in marks if os.path.exists(m)] == []
    with History(history) as hist:
        reports = hist.reports(category="slow")
    assert all(r.outcome.value != "ok" for r in reports)


def test_map_does_not_keep_a_result_alive(ex: Executor) -> None:
    it = ex.map(make_box, range(3))
    first = next(it)
    assert first.i == 0
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None, "the map iterator still holds the result it handed over"
    assert [b.i for b in it] == [1, 2]


def test_map_raises_the_first_failure_in_order(ex: Executor) -> None:
    it = ex.map(touch, [1, "not a number", 2])
    assert next(it) == MiB
    with pytest.raises(TaskFailed, match="TypeError"):
        next(it)
    assert list(ex.map(only_img, [])) == []


# ── references ────────────────────────────────────────────────────────────────
def make_adder(n: int) -> Any:
    def add(x: int) -> int:
        return x + n
    return add


class Model:
    """An object whose bound method is submitted."""

    def __init__(self, k: int) -> None:
        self.k = k

    def predict(self, x: int) -> int:
        return self.k * x


def test_submitted_callables_are_not_kept_alive(ex: Executor) -> None:
    add, model = make_adder(2), Model(3)
    assert ex.submit(add, 1).result(30) == 3
    assert ex.submit(model.predict, 2).result(30) == 6
    assert list(ex.map(model.predict, [1, 2])) == [3, 6]
    refs = [weakref.ref(add), weakref.ref(model)]
    del add, model
    gc.collect()
    assert [r() for r in refs] == [None, None], "the executor still holds a submitted callable"


def test_a_bound_method_object_is_free_after_shutdown() -> None:
    e = Executor(history=":memory:", ledger=False, sandbox=False)
    model = Model(5)
    assert e.submit(model.predict, 2).result(30) == 10
    e.shutdown()
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_a_changed_object_is_sent_again(ex: Executor) -> None:
    model = Model(2)
    assert ex.submit(model.predict, 1).result(30) == 2
    model.k = 7  # a new state: sent, not the bytes pickled at the first submit
    assert ex.submit(model.predict, 1).result(30) == 7
    bound = model.predict
    model.k = 4
    assert ex.submit(bound, 1).result(30) == 4


# ── pickling errors ───────────────────────────────────────────────────────────
class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable refuses to be pickled")


def test_a_pickling_error_is_the_cause_of_task_failed_and_keeps_nothing(ex: Executor) -> None:
    arg = Unpicklable()
    f = ex.submit(resize, arg)
    with pytest.raises(TaskFailed, match=r"cannot be pickled.*Unpicklable refuses") as info:
        f.result(5)
    assert isinstance(info.value.__cause__, TypeError)
    assert "Unpicklable refuses to be pickled" in str(info.value.__cause__)
    ref = weakref.ref(arg)
    del arg, info
    gc.collect()
    assert ref() is None, "the failed future keeps the unpicklable argument alive"
    lock = threading.Lock()
    g = ex.submit(lambda: lock)  # a function that cannot be pickled (its closure holds a lock)
    with pytest.raises(TaskFailed, match="cannot be pickled") as info2:
        g.result(5)
    assert isinstance(info2.value.__cause__, TypeError) and "lock" in str(info2.value.__cause__)


def test_a_manager_proxy_is_refused_at_submit_saying_why(ex: Executor) -> None:
    with multiprocessing.Manager() as manager:
        shared = manager.list([1, 2])
        for args in [(shared,), ([{"data": shared}],)]:
            with pytest.raises(InvalidSpec, match=r"Manager proxy \(ListProxy\) cannot be passed to a task.*"
                                                  r"pass the values themselves"):
                ex.submit(len, *args)
        assert ex.submit(len, list(shared)).result(30) == 2


# ── remote tracebacks of functions sent by value ───────────────────────────────
def test_a_script_function_s_remote_traceback_names_its_file_and_lines(tmp_path: Any) -> None:
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent("""\
        import loadmaster

        def inner(x):
            y = x + 1
            raise ValueError(f"bad value {y}")

        def outer(x):
            return inner(x)

        with loadmaster.Executor(history=":memory:", ledger=False) as ex:
            try:
                ex.submit(outer, 1).result()
            except loadmaster.TaskFailed as err:
                print(err.remote_traceback)
                print("CAUSE", "".join(str(err.__cause__.__cause__)) == err.remote_traceback)
    """))
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                          timeout=120, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "<dynamic-code>" not in out
    assert f'File "{script}", line 8, in outer\n    return inner(x)\n' in out
    assert f'File "{script}", line 5, in inner\n    raise ValueError(f"bad value {{y}}")\n' in out
    assert "CAUSE True" in out


def test_a_notebook_cell_s_remote_traceback_shows_its_source(ex: Executor) -> None:
    # As IPython does: a cell's source registered in linecache under its own name.
    name = "<ipython-input-7-loadmaster>"
    source = "def cell_fn(x):\n    return 1 // (x - x)\n"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    ns: dict[str, Any] = {"__name__": "__main__"}  # so cloudpickle sends it by value
    exec(compile(source, name, "exec"), ns)
    with pytest.raises(TaskFailed) as info:
        ex.submit(ns["cell_fn"], 3).result(30)
    assert f'File "{name}", line 2, in cell_fn\n    return 1 // (x - x)\n' in info.value.remote_traceback


# ── messages ──────────────────────────────────────────────────────────────────
def test_a_long_command_is_not_quoted_whole(ex: Executor) -> None:
    cmd = "exit 3 #" + "x" * 100_000
    with pytest.raises(CommandFailed) as info:
        ex.submit_command(cmd).result(60)
    msg = str(info.value)
    assert len(msg) < 1000 and "… (100,008 characters)" in msg and "status 3" in msg
    argv = ["sh", "-c", "exit 4", "sh", *(["y" * 50] * 2000)]
    with pytest.raises(CommandFailed) as info2:
        ex.submit_command(argv).result(60)
    assert len(str(info2.value)) < 1000 and "status 4" in str(info2.value)


class CountsPickling:
    """Counts how often it is pickled (in this process)."""

    pickled = 0

    def __getstate__(self) -> dict[str, Any]:
        type(self).pickled += 1
        return {}

    def twice(self, x: int) -> int:
        return 2 * x


def test_one_map_pickles_a_bound_method_once(ex: Executor) -> None:
    obj = CountsPickling()
    assert list(ex.map(obj.twice, range(5))) == [0, 2, 4, 6, 8]
    assert CountsPickling.pickled == 1
    assert ex.submit(obj.twice, 3).result(30) == 6  # a submit sends its state as it is now
    assert CountsPickling.pickled == 2
