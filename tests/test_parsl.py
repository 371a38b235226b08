"""A Parsl workflow through loadmaster.parsl.LoadmasterExecutor, as a Parsl user would run it.

Python and bash apps, Parsl's own ``inputs``/``outputs``/``stdout``, a resource
specification that loadmaster enforces, an app that raised recorded as a
failure, and each try's measured figures in Parsl's monitoring database. The
workflow's tasks run sandboxed (loadmaster's default). Parsl's own test suite
runs against the same executor from ``scripts/parsl-suite.sh``.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

parsl = pytest.importorskip("parsl")
pytest.importorskip("sqlalchemy", reason="Parsl's monitoring database needs the parsl[monitoring] extra")

from parsl import File, bash_app, python_app  # noqa: E402
from parsl.config import Config  # noqa: E402
from parsl.executors.errors import InvalidResourceSpecification  # noqa: E402

from loadmaster import ResourceExhausted, Resources  # noqa: E402
from loadmaster.parsl import LoadmasterExecutor  # noqa: E402
from loadmaster.plan.history import History  # noqa: E402
from loadmaster.results import Outcome  # noqa: E402

MiB = 1 << 20


@python_app
def square(x: int, parsl_resource_specification: dict[str, Any] = {}) -> int:  # noqa: B006 (Parsl's idiom)
    return x * x


@python_app
def hog(mb: int, parsl_resource_specification: dict[str, Any] = {}) -> int:  # noqa: B006
    b = bytearray(mb * MiB)
    for i in range(0, len(b), 4096):
        b[i] = 1
    return len(b)


@python_app
def fails(msg: str) -> None:
    raise ValueError(msg)


@python_app
def concat(inputs: list[File] = (), outputs: list[File] = ()) -> list[str]:  # type: ignore[assignment]
    text = "".join(pathlib.Path(f.filepath).read_text() for f in inputs)
    with open(outputs[0].filepath, "w") as fh:
        fh.write(text)
    return [f.filepath for f in inputs]


@python_app
def local_class() -> Any:
    class Point:  # defined in the task: comes back by value
        def __init__(self, x: int) -> None:
            self.x = x

    return Point(7)


@bash_app
def shout(word: str, outputs: list[File] = (), stdout: str | None = None) -> str:  # type: ignore[assignment]
    return f"echo {word} | tr a-z A-Z > {outputs[0].filepath}; echo said {word}"


class Workflow:
    """The module's Parsl workflow: its files, and ``finish()`` to end it (once) and read what it left."""

    def __init__(self, d: str) -> None:
        self.dir = d
        self.history = os.path.join(d, "history.sqlite")
        self.monitoring_db = os.path.join(d, "monitoring.db")
        from parsl.monitoring import MonitoringHub

        config = Config(
            executors=[LoadmasterExecutor(label="lm", history=self.history, memory="2GiB", cores=2)],
            retries=1,
            run_dir=os.path.join(d, "runinfo"),
            monitoring=MonitoringHub(logging_endpoint=f"sqlite:///{self.monitoring_db}"),
        )
        self.dfk = parsl.load(config)
        self.run_id = self.dfk.run_id
        self.finished = False

    def finish(self) -> None:
        """End the workflow: Parsl shuts the executor down, which writes the history; monitoring is flushed."""
        if not self.finished:
            self.finished = True
            self.dfk.cleanup()

    def reports(self, category: str) -> list[Any]:
        with History(self.history) as h:
            return h.reports(category=category)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workflow]:
    wf = Workflow(str(tmp_path_factory.mktemp("parsl")))
    try:
        yield wf
    finally:
        wf.finish()


def test_python_and_bash_apps_give_their_results(workflow: Workflow) -> None:
    assert [f.result(60) for f in [square(i) for i in range(6)]] == [i * i for i in range(6)]
    assert local_class().result(60).x == 7
    out = File(os.path.join(workflow.dir, "shout.txt"))
    std = os.path.join(workflow.dir, "shout.stdout")
    assert shout("hello", outputs=[out], stdout=std).result(60) == 0
    assert pathlib.Path(out.filepath).read_text() == "HELLO\n"
    assert pathlib.Path(std).read_text() == "said hello\n"


