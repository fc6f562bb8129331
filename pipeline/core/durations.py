"""Durations written the way people write them in configs: "15m", "1h", "7d", "90s", "1h30m"."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d|w)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse "15m", "1h30m", "7d" into a timedelta; a bare number means seconds."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return timedelta(seconds=text)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as '15m', '1h' or '7d', got {text!r}")
    compact = text.replace(" ", "").lower()
    pos, seconds = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact) or not compact:
        raise ValueError(
            f"{text!r} is not a duration: use a number followed by us, ms, s, m, h, d or w "
            "(e.g. '15m', '1h30m', '7d')"
        )
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of a duration, e.g. 90 minutes -> "1h30m"."""
    micros = round(delta.total_seconds() * 1e6)
    if micros == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400_000_000), ("h", 3600_000_000), ("m", 60_000_000),
                       ("s", 1_000_000), ("us", 1)):
        count, micros = divmod(micros, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
