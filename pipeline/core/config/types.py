"""The value types a config's fields are written in: durations ("15m", "7d"), times (ISO 8601,
UTC unless they say otherwise) and names that become path segments."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

from pipeline.core.durations import format_duration, parse_duration

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def _longer_than_zero(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be longer than zero, got {format_duration(value)}")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError(f"must not be negative, got -{format_duration(-value)}")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_longer_than_zero)]
NonNegativeDuration = Annotated[Duration, AfterValidator(_not_negative)]

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _safe_name(value: str) -> str:
    """Names that become path segments (registry folders, run records) cannot escape them."""
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a safe name: use 1 to 128 letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit, and no '..' (it becomes part of "
                         "a path)")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]


def _utc(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid date or time ({exc})") from None
    if hasattr(value, "year") and not isinstance(value, datetime):  # a bare YAML date
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


Timestamp = Annotated[
    datetime,
    BeforeValidator(_utc),
    PlainSerializer(lambda v: v.isoformat(), return_type=str),
]
