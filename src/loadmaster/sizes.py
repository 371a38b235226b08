"""Parsing and formatting of byte sizes and durations, the way users write them.

Who runs this code: the client only (the executor, ``Resources``, the CLI);
never imported by the zygote or a task, so it stays small and stdlib-only.

What it accepts (also in ``docs/cli.md``):

* **Sizes**: a whole number of bytes (an ``int``, or a finite, non-negative
  ``float``, rounded down), or a string: a number (``"512"``, ``"1.5"``,
  ``"1e9"``, ASCII digits only) and an optional unit, with optional spaces
  between. Units, case-insensitive: ``B``/``byte``/``bytes``; **IEC** binary
  ``KiB MiB GiB TiB PiB EiB`` (also ``Ki``, ``Mi``, ...) are powers of 1024;
  **SI** decimal ``kB MB GB TB PB EB`` and the bare letters ``k M G T P E``
  are powers of 1000, as their standards say (``"4k"`` is 4,000 bytes;
  write ``"4KiB"`` for 4,096). Nothing else: ``"2 parsecs"``, ``"nan"``,
  ``"inf"``, ``"-1GiB"``, ``"1 000"`` and non-ASCII digits are refused.
  The result must fit SQLite's integer (below 2**63 bytes, 8 EiB).
* **Durations**: a positive number of seconds, or a string of one or more
  ``<number><unit>`` parts (``"90s"``, ``"10m"``, ``"1h30m"``, ``"1h 30m"``,
  ``"2 days"``, ``"100ms"``) or a bare number (seconds). Units: ``ms``,
  ``s``/``sec``/``second(s)``, ``m``/``min``/``minute(s)``, ``h``/``hr``/
  ``hour(s)``, ``d``/``day(s)``, ``w``/``week(s)``.

Every refusal is an :class:`~loadmaster.errors.InvalidSpec` naming the field,
the input and the accepted forms. Inputs are bounded (:data:`MAX_TEXT`
characters) before any work, so a hostile string costs nothing.

This module does *not* cover: what a size or a duration is used for (``spec.py``
checks a request against a node; the ledger reserves bytes).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, DecimalException

from loadmaster.errors import InvalidSpec

SIZE_FORMS = 'an int (bytes) or a string like "512MiB", "2GB", "1.5 GiB", "1e9" (GiB = 1024**3, GB = 1000**3)'
TIME_FORMS = 'a number (seconds) or a string like "90s", "10m", "1h30m", "2h"'

#: The largest size accepted, in bytes: SQLite's largest integer (the history stores sizes).
MAX_SIZE = 2**63 - 1

#: Longer strings are refused before they are parsed (no legitimate size or duration is this long).
MAX_TEXT = 64

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"
# re.ASCII: \d and \s match ASCII only, so "١٢٣" (Arabic-Indic digits) is refused, not read as 123.
_SIZE = re.compile(rf"\s*({_NUMBER})\s*([a-z]*)\s*", re.IGNORECASE | re.ASCII)
_PART = re.compile(rf"\s*({_NUMBER})\s*([a-z]*)", re.IGNORECASE | re.ASCII)

_SI_PREFIX = "kmgtpe"
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1, "byte": 1, "bytes": 1}
for _i, _p in enumerate(_SI_PREFIX, start=1):
    _SIZE_UNITS[_p] = _SIZE_UNITS[_p + "b"] = 1000**_i
    _SIZE_UNITS[_p + "i"] = _SIZE_UNITS[_p + "ib"] = 1024**_i

_TIME_UNITS: dict[str, float] = {"": 1.0, "ms": 1e-3}
for _names, _seconds in (
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "week", "weeks"), 604800.0),
):
    for _n in _names:
        _TIME_UNITS[_n] = _seconds

_IEC_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def _shown(value: object) -> str:
    """``repr(value)``, cut short for a message (a 10 MB string is not echoed back)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def parse_size(value: int | float | str, *, what: str = "size") -> int:
    """Return ``value`` as a whole number of bytes (forms: the module docstring).

    Raises:
        InvalidSpec: negative, non-finite, too large, or unparsable input; the
            message names ``what``, the input and the accepted forms.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidSpec(f"{what}: {_shown(value)} is not a size; give {SIZE_FORMS}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSpec(f"{what}: {value!r} is not a size; give {SIZE_FORMS}")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidSpec(f"{what}: {value!r} is negative; give {SIZE_FORMS}")
        if value > MAX_SIZE:
            raise InvalidSpec(f"{what}: {value!r} is too large (more than 8 EiB); give {SIZE_FORMS}")
        return int(value)
    text = value.strip()
    if len(text) > MAX_TEXT:
        raise InvalidSpec(f"{what}: cannot read {_shown(value)} as a size; give {SIZE_FORMS}")
    if text.startswith("-"):
        raise InvalidSpec(f"{what}: {_shown(value)} is negative; give {SIZE_FORMS}")
    match = _SIZE.fullmatch(text)
    multiplier = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or multiplier is None:
        raise InvalidSpec(f"{what}: cannot read {_shown(value)} as a size; give {SIZE_FORMS}")
    try:
        nbytes = Decimal(match.group(1)) * multiplier
    except DecimalException as exc:  # an exponent beyond Decimal's range
        raise InvalidSpec(f"{what}: {_shown(value)} is too large (more than 8 EiB); give {SIZE_FORMS}") from exc
    if nbytes > MAX_SIZE:  # compared as a Decimal: "1e999999" is never expanded to an int
        raise InvalidSpec(f"{what}: {_shown(value)} is too large (more than 8 EiB); give {SIZE_FORMS}")
    return int(nbytes)


def parse_duration(value: int | float | str, *, what: str = "wall_time") -> float:
    """Return ``value`` as seconds (forms: the module docstring).

    Raises:
        InvalidSpec: negative, zero, non-finite or unparsable input; the message
            names ``what``, the input and the accepted forms.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidSpec(f"{what}: {_shown(value)} is not a duration; give {TIME_FORMS}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        seconds = _parse_duration_text(value, what)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidSpec(f"{what}: {_shown(value)} must be a positive duration; give {TIME_FORMS}")
    return seconds


def _parse_duration_text(value: str, what: str) -> float:
    text = value.strip()
    bad = InvalidSpec(f"{what}: cannot read {_shown(value)} as a duration; give {TIME_FORMS}")
    if len(text) > MAX_TEXT:
        raise bad
    if text.startswith("-"):
        raise InvalidSpec(f"{what}: {_shown(value)} is negative; give a positive duration, {TIME_FORMS}")
    if not text:
        raise bad
    seconds, pos, units = 0.0, 0, list[str]()
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            raise bad
        unit = match.group(2).lower()
        if unit not in _TIME_UNITS:
            raise bad
        units.append(unit)
        seconds += float(match.group(1)) * _TIME_UNITS[unit]
        pos = match.end()
    if len(units) > 1 and "" in units:
        raise bad  # "1h 30": which unit was meant for 30?
    return seconds


def format_size(nbytes: float | None) -> str:
    """Return a short human form of a byte count in IEC units, e.g. ``"301.17 MiB"``.

    Two decimals at most, trailing zeros dropped; ``"-"`` for ``None``.
    """
    if nbytes is None:
        return "-"
    n = int(nbytes)
    if abs(n) < 1024:
        return "1 byte" if n == 1 else f"{n} bytes"
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_IEC_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{_round(value)} {_IEC_UNITS[unit]}"


def format_duration(seconds: float) -> str:
    """Return a short human form of a duration, e.g. ``"2h 5m"``, ``"3.25 s"``.

    At most two units, the smaller one rounded down.
    """
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{_round(seconds)} s"
    whole = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size or parts:
            parts.append(f"{whole // size}{unit}")
            whole %= size
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0")) or "0 s"


def _round(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"