def test_inputs_and_outputs_reach_the_function(workflow: Workflow) -> None:
    ins = []
    for i, text in enumerate(["a", "b"]):
        path = os.path.join(workflow.dir, f"in-{i}.txt")
        with open(path, "w") as fh:
            fh.write(text)
        ins.append(File(path))
    out = File(os.path.join(workflow.dir, "joined.txt"))
    fut = concat(inputs=ins, outputs=[out])
    assert fut.result(60) == [f.filepath for f in ins]
    fut.outputs[0].result(60)
    assert pathlib.Path(out.filepath).read_text() == "ab"


def test_resource_spec_is_enforced_and_the_app_fails_after_retries(workflow: Workflow) -> None:
    ok = hog(20, parsl_resource_specification={"memory": 200, "cores": 1})
    assert ok.result(60) == 20 * MiB
    with pytest.raises(ResourceExhausted) as info:
        hog(300, parsl_resource_specification={"memory": 100, "cores": 1}).result(120)
    assert info.value.resource == "memory" and info.value.limit == 100 * MiB
    with pytest.raises(InvalidResourceSpecification):
        square(2, parsl_resource_specification={"colour": "red"}).result(60)


def test_history_and_monitoring_once_the_workflow_ends(workflow: Workflow) -> None:
    for i in range(6):
        square(i).result(60)
    assert square(3, parsl_resource_specification={"category": "squares, named"}).result(60) == 9
    out = File(os.path.join(workflow.dir, "shout-2.txt"))
    shout("again", outputs=[out]).result(60)
    hog(20, parsl_resource_specification={"memory": 200}).result(60)
    with pytest.raises(ResourceExhausted):
        hog(300, parsl_resource_specification={"memory": 100}).result(120)
    with pytest.raises(ValueError, match="bad input"):
        fails("bad input").result(60)
    workflow.finish()

    # Each report is named after its app (a bash app's too), or the spec's category.
    squares = workflow.reports("square")
    assert len(squares) >= 6 and {r.outcome for r in squares} == {Outcome.OK}
    assert [r.outcome for r in workflow.reports("shout")][-1] is Outcome.OK
    assert len(workflow.reports("squares, named")) == 1
    # The app raised, in each of its two tries (retries=1): failures, not successes.
    failed = workflow.reports("fails")
    assert [r.outcome for r in failed] == [Outcome.FAILED] * 2
    assert [r.error for r in failed] == ["ValueError: bad input"] * 2
    # The stated memory was the limit of both tries, and each ran into it.
    exhausted = [r for r in workflow.reports("hog") if r.outcome is Outcome.EXHAUSTED]
    assert len(exhausted) >= 2 and {r.allocation.memory for r in exhausted} == {100 * MiB}
    assert min(r.peak_memory for r in exhausted) >= 90 * MiB

    with sqlite3.connect(workflow.monitoring_db) as db:
        rows = db.execute(
            "SELECT t.task_func_name, r.psutil_process_memory_resident, r.psutil_process_time_user "
            "FROM resource r JOIN task t ON r.task_id = t.task_id AND r.run_id = t.run_id "
            "WHERE r.run_id = ?", (workflow.run_id,)).fetchall()
        running = db.execute(
            "SELECT t.task_func_name, y.task_try_time_running FROM try y JOIN task t "
            "ON y.task_id = t.task_id AND y.run_id = t.run_id WHERE y.run_id = ?", (workflow.run_id,)).fetchall()
    assert {"square", "hog", "fails"} <= {name for name, _, _ in rows}
    # The exhausted tries' peaks, as loadmaster measured them, in Parsl's own table.
    assert max(mem for name, mem, _ in rows if name == "hog") >= 90 * MiB
    # Each try that ran has its start, from its report, where Parsl's wrapper would have put it
    # (the two tries of the spec Parsl refused never ran).
    ran = [started for name, started in running if name == "square" and started is not None]
    assert len(ran) == len(squares) + len(workflow.reports("squares, named"))


