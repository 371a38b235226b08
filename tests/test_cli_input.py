"""What the CLI and ``submit_command`` say about bad input: dash values, huge lines, a missing cwd.

Real commands through the real ``loadmaster`` entry point (in process, via
``cli.main``) and a real executor; nothing is faked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import loadmaster
from loadmaster.cli import main
from loadmaster.commands.argv import join_dash_values
from loadmaster.errors import CommandFailed, InvalidSpec

TEN_MB = 10_000_000


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's own refusals
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ("reserve", "--memory", "-1GiB", "--", "true"),
        ("reserve", "-m", "-1GiB", "--", "true"),
        ("reserve", "--memory=-1GiB", "--", "true"),
    ],
)
def test_reserve_negative_memory_says_negative(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    status, err = _run_cli(capsys, *argv)
    assert status == 2
    assert "'-1GiB' is negative" in err and "expected one argument" not in err


def test_reserve_negative_timeout_and_dash_label(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, err = _run_cli(capsys, "reserve", "-m", "1MiB", "--timeout", "-5s", "--", "true")
    assert status == 2 and "--timeout: '-5s' is negative" in err
    # A label may start with "-"; the command's own "-m -1" is left alone.
    out = tmp_path / "out"
    status, err = _run_cli(
        capsys, "reserve", "--ledger", str(tmp_path / "l"), "-m", "1MiB", "--label", "-x",
        "sh", "-c", f'echo "$@" > {out}', "sh", "-m", "-1",
    )
    assert status == 0, err
    assert out.read_text() == "-m -1\n"


@pytest.mark.parametrize(
    ("argv", "joined"),
    [
        (["--memory", "-1GiB", "--", "x", "--memory", "-2"], ["--memory=-1GiB", "--", "x", "--memory", "-2"]),
        (["-m", "-1", "cmd", "-m", "-2"], ["-m-1", "cmd", "-m", "-2"]),
        (["--memory", "--"], ["--memory", "--"]),
        (["--memory"], ["--memory"]),
        (["--other", "-1", "--memory", "5"], ["--other", "-1", "--memory", "5"]),
        (["--memory", "-λ 'x' y"], ["--memory=-λ 'x' y"]),
    ],
)
def test_join_dash_values(argv: list[str], joined: list[str]) -> None:
    assert join_dash_values(argv, {"--memory", "-m"}, stop_at_positional=True) == joined


def test_run_negative_memory_before_or_after_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tasks = tmp_path / "t.txt"
    tasks.write_text(f"touch {tmp_path / 'ran'}\n")
    for argv in (("--memory", "-1GiB", str(tasks)), (str(tasks), "--memory", "-1GiB")):
        status, err = _run_cli(capsys, "run", "--history", ":memory:", *argv)
        assert status == 2 and "'-1GiB' is negative" in err, err
    assert not (tmp_path / "ran").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("form", ["shell", "json-shell", "json-argv"])
def test_a_10_mb_line_is_refused_at_once(capsys: pytest.CaptureFixture[str], tmp_path: Path, form: str) -> None:
    """It used to hang in shlex.split; the kernel would refuse it anyway (E2BIG)."""
    marker = tmp_path / "ran"
    long = "echo " + "a" * TEN_MB
    line = {
        "shell": long,
        "json-shell": json.dumps({"command": long}),
        "json-argv": json.dumps({"command": ["echo", "a" * TEN_MB]}),
    }[form]
    tasks = tmp_path / "t.txt"
    tasks.write_text(f"touch {marker}\n{line}\n")
    status, err = _run_cli(capsys, "run", "--history", ":memory:", str(tasks))
    assert status == 2
    assert f"{tasks}:2:" in err and "MAX_ARG_STRLEN" in err and "9.54 MiB" in err
    assert len(err) < 2000  # the line is not echoed back
    assert not marker.exists()


def test_a_long_line_under_the_limit_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where `loadmaster run` lets its commands write
    out = tmp_path / "out"
    tasks = tmp_path / "t.txt"
    tasks.write_text(f"echo {'b' * 100_000} > out\n")
    status, err = _run_cli(capsys, "run", "--history", ":memory:", str(tasks))
    assert status == 0, err[-1000:]
    assert out.read_text() == "b" * 100_000 + "\n"


def test_a_missing_cwd_is_refused_at_validation(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    a_file = tmp_path / "file"
    a_file.write_text("")
    tasks = tmp_path / "t.txt"
    tasks.write_text(
        "\n".join(
            [
                f"touch {marker}",
                json.dumps({"command": "pwd", "cwd": str(tmp_path / "no such dir λ")}),
                json.dumps({"command": "pwd", "cwd": str(a_file)}),
                json.dumps({"command": "pwd", "cwd": str(tmp_path)}),
            ]
        )
        + "\n"
    )
    status, err = _run_cli(capsys, "run", "--history", ":memory:", str(tasks))
    assert status == 2
    assert f"{tasks}:2: \"cwd\" {str(tmp_path / 'no such dir λ')!r} does not exist" in err
    assert f"{tasks}:3: \"cwd\" {str(a_file)!r} is not a directory" in err
    assert f"{tasks}:4" not in err and "status 70" not in err
    assert not marker.exists()


@pytest.fixture(scope="module")
def ex() -> loadmaster.Executor:
    with loadmaster.Executor(history=":memory:", zygotes=1, cores=1, memory="1GiB") as e:
        yield e


def test_submit_command_refuses_a_missing_cwd(ex: loadmaster.Executor, tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="does not exist"):
        ex.submit_command("pwd", cwd=tmp_path / "missing")
    (tmp_path / "f").write_text("")
    with pytest.raises(InvalidSpec, match="is not a directory"):
        ex.submit_command(["pwd"], cwd=tmp_path / "f")
    assert ex.submit_command("pwd", cwd=tmp_path).result(60).stdout == f"{tmp_path}\n"


@pytest.mark.timeout(120)
def test_submit_command_with_a_10_mb_line_returns_and_fails_cleanly(ex: loadmaster.Executor) -> None:
    f = ex.submit_command("echo " + "a" * TEN_MB)  # used to hang in shlex.split
    with pytest.raises(CommandFailed):
        f.result(60)
    assert f.report is not None and f.report.category == "echo"
