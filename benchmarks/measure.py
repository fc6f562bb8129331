"""What the benchmarks share: row counts as typed, the spread of repetitions, and saving a result
as JSON plus PNG."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

SUFFIXES = {"k": 1_000, "m": 1_000_000}


def parse_rows(text: str) -> int:
    """"1M" → 1000000, "200k" → 200000, "5000" → 5000."""
    text = text.strip().lower()
    if text[-1:] in SUFFIXES:
        return round(float(text[:-1]) * SUFFIXES[text[-1]])
    return int(text)


def parse_sizes(text: str) -> list[int]:
    """"1M,10M" → [1000000, 10000000], ascending."""
    return sorted(parse_rows(size) for size in text.split(","))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def save(results: dict, path: Path, chart: Callable[[dict, Path], None]) -> None:
    """`results` as `path` (JSON) and, drawn by `chart`, the PNG beside it."""
    path.write_text(json.dumps(results, indent=2))
    chart(results, path.with_suffix(".png"))
