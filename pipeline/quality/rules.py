"""The validate stage's rules, as pure functions of an Arrow table and the table's schema.

Each bad row gets exactly one reason code (the first rule it breaks, in RULES order) and a detail a
person can act on; rows are never dropped, only routed to the quarantine with their reason.

With `dataset.unlabeled: history`, a row whose label and label-available time are both null (an
event that never got a label) breaks no rule for those two columns: it is kept, as history
(`unlabeled`), and every other rule applies to it as to any row.

NaN and ±inf in a float column are one rule, ``not_finite``, checked right after nulls: NaN is not
null and compares false with every bound, and inf passes a column without min/max, so without this
rule both would reach featurize. It applies to every float column, required or not (a missing value
is null, never NaN), and the detail names the value.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import ColumnSpec
from pipeline.core.schema import TableSchema
from pipeline.core.timestamps import column_us, to_us

CANONICAL_TIME = pa.timestamp("us", tz="UTC")
_ARROW_TYPES = {
    "int8": pa.int8(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
    "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_(), "timestamp": CANONICAL_TIME,
}
RULES = ("null_required", "not_finite", "duplicate_row_key", "out_of_range", "label_before_event",
         "label_delay_exceeds_max", "event_time_outside_range")


class SchemaError(ValueError):
    """A column whose values cannot be read as the declared type; names the file and column."""


def time_columns(dataset: TableSchema) -> tuple[str, str]:
    return dataset.event_time, dataset.label_available_at


def conform(table: pa.Table, dataset: TableSchema, where: str) -> pa.Table:
    """Cast every schema column to its declared type; time columns to timestamp[us, UTC]."""
    columns = {}
    for name, spec in dataset.columns.items():
        if name not in table.column_names:
            raise SchemaError(f"{where}: column {name!r} is missing")
        columns[name] = _cast(table[name], name, spec, dataset, where)
    return pa.table(columns)


def _cast(column: pa.ChunkedArray, name: str, spec: ColumnSpec, dataset: TableSchema,
          where: str) -> pa.ChunkedArray:
    if name in time_columns(dataset) and pa.types.is_integer(column.type):
        column = pc.cast(column, pa.int64()).cast(pa.timestamp(dataset.time_unit, tz="UTC"))
    target = CANONICAL_TIME if name in time_columns(dataset) else _ARROW_TYPES[spec.type]
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(column.type) and column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    try:
        return pc.cast(column, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"{where}: column {name!r} is {column.type}, which cannot be read as "
                          f"declared type {spec.type}: {exc}") from None


def unlabeled(table: pa.Table, dataset: TableSchema) -> np.ndarray:
    """Rows kept as history: label and label-available time both null, where the config keeps
    such rows (all False when it quarantines them)."""
    if dataset.unlabeled != "history":
        return np.zeros(table.num_rows, bool)
    return (np.asarray(table[dataset.label].is_null())
            & np.asarray(table[dataset.label_available_at].is_null()))


def row_reasons(table: pa.Table, dataset: TableSchema, max_label_delay: timedelta,
                duplicate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the reason code (None = clean) and a human-readable detail."""
    n = table.num_rows
    history = unlabeled(table, dataset)
    kept_unlabeled = {dataset.label: history, dataset.label_available_at: history}
    reasons = np.full(n, None, dtype=object)
    details = np.full(n, None, dtype=object)
    # rows with a reason so far (cheaper than casting the object array `reasons` to bool per rule)
    flagged = np.zeros(n, bool)

    def flag(mask: np.ndarray, reason: str, detail) -> None:
        fresh = mask & ~flagged  # rows without a reason yet
        if fresh.any():
            flagged[fresh] = True
            reasons[fresh] = reason
            details[fresh] = detail(fresh) if callable(detail) else detail

    for name, spec in dataset.columns.items():
        if spec.required:
            exempt = kept_unlabeled.get(name, np.zeros(n, bool))
            flag(np.asarray(table[name].is_null()) & ~exempt, "null_required", f"{name} is null")
    for name, spec in dataset.columns.items():
        if spec.type in ("float32", "float64"):
            values = table[name].to_numpy(zero_copy_only=False).astype("float64")
            flag(_not_finite(table[name]), "not_finite",
                 lambda m, name=name, values=values: np.array(
                     [f"{name}={v} is not a finite number" for v in values[m]], dtype=object))
    flag(duplicate, "duplicate_row_key", f"{dataset.row_key} seen earlier in the snapshot")
    for name, spec in dataset.columns.items():
        if spec.min is None and spec.max is None:
            continue
        values = table[name].to_numpy(zero_copy_only=False).astype("float64")
        low = values < spec.min if spec.min is not None else np.zeros(n, bool)
        high = values > spec.max if spec.max is not None else np.zeros(n, bool)
        flag(low | high, "out_of_range",
             lambda m, name=name, spec=spec, values=values: np.array(
                 [f"{name}={v:g} outside [{spec.min}, {spec.max}]" for v in values[m]], dtype=object))
    event = column_us(table[dataset.event_time], missing=0)  # null rows are already flagged
    label = column_us(table[dataset.label_available_at], missing=0)
    flag((label < event) & ~history, "label_before_event",
         f"{dataset.label_available_at} is before {dataset.event_time}")
    flag((label - event > to_us(max_label_delay)) & ~history, "label_delay_exceeds_max",
         f"label arrived more than {max_label_delay} after the event")
    start, end = to_us(dataset.start), to_us(dataset.end)
    flag((event < start) | (event >= end), "event_time_outside_range",
         f"{dataset.event_time} outside [{dataset.start.isoformat()}, {dataset.end.isoformat()})")
    return reasons, details


