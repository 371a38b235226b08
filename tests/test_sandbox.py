"""Per-task sandboxes, for real: forked children, real mounts, real Landlock, real files.

Each scenario runs in a fresh interpreter (``subprocess``) that does what the
zygote does: ``prepare`` → ``fork`` → ``enter`` in the child → operations →
``collect`` in the parent. pytest's own process never forks into namespaces.
Scenarios run twice: as root (as CI does) and as an ordinary user created by
``tests/unprivileged.py``, because the two take different kernel paths (a
plain mount namespace vs. an unprivileged user namespace).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from loadmaster.errors import SandboxError
from loadmaster.node.sandbox import landlock
from loadmaster.node.sandbox.policy import Sandbox, SandboxState, denied_path
from tests import unprivileged

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux namespaces and Landlock")

SCENARIO = r'''
import errno, json, os, socket, sys, time, warnings
warnings.simplefilter("always")
caught = []
warnings.showwarning = lambda m, *a, **k: caught.append(str(m))
from loadmaster.node.sandbox import policy as sb

cfg = json.loads(sys.argv[1])
policy = sb.Sandbox.coerce(cfg.get("policy") or {})

def op(kind, path, arg=None):
    if kind == "read":
        with open(path) as f:
            return f.read(64)
    if kind == "write":
        with open(path, "w") as f:
            return f.write("x" * (arg or 10))
    if kind == "listdir":  # the Python environment, when it lives under /tmp, shows there too
        env = {q.split("/")[2] for q in sb.python_paths_under_tmp() if q.startswith("/tmp/")}
        return len([e for e in os.listdir(path) if not (path == "/tmp" and e in env)])
    if kind == "import":
        __import__(path)
        return path
    if kind == "connect":
        s = socket.create_connection(("127.0.0.1", int(path)), timeout=5)
        s.close()
        return "connected"
    if kind == "exists":
        return os.path.exists(path)
    if kind == "sh":
        import subprocess
        p = subprocess.run(path, shell=True, capture_output=True, text=True)
        return [p.returncode, p.stdout, p.stderr]
    raise ValueError(kind)

def run_ops(ops):
    out = []
    for kind, path, *rest in ops:
        try:
            out.append(["ok", op(kind, path, *rest)])
        except OSError as exc:  # EROFS: refused by the read-only view (a write, a chmod outside)
            out.append(["EROFS" if exc.errno == errno.EROFS else type(exc).__name__, sb.denied_path(exc)])
    return out

def task(n, r_go, w_done):
    """Child side: enter, run ops (optionally in two phases around a barrier), report."""
    state = sb.enter(policy, dirs[n], inputs=cfg.get("inputs", ()), outputs=cfg.get("outputs", ()))
    res = {"state": state.as_dict(), "tmpdir_env": os.environ.get("TMPDIR"), "cwd": os.getcwd()}
    res["ops"] = run_ops(cfg.get("ops", [[]])[n] if cfg.get("per_task") else cfg.get("ops", []))
    if cfg.get("phase2"):
        os.write(w_done, b"1")
        os.read(r_go, 1)
        sibling = dirs[1 - n].root if ntasks == 2 else ""
        ops2 = [[k, p.replace("{sibling}", sibling), *r] for k, p, *r in cfg["phase2"][n]]
        res["ops2"] = run_ops(ops2)
    return res

ntasks = cfg.get("tasks", 1)
dirs = [sb.prepare(policy, cfg["parent_dir"], i) for i in range(ntasks)]
sb.prepare(policy, cfg["parent_dir"], 99)  # a second prepare must not warn again
pids, pipes = [], []
listener = None
if cfg.get("listen"):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    cfg["ops"] = [[k, str(listener.getsockname()[1]) if p == "PORT" else p, *r]
                  for k, p, *r in cfg["ops"]]
for i in range(ntasks):
    r, w = os.pipe()
    r_go, w_go = os.pipe()
    r_done, w_done = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            res = task(i, r_go, w_done)
        except BaseException as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        os.write(w, json.dumps(res).encode())
        os._exit(code)
    os.close(w)
    pids.append(pid)
    pipes.append((r, w_go, r_done))
if cfg.get("phase2"):
    for _, _, r_done in pipes:
        os.read(r_done, 1)  # every task finished phase 1
    for _, w_go, _ in pipes:
        os.write(w_go, b"1")
results = []
for pid, (r, _, _) in zip(pids, pipes):
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    results.append(json.loads(data))
leftovers = [sb.collect(d).as_dict() for d in dirs]
sb.collect(sb.prepare(policy, cfg["parent_dir"], 98))
print(json.dumps({
    "results": results,
    "leftovers": leftovers,
    "roots_exist": [os.path.exists(d.root) for d in dirs],
    "tmpdirs": [d.tmpdir for d in dirs],
    "warnings": caught,
}))
'''


class Workspace:
    """Files a scenario needs, readable by the test user; removed at the end."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.base = tempfile.mkdtemp(prefix="lm-sbx-test-", dir="/var/tmp")
        os.chmod(self.base, 0o755)
        self.script = os.path.join(self.base, "scenario.py")
        with open(self.script, "w") as f:
            f.write(SCENARIO)
        os.chmod(self.script, 0o644)
        self.parent_dir = os.path.join(self.base, "sandboxes")
        os.mkdir(self.parent_dir, 0o777)
        os.chmod(self.parent_dir, 0o777)
        self.out_dir = os.path.join(self.base, "outputs")
        os.mkdir(self.out_dir)
        os.chmod(self.out_dir, 0o777)
        # Secrets the ordinary permission bits would let anyone read: only the sandbox stops them.
        self.root_dir = f"/root/lm-sbx-secret-{tag}"
        self.home_dir = f"/home/lm-sbx-someone-{tag}"
        self.root_secret = os.path.join(self.root_dir, "secret.txt")
        self.home_secret = os.path.join(self.home_dir, "secret.txt")
        for d, f in ((self.root_dir, self.root_secret), (self.home_dir, self.home_secret)):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
            with open(f, "w") as fh:
                fh.write("top secret\n")
            os.chmod(f, 0o644)

    def cleanup(self) -> None:
        for d in (self.base, self.root_dir, self.home_dir):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ws() -> Iterator[Workspace]:
    if os.geteuid() != 0:
        pytest.skip("the scenarios plant files under /root and /home: run as root (as CI does)")
    w = Workspace()
    yield w
    w.cleanup()


