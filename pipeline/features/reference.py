"""The brute-force definition of a window feature: a plain loop over every source row.

Times are integer microseconds since the epoch, as in the kernel, so "t - W <= a < t" is exact.

Slow and obviously right; the fast kernel (`windows.py`) must agree with it value for value, and the
time-travel audit recomputes sampled rows with it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from pipeline.features.windows import WindowSpec


def reference_windows(sources: pa.Table, queries: pa.Table, specs: Sequence[WindowSpec], *,
                      event_time: str, row_key: str) -> dict[str, list[Any]]:
    """Every feature of every query row, computed row by row (for tests and audits only)."""
    rows = as_rows(sources)
    return {spec.name: [reference_value(rows, query, spec, event_time=event_time,
                                        row_key=row_key) for query in as_rows(queries)]
            for spec in specs}


def as_rows(table: pa.Table) -> list[dict]:
    """Rows as dicts, every timestamp as integer microseconds since the epoch."""
    columns = [column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64())
               if pa.types.is_timestamp(column.type) else column for column in table.columns]
    return pa.table(columns, names=table.column_names).to_pylist()


def reference_value(rows: list[dict], query: dict, spec: WindowSpec, *, event_time: str,
                    row_key: str) -> Any:
    """One feature of one query row: its entity's rows available in [t - W, t), missing skipped."""
    t, entity = query[event_time], [query[name] for name in spec.entity]
    start = t - spec.window_us
    window = [row for row in rows
              if None not in entity and [row[name] for name in spec.entity] == entity
              and row[spec.available_at] is not None
              and start <= row[spec.available_at] < t
              and (spec.column is None or _present(row[spec.column]))]
    if spec.agg == "count":
        return len(window)
    if not window:
        return None
    values = [float(row[spec.column]) for row in window] if spec.column else []
    latest = max(window, key=lambda row: (row[spec.available_at], row[row_key]))
    if spec.agg == "std":
        return statistics.stdev(values) if len(values) > 1 else None
    if spec.agg == "last":
        return float(latest[spec.column])
    if spec.agg == "time_since_last":
        return (t - latest[spec.available_at]) / 1e6
    return {"sum": math.fsum, "mean": statistics.fmean, "min": min, "max": max}[spec.agg](values)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
