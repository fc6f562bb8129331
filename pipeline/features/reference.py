"""The brute-force definition of a window feature: every source row tested against every query row.

Times are integer microseconds since the epoch, as in the kernel, so "t - W <= a < t" is exact.
A query's window is a mask over all source rows, column by column (no sorting, no prefix sums, no
search: nothing of the kernel's), and its values are aggregated exactly with `math.fsum` and
`statistics`. O(sources) for every query and feature: slow, and obviously right. The fast kernel
(`windows.py`) must agree with it value for value, and the time-travel audit recomputes sampled
rows with it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.user_code import Window, call, is_user_aggregation
from pipeline.features.windows import WindowSpec


@dataclass(frozen=True)
class Columns:
    """Rows column by column: timestamps as int64 microseconds since the epoch, other numbers as
    int64 or float64, anything else as Python objects; `missing` marks each column's nulls (and
    NaN)."""

    values: dict[str, np.ndarray]
    missing: dict[str, np.ndarray]

    def rows(self, start: int, stop: int) -> Columns:
        """Rows [start, stop), without copying."""
        return Columns({name: v[start:stop] for name, v in self.values.items()},
                       {name: m[start:stop] for name, m in self.missing.items()})

    def row(self, index: int) -> dict[str, Any]:
        """One row as a dict, None where a value is missing."""
        return {name: None if self.missing[name][index] else values[index]
                for name, values in self.values.items()}


def reference_windows(sources: pa.Table, queries: pa.Table, specs: Sequence[WindowSpec], *,
                      event_time: str, row_key: str,
                      aggregations: Mapping[str, Callable] | None = None) -> dict[str, list[Any]]:
    """Every feature of every query row, computed row by row (for tests and audits only)."""
    columns, queried = as_columns(sources), as_columns(queries)
    rows = [queried.row(index) for index in range(queries.num_rows)]
    return {spec.name: [reference_value(columns, query, spec, event_time=event_time,
                                        row_key=row_key, aggregations=aggregations)
                        for query in rows]
            for spec in specs}


def as_columns(table: pa.Table) -> Columns:
    """`table` as numpy columns (see `Columns`)."""
    values, missing = {}, {}
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64())
        absent = column.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_integer(column.type):
            values[name] = pc.fill_null(column, 0).to_numpy().astype(np.int64)
        elif pa.types.is_floating(column.type):
            values[name] = pc.fill_null(column, math.nan).to_numpy().astype(np.float64)
            absent = absent | np.isnan(values[name])
        else:  # the extra None keeps numpy from making rows of sequence values a 2-D array
            values[name] = np.array([*column.to_pylist(), None], dtype=object)[:-1]
        missing[name] = absent
    return Columns(values, missing)


def reference_value(rows: Columns, query: dict, spec: WindowSpec, *, event_time: str,
                    row_key: str, aggregations: Mapping[str, Callable] | None = None) -> Any:
    """One feature of one query row: its entity's rows available in [t - W, t), missing skipped.

    `query` maps column names to the query row's values, its event time in microseconds. A user
    aggregation is handed exactly that window, missing values as NaN, and nothing else."""
    t = int(query[event_time])
    if any(_is_missing(query[name]) for name in spec.entity):
        return 0 if spec.agg == "count" else None
    available = rows.values[spec.available_at]
    inside = ~rows.missing[spec.available_at] & (t - spec.window_us <= available) & (available < t)
    for name in spec.entity:
        inside &= ~rows.missing[name] & (rows.values[name] == query[name])
    if is_user_aggregation(spec.agg):
        return _user_value(rows, np.flatnonzero(inside), spec, t, row_key,
                           (aggregations or {})[spec.agg])
    if spec.column is not None:
        inside &= ~rows.missing[spec.column]
    window = np.flatnonzero(inside)
    if spec.agg == "count":
        return len(window)
    if not len(window):
        return None
    if spec.agg in ("last", "time_since_last"):
        keys = rows.values[row_key]
        latest = max(window, key=lambda i: (available[i], keys[i]))
        if spec.agg == "last":
            return float(rows.values[spec.column][latest])
        return (t - int(available[latest])) / 1e6
    values = rows.values[spec.column][window].astype(np.float64).tolist()
    if spec.agg == "std":
        return statistics.stdev(values) if len(values) > 1 else None
    return {"sum": math.fsum, "mean": statistics.fmean, "min": min, "max": max}[spec.agg](values)


def _user_value(rows: Columns, window: np.ndarray, spec: WindowSpec, t: int, row_key: str,
                function: Callable) -> float | None:
    """A user aggregation of one window, in (available-at, row key) order, as the kernel hands
    it."""
    available = rows.values[spec.available_at]
    window = np.array(sorted(window, key=lambda i: (available[i], rows.values[row_key][i])),
                      dtype=np.int64)
    values = np.where(rows.missing[spec.column][window], np.nan,
                      rows.values[spec.column][window]).astype(np.float64)
    handed = Window(values=values, available_at=available[window].astype(np.int64),
                    start=np.zeros(1, np.int64), end=np.array([len(window)]),
                    event_time=np.array([t], np.int64))
    return call(f"window aggregation {spec.agg} of feature {spec.name}", function, handed,
                1)[0].as_py()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
