"""The futures contract: a function's own keyword arguments reach it; loadmaster's go through options().

``concurrent.futures`` promises that ``submit(fn, *args, **kwargs)`` calls
``fn(*args, **kwargs)``. These tests check it for the names loadmaster used to
take for itself, the clash check, the ``options()`` view, and ``map``'s
timeout and references.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
import weakref
from typing import Any

import pytest

from loadmaster import Executor, InvalidSpec, ResourceExhausted, TaskFailed
from loadmaster.plan.history import History

MiB = 1 << 20


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
