"""What the benchmarks share: the spread of repetitions, and saving a result as JSON plus PNG."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def save(results: dict, path: Path, chart: Callable[[dict, Path], None]) -> None:
    """`results` as `path` (JSON) and, drawn by `chart`, the PNG beside it."""
    path.write_text(json.dumps(results, indent=2))
    chart(results, path.with_suffix(".png"))
