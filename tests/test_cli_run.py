"""``loadmaster run FILE``: parsing (every bad line named, nothing started), real runs, exit status.

Commands really run (through the real executor, real processes, a real history
file); a bad file is checked by a marker file its good lines would have created.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadmaster.cli import main
from loadmaster.commands.run import TaskFileError, parse_task_file
from loadmaster.spec import Resources

MiB = 1 << 20


def test_parse_plain_json_comments_and_hostile_text() -> None:
    text = "\n".join(
        [
            "# header",
            "",
            "   echo 'a b' \"c\"  ",
            '{"command": ["/bin/echo", "it\'s", "ünïcødé"], "category": "e", '
            '"resources": {"memory": "512MiB", "cores": 0.5}}',
            '{"command": "ls", "cwd": "/tmp/x y", "env": {"A": "1"}}',
            "  # indented comment",
        ]
    )
    tasks = parse_task_file(text, source="t.txt")
    assert [t.lineno for t in tasks] == [3, 4, 5]
    assert tasks[0].command == "echo 'a b' \"c\""
    assert tasks[1].command == ("/bin/echo", "it's", "ünïcødé")
    assert tasks[1].resources == Resources(memory=512 * MiB, cores=0.5)
    assert tasks[1].category == "e"
    assert (tasks[2].cwd, tasks[2].env) == ("/tmp/x y", {"A": "1"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"command": "x"', "not valid JSON"),
        ('{"command": "x", "mem": 1}', "unknown key(s) 'mem'"),
        ('{"command": "x", "resources": {"memory": "lots"}}', "cannot read 'lots'"),
        ('{"command": "x", "resources": {"memory": "-1GiB"}}', "negative"),
        ('{"command": "x", "resources": {"ram": 1}}', "unknown field(s) ram"),
        ('{"command": "   "}', '"command" is empty'),
        ('{"command": []}', "non-empty list"),
        ('{"category": "x"}', 'no "command"'),
        ('{"command": 5}', "must be a string or a list"),
        ('{"command": "x", "category": ""}', '"category" must be a non-empty string'),
        ("[1, 2]", None),  # not starting with "{": a shell command, valid
    ],
)
def test_each_bad_line_is_named_with_its_number(line: str, message: str | None) -> None:
    text = f"echo ok\n\n{line}\n"
    if message is None:
        assert len(parse_task_file(text)) == 2
        return
    with pytest.raises(TaskFileError) as info:
        parse_task_file(text, source="jobs.txt")
    assert info.value.errors[0][0] == 3
    assert message in info.value.errors[0][1]
    assert f"jobs.txt:3: {message}" in str(info.value) or "jobs.txt:3:" in str(info.value)


def test_bad_file_exits_2_names_lines_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    tasks = tmp_path / "tasks.txt"
    tasks.write_text(
        f"touch '{marker}'\n"
        '{"command": "echo", "resources": {"memory": "lots"}}\n'
        f"touch '{marker}-2'\n"
        '{"command": "echo" \n'
    )
    history = tmp_path / "h.sqlite"
    assert main(["run", str(tasks), "--history", str(history)]) == 2
    err = capsys.readouterr().err
    assert f"{tasks}:2:" in err and f"{tasks}:4:" in err and "nothing was run" in err
    assert not marker.exists() and not Path(f"{marker}-2").exists()
    assert not history.exists()  # not even an executor was started


def test_task_bigger_than_node_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    tasks = tmp_path / "tasks.txt"
    tasks.write_text(
        f'touch \'{marker}\'\n{{"command": "true", "resources": {{"memory": "2GiB"}}}}\n'
    )
    rc = main(["run", str(tasks), "--memory", "1GiB", "--history", ":memory:"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{tasks}:2: asks for memory=2 GiB, more than this node's 1 GiB" in err
    assert not marker.exists()


def test_mixed_file_runs_and_failure_gives_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Commands run (sandboxed) in the directory `loadmaster run` was started in.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "made by line 1"
    tasks = tmp_path / "tasks.txt"
    tasks.write_text(
        "# mixed\n"
        "echo hello > 'made by line 1'\n"
        '{"command": ["sh", "-c", "echo to-stderr >&2; exit 3"], "category": "bad"}\n'
        f'{{"command": "{sys.executable} -c \\"b = bytearray(60 * 2**20)\\"", "category": "hog", '
        '"resources": {"memory": "300MiB"}}\n'
    )
    report = tmp_path / "report.html"
    logs = tmp_path / "logs"
    rc = main(
        ["run", str(tasks), "--history", ":memory:", "--report", str(report), "--logs", str(logs)]
    )
    assert rc == 1
    captured = capsys.readouterr()
    assert out.read_text() == "hello\n"
    assert "line 3 failed (exit status 3)" in captured.err and "| to-stderr" in captured.err
    lines = captured.out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["category", "tasks", "failed", "retries"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:] if ln.strip()}
    assert rows["bad"][1:3] == ["1", "1"]
    assert rows["hog"][1:3] == ["1", "0"]
    assert rows["all"][1:3] == ["3", "1"]
    assert "3 tasks, 1 failed" in captured.out
    assert f"report: {report.resolve()}" in captured.out
    assert (logs / "line-0003.err").read_text() == "to-stderr\n"
    assert 'aria-label="memory waste per category"' in report.read_text()


def test_json_output_is_parseable_and_complete(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.txt"
    tasks.write_text('echo "one"\n{"command": ["false"]}\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadmaster.cli",
            "run",
            str(tasks),
            "--json",
            "--history",
            ":memory:",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["failed"] == 1
    by_line = {t["line"]: t for t in doc["tasks"]}
    assert by_line[1]["ok"] and by_line[1]["stdout"] == "one\n"
    assert by_line[1]["report"]["peak_memory"] < 20 * MiB
    assert by_line[2]["returncode"] == 1 and not by_line[2]["ok"]
    assert {c["category"] for c in doc["categories"]} == {"echo", "false"}


def test_all_succeeding_exits_0_reading_stdin(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadmaster.cli",
            "run",
            "-",
            "--history",
            str(tmp_path / "h.sqlite"),
        ],
        input="true\ntrue\n/bin/echo hi\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 tasks, 0 failed" in proc.stdout
    assert (tmp_path / "h.sqlite").exists()
