"""What a task sees and leaves: its environment, its GPUs, its output, the zygote's function cache.

Real executors, zygotes and task processes. A task must see the environment
its user has (no loadmaster variables, the user's own ``PYTHONPATH``), thread
counts set to the cores it was allocated unless the user set them, no GPU
when it holds none; a function's stdout and stderr come back like a command's
(in the node runtime's ``Done``, on the report, in the failure's message);
and the zygote's function cache stays bounded while an evicted function sent
again still runs.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest

from loadmaster import Executor, TaskFailed
from loadmaster.node.orders import Done, NodeConfig, Order, OrderKind, Status
from loadmaster.node.process import fncache
from loadmaster.node.process.taskenv import GPU_VARS, THREAD_VARS
from loadmaster.node.runtime import NodeRuntime
from loadmaster.spec import Resources

from .test_node_runtime import events


def environment() -> dict[str, str]:
    """The task process's environment, as it sees it."""
    return dict(os.environ)


def env_of_command(ex: Executor, **opts: object) -> dict[str, str]:
    view = ex.options(**opts) if opts else ex  # type: ignore[arg-type]
    out = view.submit_command(["env", "-0"]).result(60).stdout
    return dict(line.split("=", 1) for line in out.split("\0") if line)


@pytest.fixture
def user_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A user who set no thread variable and no GPU variable, and a PYTHONPATH of their own."""
    for var in (*THREAD_VARS, *GPU_VARS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH", ""),
                                                                    "/opt/users-own-path"])))
    yield


def test_a_task_sees_its_users_environment_and_nothing_of_loadmasters(user_env: None) -> None:
    with Executor(history=":memory:", sandbox=False, cores=1) as ex:
        fn_env = ex.submit(environment).result(60)
        cmd_env = env_of_command(ex)
    for env in (fn_env, cmd_env):
        ours = {k: v for k, v in env.items() if k.startswith("LOADMASTER_")}
        assert ours == {k: v for k, v in os.environ.items() if k.startswith("LOADMASTER_")}, \
            "variables meant for the zygote leaked"
        # The user's own PYTHONPATH, not the client's sys.path (a Python the task starts
        # would otherwise get this interpreter's standard library).
        assert env.get("PYTHONPATH") == os.environ["PYTHONPATH"]
    # Yet the function task still imports what the client can (the zygote got the path another way).
    assert fn_env["PYTHONPATH"].split(os.pathsep)[-1] == "/opt/users-own-path"


def test_a_python_a_command_starts_gets_its_own_standard_library(user_env: None) -> None:
    with Executor(history=":memory:", sandbox=False, cores=1) as ex:
        out = ex.submit_command([sys.executable, "-c", "import sys; print(sys.path)"]).result(60).stdout
    assert "/opt/users-own-path" in out  # it does see the user's PYTHONPATH


@pytest.mark.parametrize("cores, want", [(1, "1"), (1.5, "2"), (2, "2")])
def test_thread_variables_are_the_cores_the_task_was_allocated(user_env: None, cores: float, want: str) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores to allocate two")
    with Executor(history=":memory:", sandbox=False, cores=2) as ex:
        fn_env = ex.options(resources={"cores": cores}).submit(environment).result(60)
        cmd_env = env_of_command(ex, resources={"cores": cores})
        explicit = ex.options(resources={"cores": cores}).submit_command(
            ["env"], env={"PATH": os.environ["PATH"], "MKL_NUM_THREADS": "7"}).result(60).stdout
    for env in (fn_env, cmd_env):
        assert {var: env.get(var) for var in THREAD_VARS} == dict.fromkeys(THREAD_VARS, want)
    assert f"OMP_NUM_THREADS={want}\n" in explicit and "MKL_NUM_THREADS=7\n" in explicit


def test_thread_variables_the_user_set_are_kept(user_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with Executor(history=":memory:", sandbox=False, cores=2) as ex:
        fn_env = ex.options(resources={"cores": 2}).submit(environment).result(60)
        cmd_env = env_of_command(ex, resources={"cores": 1})
    assert fn_env["OMP_NUM_THREADS"] == cmd_env["OMP_NUM_THREADS"] == "3"
    assert fn_env["OPENBLAS_NUM_THREADS"] == "2" and cmd_env["OPENBLAS_NUM_THREADS"] == "1"


def test_a_task_that_holds_no_gpu_sees_none(user_env: None) -> None:
    with Executor(history=":memory:", sandbox=False, cores=1) as ex:
        fn_env = ex.submit(environment).result(60)
        cmd_env = env_of_command(ex)
        explicit = ex.submit_command(["env"], env={"PATH": os.environ["PATH"]}).result(60).stdout
        report = ex.submit(abs, 1)
        report.result(60)
    for env in (fn_env, cmd_env):
        assert {var: env.get(var) for var in GPU_VARS} == dict.fromkeys(GPU_VARS, "")
    assert "CUDA_VISIBLE_DEVICES=\n" in explicit
    assert report.report is not None and report.report.peak_gpu_memory is None


# ── a function's stdout and stderr ─────────────────────────────────────────────
def chatty(n: int) -> int:
    print(f"out {n}")
    print(f"err {n}", file=sys.stderr)
    return n


def chatty_then_fails() -> None:
    print("working", flush=True)
    for i in range(8):
        print(f"step {i}", file=sys.stderr)
    raise ValueError("bad input")


def chatty_then_dies() -> None:
    print("last words", file=sys.stderr, flush=True)
    os._exit(3)


def test_a_functions_output_is_captured_on_its_report() -> None:
    with Executor(history=":memory:", sandbox=False) as ex:
        futs = [ex.submit(chatty, i) for i in range(20)]
        assert [f.result(60) for f in futs] == list(range(20))
    for i, f in enumerate(futs):
        assert f.report is not None
        assert (f.report.stdout, f.report.stderr) == (f"out {i}\n", f"err {i}\n")


def test_a_failed_functions_stderr_tail_is_in_its_error() -> None:
    with Executor(history=":memory:", sandbox=False) as ex:
        with pytest.raises(TaskFailed) as raised:
            ex.submit(chatty_then_fails).result(60)
        with pytest.raises(TaskFailed) as died:
            ex.submit(chatty_then_dies).result(60)
    msg = str(raised.value)
    assert "raised ValueError: bad input" in msg and "last lines of stderr:" in msg
    assert "step 7" in msg and "step 2" not in msg  # the tail, five lines
    report = raised.value.report
    assert report is not None and report.stdout == "working\n" and "step 0" in report.stderr
    assert "exited with status 3" in str(died.value) and "last words" in str(died.value)


def test_a_functions_output_comes_back_in_the_node_runtimes_done(tmp_path: Path) -> None:
    """What a remote node sends up: the text itself, not a path on that node."""
    rt = NodeRuntime(NodeConfig(name="n1", workdir=str(tmp_path / "node"), zygotes=1, ledger=False))
    try:
        rt.submit([Order(task_id=1, attempt=1, kind=OrderKind.FUNCTION, fn_key=1,
                         fn_bytes=cloudpickle.dumps(chatty), payload=pickle.dumps(((5,), {})),
                         allocation=Resources(cores=1.0, memory=256 << 20))])
        (ev,) = events(rt, 1)
    finally:
        rt.close()
    assert isinstance(ev, Done) and ev.status == Status.OK
    assert (ev.stdout, ev.stderr) == ("out 5\n", "err 5\n")
    assert not [p for p in (tmp_path / "node").rglob("*") if p.is_file()], "a capture file was left"


def shout(kib: int) -> None:
    sys.stdout.write("x" * (kib << 10))


def test_a_functions_output_is_capped_like_a_commands() -> None:
    with Executor(history=":memory:", sandbox=False) as ex:
        fut = ex.submit(shout, 17 << 10)  # 17 MiB
        fut.result(120)
    assert fut.report is not None
    assert fut.report.stdout.endswith("[loadmaster: output truncated at 16777216 bytes]")
    assert len(fut.report.stdout) < (16 << 20) + 100


# ── the zygote's function cache ───────────────────────────────────────────────
def add(a: int, b: int) -> int:
    return a + b


def _stats(rt: NodeRuntime) -> list[dict[str, int]]:
    out = []
    for z in rt.zygotes:
        z.stats()
        z.flush()
        got: list[object] = []
        while not got:
            import select

            select.select([z.res_fd], [], [], 5)
            msgs = z.read()
            assert msgs is not None, "the zygote died"
            got = [m[1] for m in msgs if m[0] == "stats"]  # type: ignore[index]
        out.append(got[0])  # type: ignore[arg-type]
    return out


def test_the_zygotes_function_cache_stays_bounded_and_an_evicted_function_runs_again(tmp_path: Path) -> None:
    rt = NodeRuntime(NodeConfig(name="n1", workdir=str(tmp_path / "node"), zygotes=1, ledger=False))
    alloc = Resources(cores=1.0, memory=256 << 20)
    n = 1000

    def order(task_id: int, key: int, i: int) -> Order:
        return Order(task_id=task_id, attempt=1, kind=OrderKind.FUNCTION, fn_key=key,
                     fn_bytes=cloudpickle.dumps(functools.partial(add, i)), payload=pickle.dumps(((1,), {})),
                     allocation=alloc)

    try:
        results: dict[int, int] = {}
        for start in range(0, n, 50):  # in batches, as an engine sends them
            rt.submit([order(i + 1, i + 1, i) for i in range(start, start + 50)])
            for ev in events(rt, 50, timeout_s=120):
                assert isinstance(ev, Done) and ev.status == Status.OK, ev
                results[ev.task_id] = pickle.loads(ev.payload)
        assert results == {i + 1: i + 1 for i in range(n)}
        (stats,) = _stats(rt)
        assert stats["fn_entries"] <= fncache.MAX_ENTRIES
        assert stats["fn_evictions"] >= n - fncache.MAX_ENTRIES
        # Function 1 was dropped long ago: its next order carries its bytes again, and runs.
        rt.submit([order(n + 1, 1, 41)])
        (ev,) = events(rt, 1)
        assert isinstance(ev, Done) and ev.status == Status.OK and pickle.loads(ev.payload) == 42
    finally:
        rt.close()


def test_the_cache_drops_the_least_recently_used_and_its_mirror_agrees() -> None:
    zygote, client = fncache.FnCache(max_entries=8, max_bytes=1000), fncache.FnCache(max_entries=8, max_bytes=1000)
    sent = []
    for step, key in enumerate([1, 2, 3, 1, 4, 5, 6, 7, 8, 9, 1, 10, 2, 11, 12, 3, 1]):
        data = b"x" * (100 if key == 12 else 10)
        if client.use(key, data):
            sent.append(key)
            assert zygote.get(key) is None, f"step {step}: the mirror resent what the zygote holds"
            zygote.put(key, len(data), f"fn{key}")
        else:
            assert zygote.get(key) == f"fn{key}", f"step {step}: the zygote lost what the mirror holds"
        assert list(zygote.entries) == list(client.entries)
    assert len(zygote) <= 8 and 1 in zygote.entries  # 1, used often, stayed
    assert sent.count(2) == 2  # 2 was dropped once and sent again


def test_a_sandboxed_functions_output_is_captured_too() -> None:
    with Executor(history=":memory:") as ex:  # the default sandbox
        fut = ex.submit(chatty, 3)
        assert fut.result(60) == 3
    assert fut.report is not None and (fut.report.stdout, fut.report.stderr) == ("out 3\n", "err 3\n")


def test_a_commands_large_output_is_read_off_the_engine_thread_and_arrives_whole() -> None:
    import threading

    from loadmaster.node.runtime import OUTPUT_INLINE

    size = 3 * OUTPUT_INLINE
    with Executor(history=":memory:", sandbox=False) as ex:
        small = ex.submit_command(["sh", "-c", "echo small"]).result(60)
        big = ex.submit_command(["sh", "-c", f"yes | head -c {size}"]).result(60)
        readers = [t.name for t in threading.enumerate() if t.name == "loadmaster-output"]
    assert small.stdout == "small\n"
    assert len(big.stdout) == size and big.stdout.startswith("y\ny\n")
    assert readers == ["loadmaster-output"], "the large output was read on the engine thread"


def flood(mib: int) -> int:
    chunk = "z" * (1 << 20)
    for _ in range(mib):
        sys.stdout.write(chunk)
    sys.stdout.flush()
    return mib


def test_output_past_the_cap_is_freed_as_it_comes() -> None:
    """A function printing 400 MiB is charged far less than the 400 (what is past the 16 MiB kept is freed)."""
    with Executor(history=":memory:", sandbox=False) as ex:
        fut = ex.submit(flood, 400)
        assert fut.result(120) == 400
    r = fut.report
    assert r is not None
    if r.peak_charged is None:
        pytest.skip(f"needs a memory cgroup slot to see the charge (this node measures with {r.measure_method})")
    assert r.stdout.endswith("[loadmaster: output truncated at 16777216 bytes]")
    assert r.peak_charged < 300 << 20, f"the captured output held {r.peak_charged >> 20} MiB (403 untrimmed)"
    assert r.peak_memory < 64 << 20  # captured output is loadmaster's, not the task's own memory