Runner = Callable[..., dict[str, Any]]


@pytest.fixture(params=["root", "user"])
def run(request: pytest.FixtureRequest, ws: Workspace) -> Runner:
    """Run the scenario with a config, as root or as the ordinary test user."""
    as_user = request.param == "user"
    if as_user and unprivileged.unprivileged_user() is None:
        pytest.skip(f"no unprivileged user: {unprivileged.skip_reason()}")

    def runner(env: dict[str, str] | None = None, **cfg: Any) -> dict[str, Any]:
        cfg.setdefault("parent_dir", ws.parent_dir)
        arg = json.dumps(cfg)
        if as_user:
            proc = unprivileged.run_as_user(ws.script, arg, env=env, timeout=60)
        else:
            full_env = {**os.environ, **(env or {})}
            proc = subprocess.run(
                [sys.executable, ws.script, arg],
                capture_output=True,
                text=True,
                timeout=60,
                env=full_env,
                cwd="/",
            )
        assert proc.returncode == 0, proc.stderr
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        for res in out["results"]:
            assert "error" not in res, res
        out["as_user"] = as_user
        return out

    return runner


def _landlock_or_skip() -> None:
    if landlock.abi_version() == 0:
        pytest.skip("this kernel has no Landlock: file rules cannot be tested here")


def test_leftovers_are_reported_and_removed(run: Runner, ws: Workspace) -> None:
    out = run(
        ops=[
            ["write", "/tmp/scratch.bin", 5000],
            ["write", "left-in-work.txt", 300],
            ["sh", "mkdir -p /tmp/deep/er && echo hello > /tmp/deep/er/f && echo ok"],
        ]
    )
    res = out["results"][0]
    assert [o[0] for o in res["ops"]] == ["ok", "ok", "ok"], res
    st = SandboxState(**{**res["state"], "notes": tuple(res["state"]["notes"])})
    if st.private_tmp:
        assert res["tmpdir_env"] == "/tmp"
    left = out["leftovers"][0]
    assert left["files"] == 3
    assert left["bytes"] == 5000 + 300 + 6
    assert left["largest"][0] == ["tmp/scratch.bin", 5000]
    assert ["work/left-in-work.txt", 300] in left["largest"]
    assert left["errors"] == []
    assert out["roots_exist"] == [False]
    assert not os.path.exists("/tmp/scratch.bin") or not st.private_tmp


def test_private_tmp_is_used_and_reported(run: Runner) -> None:
    out = run(ops=[["write", "/tmp/x", 1]])
    st = out["results"][0]["state"]
    assert st["private_tmp"], st["notes"]
    assert st["namespaces"] == ("user+mount" if out["as_user"] else "mount")


