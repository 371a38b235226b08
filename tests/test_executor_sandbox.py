"""Issue 5 through the Executor: sandboxes are on by default, as root and as an ordinary user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests import unprivileged

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "scenarios", "sandboxed_tasks.py")


@pytest.fixture(scope="module", params=["self", "ordinary-user"])
def results(request: pytest.FixtureRequest) -> dict:
    home = tempfile.mkdtemp(prefix="someone-", dir="/home") if os.path.isdir("/home") else None
    if home is None:
        pytest.skip("no /home on this machine")
    secret = os.path.join(home, "secret.txt")
    with open(secret, "w") as fh:
        fh.write("s3cret")
    os.chmod(home, 0o755)
    os.chmod(secret, 0o644)  # ordinary permissions allow it: only the sandbox stops it
    # Outside /tmp, so that an undeclared write meets Landlock, not the private /tmp.
    work = tempfile.mkdtemp(prefix="lm-sbx-", dir="/var/tmp")
    outdir = os.path.join(work, "outputs")
    os.mkdir(outdir)
    for d in (work, outdir):
        os.chmod(d, 0o777)
    out = os.path.join(work, "result.json")
    env = {"PYTHONPATH": os.path.dirname(HERE) + os.pathsep + os.path.join(os.path.dirname(HERE), "src"),
           "LOADMASTER_LEDGER": os.path.join(work, "ledger")}
    try:
        if request.param == "self":
            proc = subprocess.run([sys.executable, SCRIPT, out, secret, outdir], env={**os.environ, **env},
                                  capture_output=True, text=True, timeout=300)
        else:
            reason = unprivileged.skip_reason()
            if reason:
                pytest.skip(reason)
            proc = unprivileged.run_as_user(SCRIPT, out, secret, outdir, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        with open(out) as fh:
            data = json.load(fh)
        data["written_file"] = os.path.exists(os.path.join(outdir, "result.txt"))
        return data
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_files_left_in_tmp_and_workdir_are_removed_and_reported(results: dict) -> None:
    assert results["litter"] == "/tmp"
    box = results["litter_report"]
    assert box["private_tmp"] and box["fs_rules"]
    left = box["leftovers"]
    assert left["files"] == 2 and left["bytes"] == (3 << 20) + len("left behind")
    assert left["largest"][0] == ["tmp/litter.bin", 3 << 20]
    assert results["litter_root_gone"]


def test_reading_home_of_someone_is_refused_unless_declared(results: dict) -> None:
    assert results["read_secret"] == "denied"
    assert results["read_secret_declared"] == "ok:s3cret"


def test_writing_outside_declared_outputs_is_refused(results: dict) -> None:
    assert results["write_undeclared"] == "denied"
    assert results["write_declared"].startswith("ok:")
    assert results["written_file"]


def test_listing_proc_is_refused_unless_allowed(results: dict) -> None:
    assert results["list_proc"] == "denied"
    assert results["list_proc_declared"].startswith("ok:")


def test_two_tasks_do_not_see_each_others_tmp(results: dict) -> None:
    assert results["tmp_a"] == ["task-a"]
    assert results["tmp_b"] == ["task-b"]


def test_a_degraded_sandbox_is_warned_about_once_and_tasks_still_run(tmp_path) -> None:
    script = tmp_path / "degraded.py"
    script.write_text(
        "import warnings, loadmaster\n"
        "def f():\n"
        "    return 1\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    with loadmaster.Executor(history=':memory:', zygotes=2) as ex:\n"
        "        fs = [ex.submit(f) for _ in range(4)]\n"
        "        assert [x.result() for x in fs] == [1] * 4\n"
        "        state = fs[0].report.extra['sandbox']\n"
        "print(sum('sandbox degraded' in str(w.message) for w in seen), state['fs_rules'])\n"
    )
    env = {**os.environ, "LOADMASTER_SANDBOX_DISABLE": "landlock",
           "PYTHONPATH": os.path.join(os.path.dirname(HERE), "src")}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "False"], (proc.stdout, proc.stderr)
    assert proc.stderr.count("sandbox degraded") <= 1, proc.stderr
