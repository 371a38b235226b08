"""loadmaster's own size and duration parser (``sizes.py``): the forms users write, and hostile ones."""

from __future__ import annotations

import time

import pytest

from loadmaster import Resources
from loadmaster.errors import InvalidSpec
from loadmaster.sizes import MAX_SIZE, format_duration, format_size, parse_duration, parse_size

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        (0, 0),
        (4096, 4096),
        (1.9, 1),  # a float is rounded down to whole bytes
        ("512MiB", 512 * MiB),
        ("512 mib", 512 * MiB),
        ("2GB", 2_000_000_000),
        ("1.5 GiB", 3 * GiB // 2),
        ("1e9", 1_000_000_000),  # humanfriendly refused this
        ("2.5e3 KiB", 2500 * KiB),
        ("4k", 4000),  # bare letters are SI, as "kB" is
        ("4K", 4000),
        ("4Ki", 4 * KiB),
        ("  7 b ", 7),
        ("12 bytes", 12),
        ("1.", 1),
        (".5KiB", 512),
        ("2p", 2 * 10**15),  # P is peta, as k is kilo
        ("8EiB", None),  # 2**63: one past SQLite's integer
        (MAX_SIZE, MAX_SIZE),
    ],
)
def test_sizes_users_write(text: int | float | str, nbytes: int | None) -> None:
    if nbytes is None:
        with pytest.raises(InvalidSpec, match="too large"):
            parse_size(text)
    else:
        assert parse_size(text) == nbytes


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("2 parsecs", "cannot read '2 parsecs' as a size"),
        ("2 pb of data", "cannot read"),
        ("nan", "cannot read 'nan'"),
        ("inf", "cannot read 'inf'"),
        ("infinity GiB", "cannot read"),
        (float("nan"), "not a size"),
        (float("inf"), "not a size"),
        ("-1GiB", "'-1GiB' is negative"),
        (-1, "-1 is negative"),
        ("", "cannot read ''"),
        ("   ", "cannot read"),
        ("1 000", "cannot read"),
        ("١٢٣", "cannot read"),  # Arabic-Indic digits: \d would match them without re.ASCII
        ("１２MiB", "cannot read"),  # fullwidth digits
        ("12\u00a0MiB", "cannot read"),  # a no-break space
        ("1e30", "too large"),
        ("1e999999999", "too large"),  # never expanded into a billion-digit int
        (2**64, "too large"),
        ("0x10", "cannot read"),
        (True, "not a size"),
        (None, "not a size"),
        ([1], "not a size"),
    ],
)
def test_junk_sizes_are_refused_with_the_input_and_the_forms(value: object, needle: str) -> None:
    with pytest.raises(InvalidSpec, match=needle) as info:
        parse_size(value, what="memory")  # type: ignore[arg-type]
    text = str(info.value)
    assert text.startswith("memory: ") and '"512MiB"' in text and "GiB = 1024**3" in text


@pytest.mark.timeout(10)
def test_a_huge_string_is_refused_at_once_and_not_echoed() -> None:
    huge = "9" * 10_000_000 + "GiB"
    t0 = time.monotonic()
    with pytest.raises(InvalidSpec, match="10000005 characters") as info:
        parse_size(huge)
    assert time.monotonic() - t0 < 1.0
    assert len(str(info.value)) < 400
    with pytest.raises(InvalidSpec, match="cannot read"):
        parse_duration("1h" * 5_000_000)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (0.5, 0.5),
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),  # humanfriendly refused this
        ("1h 30m 15s", 5415.0),
        ("2 days", 172800.0),
        ("1w", 604800.0),
        ("100ms", 0.1),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (" 3 MIN ", 180.0),
    ],
)
def test_durations_users_write(text: int | float | str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("soon", "cannot read 'soon' as a duration"),
        ("1h30", "cannot read"),  # a bare number after a unit: which unit?
        ("10 parsecs", "cannot read"),
        ("-5s", "negative"),
        ("0s", "positive"),
        (0, "positive"),
        (-3, "positive"),
        ("1e400s", "positive"),  # overflows to inf
        (float("inf"), "positive"),
        (float("nan"), "positive"),
        ("nan", "cannot read"),
        ("", "cannot read"),
        ("٣s", "cannot read"),
        (True, "not a duration"),
    ],
)
def test_junk_durations_are_refused(value: object, needle: str) -> None:
    with pytest.raises(InvalidSpec, match=needle) as info:
        parse_duration(value, what="--timeout")  # type: ignore[arg-type]
    assert str(info.value).startswith("--timeout: ") and '"1h30m"' in str(info.value)


def test_resources_take_the_new_forms() -> None:
    r = Resources(memory="1e9", disk="4Ki", wall_time="1h30m")
    assert (r.memory, r.disk, r.wall_time) == (1_000_000_000, 4096, 5400.0)
    with pytest.raises(ValueError, match="memory: cannot read '2 parsecs'"):
        Resources(memory="2 parsecs")


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (None, "-"),
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1023 bytes"),
        (1536, "1.5 KiB"),
        (301 * MiB + 174 * KiB, "301.17 MiB"),
        (1099511627776, "1 TiB"),
        (23113420596, "21.53 GiB"),
        (MAX_SIZE, "8 EiB"),
    ],
)
def test_format_size(nbytes: int | None, text: str) -> None:
    assert format_size(nbytes) == text


def test_format_size_reads_back() -> None:
    for n in (1, 1000, 5 * MiB, 3 * GiB + 7, 10**15):
        assert abs(parse_size(format_size(n)) - n) <= n * 0.005


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "0.25 s"), (42, "42 s"), (60, "1m"), (3725.5, "1h 2m"), (90061, "1d 1h"), (3 * 86400, "3d")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text.replace(" s", "s")) == pytest.approx(seconds, rel=0.02, abs=60)


def test_resources_describe_in_human_units() -> None:
    r = Resources(cores=0.5, memory="1.5GiB", disk="100GB", gpus=1, wall_time="1h30m")
    assert r.describe() == "0.5 cores, 1.5 GiB memory, 93.13 GiB disk, 1 GPU, 1h 30m wall time"
    assert Resources().describe() == "no limits"
    node = Resources(cores=2, memory=23113420596, gpus=0)
    asked = Resources(cores=4, memory=1099511627776, gpus=1)
    assert asked.describe_excess(node) == "cores 4 > 2, memory 1 TiB > 21.53 GiB, gpus 1 > 0"


def test_the_api_error_for_too_much_memory_shows_human_sizes() -> None:
    import loadmaster

    with (
        loadmaster.Executor(history=":memory:", sandbox=False, zygotes=1, memory=23113420596) as ex,
        pytest.raises(InvalidSpec) as info,
    ):
        ex.options(resources={"memory": 1099511627776}).submit(print, 1)
    text = str(info.value)
    assert "memory 1 TiB > " in text and "GiB memory" in text
    assert "1099511627776" not in text and "Resources(" not in text
