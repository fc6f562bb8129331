"""How `pipeline trace` prints values: times in UTC with their zone, durations with their unit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pipeline.core.durations import format_duration


def fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def row_text(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in row.items())
