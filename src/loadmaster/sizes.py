"""Parsing and formatting of byte sizes and durations, the way users write them.

Runs in the client only (never imported by the zygote, to keep it lean).
"""

from __future__ import annotations

import math
import re

import humanfriendly

from loadmaster.errors import InvalidSpec

SIZE_FORMS = 'an int (bytes) or a string like "512MiB", "2GB", "1.5 GiB"'
# humanfriendly reads any word after the number as a unit ("2 parsecs" becomes 2 PB),
# so the unit is checked here first.
_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(([kmgtpe]i?)?b?|bytes?)\s*$", re.IGNORECASE)
TIME_FORMS = 'a number (seconds) or a string like "90s", "10m", "2h"'


def parse_size(value: int | float | str, *, what: str = "size") -> int:
    """Return ``value`` as a whole number of bytes.

    Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB,
    MB, GB, TB) powers of 1000, as their standards say.

    Raises:
        InvalidSpec: negative, non-finite or unparsable input.
    """
    if isinstance(value, bool):
        raise InvalidSpec(f"{what}: {value!r} is not a size; give {SIZE_FORMS}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise InvalidSpec(f"{what}: {value!r} is not a size; give {SIZE_FORMS}, not negative")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise InvalidSpec(f"{what}: {value!r} is negative; give {SIZE_FORMS}")
        if not _SIZE.match(text):
            raise InvalidSpec(f"{what}: cannot read {value!r} as a size; give {SIZE_FORMS}")
        try:
            return int(humanfriendly.parse_size(text, binary=False))
        except (humanfriendly.InvalidSize, ValueError) as exc:
            raise InvalidSpec(f"{what}: cannot read {value!r} as a size; give {SIZE_FORMS}") from exc
    raise InvalidSpec(f"{what}: {value!r} is not a size; give {SIZE_FORMS}")


def parse_duration(value: int | float | str, *, what: str = "wall_time") -> float:
    """Return ``value`` as seconds.

    Raises:
        InvalidSpec: negative, zero, non-finite or unparsable input.
    """
    if isinstance(value, bool):
        raise InvalidSpec(f"{what}: {value!r} is not a duration; give {TIME_FORMS}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(humanfriendly.parse_timespan(value.strip()))
        except (humanfriendly.InvalidTimespan, ValueError) as exc:
            raise InvalidSpec(
                f"{what}: cannot read {value!r} as a duration; give {TIME_FORMS}"
            ) from exc
    else:
        raise InvalidSpec(f"{what}: {value!r} is not a duration; give {TIME_FORMS}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidSpec(f"{what}: {value!r} must be a positive duration; give {TIME_FORMS}")
    return seconds


def format_size(nbytes: float | None) -> str:
    """Return a short human form of a byte count in binary units, e.g. ``"301.2 MiB"``."""
    if nbytes is None:
        return "-"
    return str(humanfriendly.format_size(int(nbytes), binary=True))