def _deny_ops(ws: Workspace) -> list[list[Any]]:
    return [
        ["read", ws.root_secret],
        ["read", ws.home_secret],
        ["write", os.path.join(ws.out_dir, "not-declared.txt")],
        ["listdir", "/proc"],
        ["read", "/proc/1/status"],
        ["listdir", "/home"],
    ]


def _control_ops() -> list[list[Any]]:
    # What a normal program must still be able to do.
    return [
        ["read", "/proc/self/status"],
        ["import", "xml.dom.minidom"],  # a lazy stdlib import after the rules
        ["write", "/tmp/fine", 3],
        ["read", "/etc/hostname"],
        ["write", "/dev/null", 3],
        ["sh", "echo hi | tr h H"],
    ]


def test_undeclared_access_is_refused(run: Runner, ws: Workspace) -> None:
    _landlock_or_skip()
    out = run(ops=_deny_ops(ws) + _control_ops())
    res = out["results"][0]
    assert res["state"]["fs_rules"], res["state"]["notes"]
    denied, control = res["ops"][:6], res["ops"][6:]
    assert [d[0] for d in denied] == ["PermissionError"] * 2 + ["EROFS"] + ["PermissionError"] * 3, denied
    assert denied[2][1] == os.path.join(ws.out_dir, "not-declared.txt")  # reported as the sandbox's doing
    # The report can say the sandbox (not the permission bits) refused it.
    assert denied[0][1] == ws.root_secret
    assert denied[1][1] == ws.home_secret
    assert [c[0] for c in control] == ["ok"] * 6, control
    assert control[-1][1][:2] == [0, "Hi\n"]
    assert not os.path.exists(os.path.join(ws.out_dir, "not-declared.txt"))


def test_declared_access_succeeds(run: Runner, ws: Workspace) -> None:
    _landlock_or_skip()
    out_file = os.path.join(ws.out_dir, f"declared-{uuid.uuid4().hex[:6]}.txt")
    sub_dir = os.path.join(ws.out_dir, f"dir-{uuid.uuid4().hex[:6]}")
    os.mkdir(sub_dir)
    os.chmod(sub_dir, 0o777)
    out = run(
        policy={"allow_read": ["/proc", "/home"], "allow_write": [sub_dir]},
        inputs=[ws.root_secret],
        outputs=[out_file],
        ops=[
            ["read", ws.root_secret],
            ["read", ws.home_secret],
            ["write", out_file],
            ["write", os.path.join(sub_dir, "any-name.txt")],
            ["listdir", "/proc"],
            ["read", "/proc/1/status"],
            ["write", os.path.join(ws.out_dir, "still-not-declared.txt")],
        ],
    )
    ops = out["results"][0]["ops"]
    assert [o[0] for o in ops[:6]] == ["ok"] * 6, ops
    assert ops[0][1] == "top secret\n"
    assert ops[6][0] == "EROFS"  # the read-only view refuses it before Landlock would
    with open(out_file) as f:
        assert f.read() == "x" * 10
    assert os.path.exists(os.path.join(sub_dir, "any-name.txt"))


def test_concurrent_tasks_cannot_see_each_others_tmp(run: Runner) -> None:
    out = run(
        tasks=2,
        per_task=True,
        ops=[[["write", "/tmp/mine-0", 7]], [["write", "/tmp/mine-1", 9]]],
        phase2=[
            [["exists", "/tmp/mine-1"], ["exists", "/tmp/mine-0"], ["listdir", "/tmp"]],
            [["exists", "/tmp/mine-0"], ["exists", "/tmp/mine-1"], ["listdir", "/tmp"]],
        ],
    )
    for n, res in enumerate(out["results"]):
        assert res["state"]["private_tmp"], res["state"]["notes"]
        assert res["ops"] == [["ok", 7 + 2 * n]]
        # Both wrote before either looked: each sees only its own file.
        assert res["ops2"] == [["ok", False], ["ok", True], ["ok", 1]], res["ops2"]
    assert [lo["files"] for lo in out["leftovers"]] == [1, 1]


def test_other_tasks_sandbox_is_denied_by_path(run: Runner, ws: Workspace) -> None:
    _landlock_or_skip()
    out = run(
        tasks=2,
        per_task=True,
        ops=[[["write", "/tmp/s0", 1]], [["write", "/tmp/s1", 1]]],
        phase2=[
            [["read", "{sibling}/tmp/s1"], ["listdir", ws.parent_dir], ["listdir", "{sibling}"]],
            [
                ["read", "{sibling}/tmp/s0"],
                ["listdir", ws.parent_dir],
                ["write", "{sibling}/work/x"],
            ],
        ],
    )
    for res in out["results"]:
        # The sibling's work directory is read-only in this task's view (EROFS) and Landlock's too.
        assert [o[0] for o in res["ops2"]] in (["PermissionError"] * 3, ["PermissionError"] * 2 + ["EROFS"]), \
            res["ops2"]


