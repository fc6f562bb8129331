"""The rows predict scores and the history their windows read, both held to validate's rules.

Input rows pass validate's rules (`pipeline.quality.rules`) with two differences that scoring needs:
label-time columns may be missing or null (a new event has no label yet), and the time range is the
span of the input's own day partitions, when it has them (validate's is dataset.start..end). A row
that breaks a rule is quarantined with its reason, never dropped.

History rows come from the history source's day partitions and pass the same rules as they did for
featurize; rows that break one are left out, as validate left them out of the clean rows. Known at
a time T means: event time before T, and label-time values only where the label was available before
T (`known_at`), which is also what each row's own window [t - W, t) sees at t.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.core.schema import TableSchema
from pipeline.core.timestamps import from_us
from pipeline.engine.artifacts import arrow_filesystem
from pipeline.features.history import blank_unknown
from pipeline.features.windows import micros
from pipeline.predict.spec import ModelSpec
from pipeline.quality.rules import conform, row_reasons

QUARANTINE_COLUMNS = ("_reason", "_detail", "_source_file")
UNBOUNDED = (datetime(1, 1, 1, tzinfo=timezone.utc), datetime(9999, 12, 31, tzinfo=timezone.utc))


def input_schema(spec: ModelSpec, days: tuple[str, str] | None) -> TableSchema:
    """validate's schema for rows to score: label-time columns optional (unlabeled rows are
    kept), event times within the input's day partitions `days` (first, last), if it has any."""
    optional = spec.label_time_columns
    columns = {name: column.model_copy(update={"required": False}) if name in optional
               else column for name, column in spec.table.columns.items()}
    start, end = UNBOUNDED if days is None else (
        _midnight(days[0]), _midnight(days[1]) + timedelta(days=1))
    return spec.table.model_copy(update={"columns": columns, "unlabeled": "history",
                                         "start": start, "end": end})


def missing_columns(names: list[str], spec: ModelSpec) -> list[str]:
    """Schema columns missing from `names`, other than the optional label-time ones."""
    return [name for name in spec.table.columns
            if name not in names and name not in spec.label_time_columns]


def check_rows(block: pa.Table, duplicate: np.ndarray, schema: TableSchema,
               max_label_delay: timedelta, source: str) -> tuple[pa.Table, pa.Table]:
    """(clean, quarantined) rows of one block of input; quarantined rows carry their reason,
    its detail and the file they came from."""
    for name in schema.columns:
        if name not in block.column_names:  # an optional label-time column: not known yet
            block = block.append_column(name, pa.nulls(block.num_rows))
    files = block[source] if source in block.column_names else pa.nulls(block.num_rows, pa.string())
    where = files[0].as_py() if block.num_rows else "input"
    table = conform(block, schema, where=where)
    reasons, details = row_reasons(table, schema, max_label_delay, duplicate)
    bad = reasons.astype(bool)  # None (clean) is falsy, a reason code is not
    quarantined = table.filter(pa.array(bad))
    for name, values in zip(QUARANTINE_COLUMNS, (reasons[bad], details[bad])):
        quarantined = quarantined.append_column(name, pa.array(values, pa.string()))
    quarantined = quarantined.append_column(QUARANTINE_COLUMNS[2], files.filter(pa.array(bad)))
    return table.filter(pa.array(~bad)), quarantined


@dataclass(frozen=True)
class HistorySource:
    """The hive-partitioned event table the windows read history from."""

    uri: str
    storage_options: dict[str, Any]
    partition: str

    def check(self) -> None:
        fs, root = fsspec.core.url_to_fs(self.uri, **self.storage_options)
        if not fs.isdir(root):
            raise ValueError(f"history source {self.uri} is not a folder of day partitions "
                             "(predict.history_source, default dataset.source)")

    def rows(self, spec: ModelSpec, start_us: int, end_us: int) -> pa.Table:
        """The rows validate would pass with event time in [start_us, end_us)."""
        schema = spec.table.model_copy(update={"start": from_us(start_us),
                                               "end": from_us(end_us)})
        table = conform(self._days(schema.columns, start_us, end_us), schema,
                        where=f"history source {self.uri}")
        keys = table[schema.row_key].to_numpy(zero_copy_only=False)
        duplicate = pd.Series(keys).duplicated(keep="first").to_numpy()
        reasons, _ = row_reasons(table, schema, spec.max_label_delay, duplicate)
        return table.filter(pa.array(~reasons.astype(bool)))

    def keys(self, spec: ModelSpec, start_us: int, end_us: int) -> pa.ChunkedArray:
        """The keys of the rows with event time in [start_us, end_us), valid or not: every key
        of `rows`, read from two columns."""
        table = spec.table
        schema = table.model_copy(update={"columns": {
            name: table.columns[name] for name in (table.row_key, table.event_time)}})
        keyed = conform(self._days(schema.columns, start_us, end_us), schema,
                        where=f"history source {self.uri}")
        return in_time(keyed, table.event_time, start_us, end_us)[table.row_key]

    def _days(self, columns: Iterable[str], start_us: int, end_us: int) -> pa.Table:
        """`columns` of the day partitions that hold [start_us, end_us)."""
        fs, root = fsspec.core.url_to_fs(self.uri, **self.storage_options)
        dataset = pads.dataset(root, format="parquet", filesystem=arrow_filesystem(fs),
                               partitioning=pads.partitioning(
                                   pa.schema([(self.partition, pa.string())]), flavor="hive"))
        first, last = from_us(start_us).date(), from_us(end_us - 1).date()
        day = pads.field(self.partition)
        return dataset.to_table(columns=list(columns),
                                filter=(day >= first.isoformat()) & (day <= last.isoformat()))


def known_at(rows: pa.Table, as_of_us: int, spec: ModelSpec) -> pa.Table:
    """What the rows said at `as_of_us`: rows that existed (event time before it), with
    label-time values blanked where the label was not yet available."""
    roles = spec.features.roles
    rows = rows.filter(pa.array(micros(rows[roles.event_time]) < as_of_us))
    return blank_unknown(rows, np.full(rows.num_rows, as_of_us, np.int64), roles,
                         spec.label_time_columns)


def in_time(rows: pa.Table, event_time: str, start_us: int, end_us: int) -> pa.Table:
    t = micros(rows[event_time])
    return rows.filter(pa.array((t >= start_us) & (t < end_us)))


def without_keys(rows: pa.Table, row_key: str, keys: pa.Array) -> pa.Table:
    """Rows whose key is not among `keys` (an input row stands for its event, not history)."""
    return rows.filter(pc.invert(pc.is_in(rows[row_key], value_set=keys)))


def _midnight(day: str) -> datetime:
    try:
        parsed = date.fromisoformat(day)
    except ValueError:
        raise ValueError(f"input partition value {day!r} is not a day (YYYY-MM-DD)") from None
    return datetime(parsed.year, parsed.month, parsed.day, tzinfo=timezone.utc)

