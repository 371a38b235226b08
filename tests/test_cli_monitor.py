"""``loadmaster monitor -- CMD``: the report it prints, where output goes, the exit status.

Real commands in real processes through the installed ``loadmaster`` entry point
(``python -m loadmaster.cli``). The lead's tests check measurement accuracy in
depth; these check the command's behaviour.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MiB = 1 << 20


def monitor(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadmaster.cli", "monitor", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_json_of_bin_true_is_small_and_stdout_is_only_json() -> None:
    proc = monitor("--json", "--", "/bin/true")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["command"] == ["/bin/true"]
    assert doc["exit_status"] == 0 and doc["outcome"] == "ok"
    assert 0 <= doc["peak_memory"] < 5 * MiB
    assert doc["measure_method"] in ("cgroup-v1", "cgroup-v2", "hwm+sampled-tree")
    for key in ("cpu_time", "wall_time", "cores", "disk", "max_processes", "host", "allocation"):
        assert key in doc


def test_json_child_touching_200_mib_and_output_goes_to_stderr() -> None:
    code = (
        "import sys; b = bytearray(200 * 2**20)\n"
        "for i in range(0, len(b), 4096): b[i] = 1\n"
        "print('child-out'); print('child-err', file=sys.stderr)"
    )
    proc = monitor("--json", "--", "sh", "-c", f'{sys.executable} -c "{code}"')
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # the child's print did not pollute stdout
    assert "child-out" in proc.stderr and "child-err" in proc.stderr
    assert 200 * MiB <= doc["peak_memory"] <= 240 * MiB, doc["peak_memory"] / MiB
    assert doc["max_processes"] >= 2


def test_text_report_passes_output_and_exit_status(tmp_path: Path) -> None:
    proc = monitor("--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert proc.returncode == 7
    assert proc.stdout == "out\n"
    assert proc.stderr.startswith("err\n")
    for label in (
        "Peak memory (whole tree):",
        "CPU time",
        "Wall time:",
        "Exit status: 7",
        "Max processes",
        "Peak measured by:",
        "Host:",
        "Disk written:",
    ):
        assert label in proc.stderr, label


def test_signal_gives_128_plus_n_and_history_is_kept(tmp_path: Path) -> None:
    history = tmp_path / "h.sqlite"
    proc = monitor(
        "--history", str(history), "--category", "killer", "--", "sh", "-c", "kill -9 $$"
    )
    assert proc.returncode == 128 + 9, proc.stderr
    assert "Exit status: -9" in proc.stderr
    from loadmaster.plan.history import History

    h = History(history)
    try:
        (report,) = h.reports(category="killer")
    finally:
        h.close()
    assert report.exit_status == -9


def test_memory_limit_kills_the_tree_and_says_exhausted() -> None:
    code = "b = bytearray(300 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1"
    proc = monitor("--json", "--memory", "100MiB", "--", sys.executable, "-c", code)
    assert proc.returncode != 0
    doc = json.loads(proc.stdout)
    assert doc["outcome"] == "exhausted" and doc["exhausted"] == "memory", doc


def test_no_command_is_a_usage_error() -> None:
    proc = monitor("--json")
    assert proc.returncode == 2
    assert "no command" in proc.stderr and proc.stdout == ""
