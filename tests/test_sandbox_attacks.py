"""Issue 14: a hostile task tries loadmaster's own plumbing and the kernel's gaps, and fails.

Each test names the hole of issue 14 it closes. The attacks run as tasks of a
default ``Executor`` in ``tests/scenarios/attacks.py``, once as root (as CI
runs) and once as an ordinary user made by ``tests/unprivileged.py``; what an
outside observer sees (a marker file the zygote would have made, a victim file
it would have deleted) is checked here. Attacks on ``loadmaster sandbox`` (the
terminal) run the CLI directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from tests import unprivileged

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux namespaces and Landlock")

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scenarios", "attacks.py")
ENV = {"PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.path.join(os.path.dirname(HERE), "src")}


@pytest.fixture(scope="module", params=["root", "user"])
def seen(request: pytest.FixtureRequest) -> dict[str, Any]:
    """What the attack scenario reported, as root and as an ordinary user."""
    # Outside /tmp (a task's /tmp is private) and undeclared to every task.
    scratch = tempfile.mkdtemp(prefix="lm-atk-", dir="/var/tmp")
    os.chmod(scratch, 0o777)
    out = os.path.join(scratch, "out.json")
    env = {**ENV, "LOADMASTER_LEDGER": os.path.join(scratch, "ledger")}
    try:
        if request.param == "root":
            proc = subprocess.run([sys.executable, SCRIPT, out, scratch], env={**os.environ, **env},
                                  capture_output=True, text=True, timeout=300)
        else:
            reason = unprivileged.skip_reason()
            if reason:
                pytest.skip(reason)
            proc = unprivileged.run_as_user(SCRIPT, out, scratch, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(out) as fh:
            data: dict[str, Any] = json.load(fh)
        data["who"] = request.param
        return data
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_hole1_a_forged_pickle_never_runs_in_the_zygote(seen: dict[str, Any]) -> None:
    assert seen["forge_pickle_sent"] >= 1, "the task found no socket to attack: the test proves nothing"
    assert not seen["marker_exists"], "the zygote unpickled what a task sent and ran its command"
    assert seen["after_forge_pickle"] == 3, "the zygote stopped serving after a forged datagram"


def test_hole1_a_task_cannot_report_for_another_task(seen: dict[str, Any]) -> None:
    assert seen["forge_other_sent"] != 0
    assert seen["victim"] == "genuine"


def test_hole2_a_task_cannot_make_the_zygote_read_or_unlink_a_file(seen: dict[str, Any]) -> None:
    assert seen["spill_victim_exists"], "the zygote unlinked a file a task named"
    assert "victim's data" not in str(seen["forge_spill"])


def test_hole3_a_task_holds_no_fd_but_its_stdio_and_report_socket(seen: dict[str, Any]) -> None:
    fds = {int(fd): target for fd, target in seen["fds"]}
    extra = {fd: t for fd, t in fds.items() if fd > 2}
    assert len(extra) == 1 and next(iter(extra.values())).startswith("socket:"), fds


def test_hole3_cgroup_files_cannot_be_written_by_path(seen: dict[str, Any]) -> None:
    writes = seen["cgroup_writes"]
    if seen["who"] == "root":
        assert writes, "a root task ran in no memory cgroup: nothing was tried"
    assert all(v != "written" for v in writes.values()), writes


def test_hole8_a_root_task_has_no_capabilities(seen: dict[str, Any]) -> None:
    priv = seen["privileges"]
    assert priv["cap_eff"] == 0, f"effective capabilities {priv['cap_eff']:#x}"
    assert priv["raw_socket"] != "opened"
    assert priv["chown_other"] != "done"  # chown to another uid needs CAP_CHOWN
    assert seen["exec_caps"].split() == ["CapEff:", "0000000000000000"], seen["exec_caps"]  # exec gets none back


@pytest.mark.parametrize("who", ["root", "user"])
def test_hole5_nothing_sandboxed_can_type_into_the_callers_terminal(who: str) -> None:
    """A pty as the controlling terminal of a shell stand-in; TIOCSTI from the CLI's program
    and from an Executor task; nothing may wait in the terminal's input afterwards."""
    script = os.path.join(HERE, "scenarios", "tty_inject.py")
    if who == "root":
        proc = subprocess.run([sys.executable, script], env={**os.environ, **ENV}, capture_output=True,
                              text=True, timeout=120, cwd="/")
    else:
        reason = unprivileged.skip_reason()
        if reason:
            pytest.skip(reason)
        proc = unprivileged.run_as_user(script, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "typed" not in res["cli"] and "typed" not in res["task"], res
    assert res["cli_typed"] == "" and res["task_typed"] == "", res


def test_hole4_a_home_on_sys_path_exposes_its_modules_only(seen: dict[str, Any]) -> None:
    assert seen["read_home"]["ssh_key"] == "PermissionError", seen["read_home"]
    assert seen["read_home"]["import"] == "imported"


def test_hole4_a_command_run_in_slash_cannot_write_the_file_system(seen: dict[str, Any]) -> None:
    assert not seen["slash_victim_exists"], seen["cwd_slash"]
    # Refused by the read-only view (EROFS) before Landlock (EACCES) would refuse it.
    assert seen["cwd_slash"].startswith("raised:")
    assert "Read-only file system" in seen["cwd_slash"] or "Permission denied" in seen["cwd_slash"]


def test_hole6_network_off_means_no_udp_and_no_view_of_the_nodes_interfaces(seen: dict[str, Any]) -> None:
    assert seen["udp_received"] == "", "a datagram from a task with the network off reached the node"
    assert seen["network"]["interfaces"] == ["lo"], (seen["network"], seen["node_interfaces"])


def test_hole9_a_daemon_dies_with_its_task_and_is_reported(seen: dict[str, Any]) -> None:
    assert isinstance(seen["daemon_pid"], int), seen["daemon_pid"]
    assert not seen["daemon_alive_after_task"]
    assert seen["daemon_report"] >= 1  # the daemon (and, without cgroups, its exited parent)


def test_hole9_a_daemon_does_not_outlive_the_sandbox_cli(tmp_path: Any) -> None:
    box = tempfile.mkdtemp(prefix="lm-daemon-", dir="/var/tmp")  # outside the private /tmp
    pidfile = os.path.join(box, "daemon.pid")
    report = tmp_path / "report.json"
    # The program ends once its daemon has written its pid (no sleep: it waits for the file).
    script = f"(setsid sh -c 'echo $$ > {pidfile}.new; mv {pidfile}.new {pidfile}; exec sleep 3600' &) ; " \
             f"until [ -s {pidfile} ]; do :; done"
    proc = subprocess.run([sys.executable, "-m", "loadmaster.cli", "sandbox", "-q", "--allow-write", box,
                           "--report-json", str(report), "--", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **ENV})
    try:
        assert proc.returncode == 0, proc.stderr
        with open(pidfile) as fh:
            pid = int(fh.read())
        sys.path.insert(0, os.path.join(HERE, "scenarios"))
        from attacks import alive

        assert not alive(pid)
        assert json.loads(report.read_text())["stray_processes_killed"] >= 1
    finally:
        shutil.rmtree(box, ignore_errors=True)


class _Evil:
    """A result whose unpickling runs a command (hole 10)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _evil_result(marker: str) -> _Evil:
    return _Evil(marker)


def test_hole10_plain_results_refuse_a_result_that_would_run_code(tmp_path: Any) -> None:
    import loadmaster
    from loadmaster.errors import TaskFailed, UnsafeResult

    marker = tmp_path / "client-ran-this"
    with loadmaster.Executor(cores=1, memory="1GiB", history=":memory:", results="plain") as ex:
        plain = ex.submit(lambda: {"a": [1, 2.5, "x", b"y", None, True], "s": {1}, "t": (1,)}).result(timeout=60)
        assert plain == {"a": [1, 2.5, "x", b"y", None, True], "s": {1}, "t": (1,)}
        with pytest.raises(TaskFailed) as info:
            ex.submit(_evil_result, str(marker)).result(timeout=60)
    assert not marker.exists(), "unpickling a task's result ran its command in the client"
    assert "os.system" in str(info.value) or "posix.system" in str(info.value)
    assert isinstance(info.value.__cause__, UnsafeResult) or "UnsafeResult" in str(info.value)


def test_hole11_a_fork_bomb_stops_at_the_process_limit(seen: dict[str, Any]) -> None:
    """RLIMIT_NPROC in the task's user namespace (ordinary user), the slot's pids cgroup (root)."""
    bomb = seen["fork_bomb"]
    assert isinstance(bomb, dict), bomb
    assert bomb["error"] == "BlockingIOError" and bomb["started"] < 64, bomb
    assert seen["fork_bomb_box"] == 64
    import loadmaster

    assert loadmaster.Sandbox().max_processes == 1024  # the default every task gets
    if seen["who"] == "root":  # the pids cgroup counts the forks it refused, for the report
        assert seen["fork_bomb_refused"] >= 1, seen["fork_bomb_refused"]
        assert seen["fork_bomb_reported"] == 64, seen["fork_bomb_reported"]  # not what sampling saw


def test_hole7_metadata_of_files_outside_the_sandbox_cannot_change(seen: dict[str, Any]) -> None:
    meta = seen["metadata"]
    assert isinstance(meta, dict), meta
    assert all(v != "done" for v in meta.values()), meta
    assert all("Read-only file system" in v for v in meta.values()), meta  # the read-only view refused
    assert seen["meta_changed"] == [], seen["meta_changed"]
    assert seen["metadata_box"]["read_only_view"] is True, seen["metadata_box"]  # the report says so


def test_hole6_a_unix_socket_on_a_path_is_unreachable(seen: dict[str, Any]) -> None:
    assert seen["unix_accepted"] == "", "a task with the default sandbox reached a UNIX socket on a path"
    assert seen["unix_connect"] != "connected", seen["unix_connect"]
    assert "Permission denied" in seen["unix_connect"], seen["unix_connect"]
    assert "raised:" in seen["unix_connect_cmd"] or "Permission denied" in seen["unix_connect_cmd"]
    assert seen["metadata_box"]["unix_sockets"] is False, seen["metadata_box"]  # the report says so


def test_hole6_a_datagram_unix_socket_on_a_path_is_unreachable(seen: dict[str, Any]) -> None:
    # socket(AF_UNIX) is refused, but a datagram socketpair could sendto (or connect to)
    # any datagram socket on a path: journald's, /dev/log, sd_notify's.
    assert seen["unix_dgram_received"] == [], "a sandboxed task reached a datagram UNIX socket on a path"
    assert seen["unix_dgram"] == {"socketpair": "PermissionError: Permission denied"}, seen["unix_dgram"]


def test_a_task_cannot_read_the_session_keyring_it_inherited(seen: dict[str, Any]) -> None:
    # The kernel keyrings are not namespaced: a task forked from the zygote held its session
    # keyring (a login's Kerberos tickets, an ecryptfs key) and read its keys.
    assert seen["session_key"] != "hunter2", "a sandboxed task read a key of its session keyring"
    assert seen["session_key"] == "search: errno 13", seen["session_key"]  # seccomp: EACCES
    assert seen["session_key_unix"] == "search: errno 13", seen["session_key_unix"]  # with UNIX sockets too


def test_a_user_namespace_of_its_own_does_not_undo_the_read_only_view(seen: dict[str, Any]) -> None:
    got = seen["userns_remount"]
    assert isinstance(got, dict) and got["write"] == "Read-only file system", got
    assert all(v != 0 for k, v in got.items() if k.startswith(("remount", "umount"))), got


def test_hole6_multiprocessing_still_works_in_a_default_sandbox(seen: dict[str, Any]) -> None:
    mp = seen["multiprocessing"]
    assert isinstance(mp, dict), mp
    assert mp["pool"] == [-1, -2, -3] and mp["queue"] == 7 and mp["pipe"] == "duplex", mp
    assert mp["process_pool_executor"] == [-4, -5], mp
    # What it loses (docs/sandbox.md): a Manager's server listens on a UNIX socket; it
    # fails to start (its parent sees EOFError), or, with UNIX sockets allowed, works.
    assert mp["manager"] != 1, mp
    with_unix = seen["multiprocessing_unix"]
    assert isinstance(with_unix, dict) and with_unix["manager"] == 1, with_unix  # Sandbox(unix_sockets=True)


def test_hole11_the_private_tmp_has_a_size_limit(seen: dict[str, Any]) -> None:
    fill = seen["fill_tmp"]
    assert isinstance(fill, dict), fill
    assert "No space left on device" in fill["error"] and fill["written_mib"] < 9, fill
    box = seen["fill_tmp_box"]
    assert box["tmp_size"] == 8 << 20, box
    assert box["leftovers"]["tmp_full"] is True, box["leftovers"]  # reported
    default = seen["default_tmp"]
    assert default == {"written_mib": 16, "error": ""}, default  # the default limit is well above 16 MiB
    import loadmaster

    assert loadmaster.Sandbox().tmp_size == 1 << 30