def test_network_is_off_by_default_and_on_when_asked(run: Runner) -> None:
    abi = landlock.abi_version()
    if abi < 4:
        pytest.skip(f"Landlock ABI {abi} has no network rules (needs 4)")
    off = run(listen=True, ops=[["connect", "PORT"]])
    assert off["results"][0]["ops"][0][0] == "PermissionError"
    assert off["results"][0]["state"]["network_rules"]
    on = run(listen=True, policy={"network": True}, ops=[["connect", "PORT"]])
    assert on["results"][0]["ops"] == [["ok", "connected"]]
    assert not on["results"][0]["state"]["network_rules"]


def test_landlock_unavailable_degrades_and_warns_once(run: Runner, ws: Workspace) -> None:
    out = run(
        env={"LOADMASTER_SANDBOX_DISABLE": "landlock"},
        ops=[["read", ws.root_secret], ["write", "/tmp/a", 2]],
    )
    res = out["results"][0]
    st = res["state"]
    assert not st["fs_rules"] and st["landlock_abi"] == 0
    assert any("Landlock unavailable" in n for n in st["notes"]), st["notes"]
    assert st["private_tmp"]  # the rest still in force
    assert res["ops"][0] == ["ok", "top secret\n"]  # not protected, and the report says so
    assert res["ops"][1][0] == "ok"
    assert len(out["warnings"]) == 1, out["warnings"]
    assert "Landlock is unavailable" in out["warnings"][0]


def test_namespaces_unavailable_degrades(run: Runner, ws: Workspace) -> None:
    out = run(
        env={"LOADMASTER_SANDBOX_DISABLE": "namespaces"},
        ops=[
            ["sh", 'echo data > "$TMPDIR/t" && echo ok'],
            ["write", "/tmp/shared-tmp-write", 1],
        ],
    )
    res = out["results"][0]
    st = res["state"]
    assert not st["private_tmp"]
    assert res["tmpdir_env"] == out["tmpdirs"][0]  # TMPDIR still private
    assert res["ops"][0][0] == "ok" and res["ops"][0][1][0] == 0
    if st["fs_rules"]:
        assert res["ops"][1][0] == "PermissionError"  # the shared /tmp is off limits
    assert len(out["warnings"]) == 1 and "namespaces" in out["warnings"][0]
    assert out["leftovers"][0]["files"] == 1


def test_sandbox_under_tmp_still_works(run: Runner, ws: Workspace) -> None:
    parent = tempfile.mkdtemp(prefix="lm-sbx-under-tmp-", dir="/tmp")
    os.chmod(parent, 0o777)
    try:
        out = run(parent_dir=parent, ops=[["write", "in-work", 4], ["write", "/tmp/t", 5]])
        res = out["results"][0]
        assert res["cwd"].startswith(parent)
        assert [o[0] for o in res["ops"]] == ["ok", "ok"], res
        assert out["leftovers"][0]["files"] == 2
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_disabled_policy_is_a_no_op(run: Runner) -> None:
    out = run(policy={"enabled": False}, ops=[["write", "/dev/null", 1]])
    st = out["results"][0]["state"]
    assert st["enabled"] is False and not st["private_tmp"] and not st["fs_rules"]


def test_policy_validation() -> None:
    with pytest.raises(SandboxError, match="not a path"):
        Sandbox(allow_read=(1,))  # type: ignore[arg-type]
    with pytest.raises(SandboxError, match="NUL"):
        Sandbox(allow_write=("a\0b",))
    with pytest.raises(SandboxError, match="TCP port"):
        Sandbox(allow_connect_ports=(70000,))
    with pytest.raises(SandboxError, match="unknown field"):
        Sandbox.coerce({"alow_read": ["/x"]})
    with pytest.raises(SandboxError, match="tmp_size"):
        Sandbox(tmp_size=100)
    with pytest.raises(SandboxError, match="tmp_size"):
        Sandbox(tmp_size=True)  # type: ignore[arg-type]
    assert Sandbox.coerce({"tmp_size": None, "unix_sockets": True}) == Sandbox(tmp_size=None, unix_sockets=True)
    assert Sandbox.coerce(False).enabled is False
    assert Sandbox.coerce(None) == Sandbox()
    odd = '/data/with space/it\'s "quoted"/ünï'
    assert Sandbox(allow_read=odd).allow_read == (odd,)
    assert Sandbox(allow_read=("rel",)).allow_read == (os.path.abspath("rel"),)