def test_resource_spec_translation() -> None:
    from loadmaster.parsl import resources_from_spec

    res, cat = resources_from_spec({"cores": 2, "memory": 100, "disk": 1024, "gpus": 0,
                                    "running_time_min": 1.5, "priority": 3, "category": "align"})
    assert res is not None and cat == "align"
    assert (res.cores, res.memory, res.disk, res.gpus, res.wall_time) == (2.0, 100 * MiB, 1024 * MiB, 0, 90.0)
    assert resources_from_spec({}) == (None, None)
    assert resources_from_spec({"memory": 64}) == (Resources(memory=64 * MiB), None)
    for bad in ({"colour": "red"}, {"memory": "lots"}, {"cores": -1}, {"category": 3}, {"gpus": 1.5}):
        with pytest.raises(InvalidResourceSpecification):
            resources_from_spec(bad)
    with pytest.raises(InvalidResourceSpecification) as info:
        resources_from_spec({"cores": 1, "walltime": 5})
    assert info.value.invalid_keys == {"walltime"}


def test_priority_from_the_spec_orders_the_waiting_tasks(tmp_path: pathlib.Path) -> None:
    from loadmaster.parsl import priority_from_spec
    from tests.test_priority import hold, noop

    assert (priority_from_spec({"priority": 3}), priority_from_spec({}), priority_from_spec({"priority": -2.5})) \
        == (3.0, 0.0, -2.5)
    for bad in ("high", float("inf"), True, [1]):
        with pytest.raises(InvalidResourceSpecification):
            priority_from_spec({"priority": bad})
    # The executor as Parsl's DataFlowKernel drives it: start, submit(func, spec, *args), shutdown.
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    os.mkfifo(started)
    os.mkfifo(release)
    ex = LoadmasterExecutor(label="prio", cores=1, history=":memory:", sandbox=False)
    ex.start()
    try:
        held = ex.submit(hold, {"cores": 1}, started, release)
        with open(started):  # the held task has the executor's one core
            pass
        low = [ex.submit(noop, {"cores": 1, "priority": 1, "category": "low"}, i) for i in range(4)]
        high = [ex.submit(noop, {"cores": 1, "priority": 5, "category": "high"}, i) for i in range(4)]
        with open(release, "w") as fh:
            fh.write("go")
        assert held.result(120) == "go" and [f.result(120) for f in low + high] == list(range(4)) * 2
    finally:
        ex.shutdown()
    starts = sorted((f.report.started_at, f in high) for f in low + high if f.report is not None)
    last_high = max(i for i, (_, is_high) in enumerate(starts) if is_high)
    assert sum(1 for _, is_high in starts[:last_high] if not is_high) <= 1, starts


def test_declared_paths_from_parsls_arguments(tmp_path: pathlib.Path) -> None:
    from loadmaster.parsl import declared_paths

    odd = tmp_path / "a dir with 'quotes' and ünïcode"
    odd.mkdir()
    (odd / "in.txt").write_text("x")
    reads, writes = declared_paths({
        "inputs": [File(str(odd / "in.txt")), str(odd / "plain.txt")],
        "outputs": [File(str(odd / "not" / "yet" / "made.txt"))],
        "stdout": (str(tmp_path / "std.out"), "a"),
        "stderr": None,
    })
    assert reads == [str(odd / "in.txt"), str(odd / "plain.txt")]
    # Outputs as their nearest existing directory: nothing is created for a missing output.
    assert writes == sorted([str(odd), str(tmp_path)])
    assert not (odd / "not").exists()
    assert declared_paths({"inputs": [File("https://example.org/x.csv")], "outputs": 7}) == ([], [])


def test_executor_options_are_checked_when_the_config_is_made() -> None:
    with pytest.raises(TypeError, match=r"no option\(s\) colour.*it takes .*memory"):
        LoadmasterExecutor(colour="red")
    ex = LoadmasterExecutor(label="x", memory="1GiB", sandbox=False)
    assert ex.options == {"memory": "1GiB", "sandbox": False, "label": "parsl-x",
                          "preload": ("loadmaster.parsl", "parsl.app.bash")}
    assert ex.monitor_resources() is False and ex.storage_access is None