def _not_finite(column: pa.ChunkedArray) -> np.ndarray:
    """True where a float value is NaN or ±inf; nulls are False (the null rule owns them)."""
    return np.asarray(pc.fill_null(pc.or_(pc.is_nan(column), pc.is_inf(column)), False))


def column_statistics(table: pa.Table) -> dict[str, dict]:
    """Mergeable per-column partials: rows, nulls, sum, min, max (numeric and time columns)."""
    stats = {}
    for name in table.column_names:
        column = table[name]
        entry = {"rows": len(column), "nulls": column.null_count}
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_timestamp(kind):
            numeric = column.cast(pa.int64()) if pa.types.is_timestamp(kind) else column
            minmax = pc.min_max(numeric)
            entry.update(min=minmax["min"].as_py(), max=minmax["max"].as_py(),
                         sum=pc.sum(numeric.cast(pa.float64())).as_py())
            if pa.types.is_timestamp(kind):
                entry["time"] = True
        stats[name] = entry
    return stats


def merge_statistics(partials: list[dict[str, dict]]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for partial in partials:
        for name, entry in partial.items():
            into = merged.setdefault(name, {"rows": 0, "nulls": 0})
            into["rows"] += entry["rows"]
            into["nulls"] += entry["nulls"]
            for key, pick in (("min", min), ("max", max)):
                if entry.get(key) is not None:
                    into[key] = entry[key] if into.get(key) is None else pick(into[key], entry[key])
            if entry.get("sum") is not None:
                into["sum"] = into.get("sum", 0.0) + entry["sum"]
            into["time"] = entry.get("time", False)
    for entry in merged.values():
        present = entry["rows"] - entry["nulls"]
        entry["null_share"] = entry["nulls"] / entry["rows"] if entry["rows"] else 0.0
        if "sum" in entry:
            entry["mean"] = entry.pop("sum") / present if present else None
        if entry.pop("time", False):
            for key in ("min", "max", "mean"):
                if entry.get(key) is not None:
                    entry[key] = str(np.datetime64(int(entry[key]), "us")) + "Z"
    return merged