# ── the CLI ───────────────────────────────────────────────────────────────────


def _cli(*args: str, as_user: bool = False) -> subprocess.CompletedProcess[str]:
    argv = ["-m", "loadmaster.cli", "sandbox", *args]
    if as_user:
        code = "import sys; from loadmaster.cli import main; sys.exit(main(sys.argv[1:]))"
        return unprivileged.run_as_user("-c", code, *argv[2:], timeout=60)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("who", ["root", "user"])
def test_cli_runs_a_command(ws: Workspace, who: str) -> None:
    _landlock_or_skip()
    if who == "user" and unprivileged.unprivileged_user() is None:
        pytest.skip(f"no unprivileged user: {unprivileged.skip_reason()}")
    report = os.path.join(ws.base, f"report-{who}.json")
    open(report, "w").close()
    os.chmod(report, 0o666)
    common = ("--sandbox-dir", ws.parent_dir, "--report-json", report)
    proc = _cli(
        *common,
        "--",
        "sh",
        "-c",
        f"echo hi > /tmp/x; echo hello; cat {ws.root_secret}",
        as_user=who == "user",
    )
    assert proc.returncode == 1, proc.stderr  # cat failed
    assert proc.stdout == "hello\n"
    assert "Permission denied" in proc.stderr
    assert "left 1 file(s), 3 B" in proc.stderr
    with open(report) as f:
        rep = json.load(f)
    assert rep["exit_status"] == 1
    assert rep["leftovers"]["largest"] == [["tmp/x", 3]]
    assert rep["denied"] == [ws.root_secret]
    assert rep["sandbox"]["fs_rules"] and rep["sandbox"]["private_tmp"]

    ok = _cli(*common, "--allow-read", ws.root_dir, "--", "cat", ws.root_secret, as_user=who == "user")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "top secret\n"
    assert "left nothing behind" in ok.stderr

    missing = _cli(*common, "-q", "--", "no-such-program-xyz", as_user=who == "user")
    assert missing.returncode == 127
    assert "not found" in missing.stderr


def test_cli_signal_exit_status(ws: Workspace) -> None:
    proc = _cli("--sandbox-dir", ws.parent_dir, "-q", "--", "sh", "-c", "kill -TERM $$")
    assert proc.returncode == 128 + 15


def test_denied_path_ignores_ordinary_permission_errors(tmp_path: Any) -> None:
    # Creation refused where the bits forbid it too: not the sandbox's doing.
    exc = PermissionError(13, "Permission denied", "/nonexistent-dir/x")
    assert denied_path(exc, SandboxState(enabled=True, fs_rules=True)) is None
    # Without Landlock in force, nothing is attributed to the sandbox.
    exc2 = PermissionError(13, "Permission denied", str(tmp_path))
    assert denied_path(exc2, SandboxState(enabled=True, fs_rules=False)) is None
    # Found through the exception chain when the bits would allow it.
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = exc2
    assert denied_path(wrapped, SandboxState(enabled=True, fs_rules=True)) == str(tmp_path)


def test_unix_sockets_still_work_without_network(run: Runner) -> None:
    # AF_UNIX socket pairs are not TCP: Landlock's network rules leave them alone.
    code = "import socket; a, b = socket.socketpair(); a.send(b'k'); print(b.recv(1).decode())"
    out = run(ops=[["sh", f'{sys.executable} -c "{code}"']])
    assert out["results"][0]["ops"][0] == ["ok", [0, "k\n", ""]]


def test_collect_removes_what_the_task_locked_away(tmp_path: Any) -> None:
    from loadmaster.node.sandbox.policy import collect, prepare

    dirs = prepare(Sandbox(enabled=False), str(tmp_path / "sbx"), 7)
    locked = os.path.join(dirs.workdir, "locked", "inner")
    os.makedirs(locked)
    with open(os.path.join(locked, "f"), "w") as f:
        f.write("12345")
    os.symlink("/etc/passwd", os.path.join(dirs.tmpdir, "link"))
    os.chmod(locked, 0o000)
    os.chmod(os.path.dirname(locked), 0o500)
    left = collect(dirs)
    assert left.files == 2
    assert left.errors == ()
    assert not os.path.exists(dirs.root)
    assert os.path.exists("/etc/passwd")
