"""The time-travel audit: recompute sampled rows' features from only what existed at their time.

What a sampled output row with event time t could have seen is selected once per entity
(`available_before`): the clean rows of its entity value with an event time before t (later rows
did not exist yet) and available within one of the windows, every label-time value blanked
wherever that row's label was not yet available at t. Two checks then compare with the stage's
value, on every sampled row:

- time travel: each feature recomputed from that history with the brute-force reference. It shares
  nothing with the chunk/halo path or the kernel and trusts no feature's declared available-at: a
  feature that reads a label-time column as if it were known at the event, or a lookback that is
  too short, shows up as a difference.
- perturbation: the row's own label-time values set to null and the features recomputed from the
  same history with the stage's own kernel. A feature must not change. This catches what no schema
  rule names and what a recomputation with the same definition cannot: grouping by the row's own
  future label, a window that includes the row, a label column mislabelled as known at the event.

The label and label-available-time columns count as label-time columns whatever the schema says.
Reads are bounded: a batch of samples close in time reads only its entities' rows within the
longest window plus validate's max_label_delay (the most a label can lag its event) before them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.core.schema import Roles
from pipeline.core.timestamps import day_strings, to_us
from pipeline.core.user_code import UserCode
from pipeline.features.history import QUERY, available_before, past_rows
from pipeline.features.partitions import DayPartitions
from pipeline.features.reference import as_columns, reference_value
from pipeline.features.row_features import RowFeatureSpec, compute_row_features
from pipeline.features.windows import WindowResult, WindowSpec

REL_TOL = 1e-9  # float features agree to this; counts and "no value" must match exactly
ABS_TOL = 1e-9
TIME_TRAVEL, PERTURBATION, ROW_ALONE = "time travel", "perturbation", "row alone"

Kernel = Callable[..., WindowResult]
"""The window kernel's signature (`compute_windows`): the stage hands the audit the one it used."""


@dataclass(frozen=True)
class Mismatch:
    feature: str
    row_key: Any
    event_time: str
    stage_value: Any
    audit_value: Any
    check: str = TIME_TRAVEL

    def __str__(self) -> str:
        return (f"{self.check}: feature {self.feature}, row {self.row_key} (event time "
                f"{self.event_time}): stage value {self.stage_value!r} != audit value "
                f"{self.audit_value!r}")


@dataclass(frozen=True)
class BatchAudit:
    """One batch's differences and how many values each check compared."""

    mismatches: list[Mismatch]
    time_travel: int
    perturbation: int


class AuditFailed(RuntimeError):
    """The stage's features differ from what the data at each row's time says they should be."""


def agree(stage: Any, audit: Any) -> bool:
    """Same value: both missing, equal counts, or floats within REL_TOL / ABS_TOL (NaN = NaN)."""
    if stage is None or audit is None:
        return stage is None and audit is None
    if isinstance(audit, int):
        return stage == audit
    if math.isnan(stage) or math.isnan(audit):
        return math.isnan(stage) and math.isnan(audit)
    return math.isclose(stage, audit, rel_tol=REL_TOL, abs_tol=ABS_TOL)


@dataclass(frozen=True)
class SampledFile:
    """Positions of sampled rows in one output file."""

    path: str
    rows: tuple[int, ...]


def plan_sample(fs: pafs.FileSystem, data_dir: str, size: int, seed: int, event_time: str,
                span: timedelta, most: int) -> list[list[SampledFile]]:
    """`size` output rows drawn uniformly without replacement (seeded), in batches of files
    that together span less than `span` of event time (or hold at most `most` samples).

    Only parquet metadata is read (row counts and event-time statistics), so the driver's memory
    does not grow with the output.
    """
    files = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(data_dir))
                   if info.path.endswith(".parquet"))
    metadata = [pq.ParquetFile(path, filesystem=fs).metadata for path in files]
    counts = [meta.num_rows for meta in metadata]
    total = sum(counts)
    picks = np.sort(np.random.default_rng(seed).choice(total, min(size, total), replace=False))
    offsets = np.cumsum([0, *counts])
    batches: list[list[SampledFile]] = []
    start, taken = None, 0
    for path, meta, first, last in zip(files, metadata, offsets[:-1], offsets[1:]):
        local = picks[(picks >= first) & (picks < last)] - first
        if not len(local):
            continue
        low, high = _time_range(meta, event_time)
        if not batches or high - start >= span or taken + len(local) > most:
            batches.append([])
            start, taken = low, 0
        batches[-1].append(SampledFile(path, tuple(int(i) for i in local)))
        taken += len(local)
    return batches


def _time_range(meta: pq.FileMetaData, column: str) -> tuple[datetime, datetime]:
    index = meta.schema.to_arrow_schema().get_field_index(column)
    stats = [meta.row_group(i).column(index).statistics for i in range(meta.num_row_groups)]
    return min(s.min for s in stats), max(s.max for s in stats)


def read_sample(fs: pafs.FileSystem, files: Sequence[SampledFile],
                columns: Sequence[str]) -> pa.Table:
    """The sampled rows of these files (one file in memory at a time)."""
    return pa.concat_tables(
        pq.read_table(f.path, columns=list(columns), filesystem=fs).take(list(f.rows))
        for f in files)


@dataclass(frozen=True)
class UserFeatures:
    """The team's own features the audit recomputes: row features (each sampled row alone must
    give the stage's value) and the functions of user window aggregations."""

    row_features: Sequence[RowFeatureSpec] = ()
    code: UserCode | None = None
    aggregations: dict[str, Callable] = dataclasses.field(default_factory=dict)


def audit_batch(clean: DayPartitions, sample: pa.Table,
                specs: Sequence[WindowSpec], roles: Roles, label_time: set[str],
                max_label_delay: timedelta, kernel: Kernel,
                user: UserFeatures = UserFeatures()) -> BatchAudit:
    """Both checks on every sampled row: their differences and the values each compared.

    `sample` holds the stage's output rows: row key, event time and one column per feature.
    `label_time` names the columns known only once the label is; `kernel` is the stage's.
    Row features are recomputed from each sampled row alone (counted with the time travel).
    """
    label_time = {*label_time, roles.label, roles.label_available_at}
    inputs = [c for feature in user.row_features for c in feature.inputs]
    rows = _clean_rows(clean, sample, specs, roles.row_key, roles.event_time, inputs)
    stage = {row[roles.row_key]: row for row in sample.to_pylist()}
    mismatches, travelled = _row_alone(rows, stage, user, roles)
    perturbed = 0
    if not specs:
        return BatchAudit(mismatches, travelled, perturbed)
    past = past_rows(clean, rows, specs, roles, max_label_delay)
    for entity in dict.fromkeys(spec.entity for spec in specs):
        group = [spec for spec in specs if spec.entity == entity]
        seen = available_before(past, rows, group, roles, label_time)
        found, compared = _time_travel(seen, rows, stage, group, roles, user.aggregations)
        mismatches += found
        travelled += compared
        found, compared = _perturbation(seen, rows, stage, group, roles, label_time, kernel,
                                        user.aggregations)
        mismatches += found
        perturbed += compared
    return BatchAudit(mismatches, travelled, perturbed)


def _row_alone(rows: pa.Table, stage: dict[Any, dict], user: UserFeatures,
               roles: Roles) -> tuple[list[Mismatch], int]:
    """Each row feature of each sampled row recomputed from that row alone: a function that
    reads other rows (a statistic of the whole table, future rows included) differs."""
    mismatches = []
    for index in range(rows.num_rows if user.row_features else 0):
        row = rows.slice(index, 1)
        values, own = compute_row_features(row, user.row_features, user.code), row.to_pylist()[0]
        for feature in user.row_features:
            mismatches += _differences(feature, own, stage, values[feature.name][0].as_py(),
                                       roles, ROW_ALONE)
    return mismatches, rows.num_rows * len(user.row_features)


def _time_travel(seen: pa.Table, rows: pa.Table, stage: dict[Any, dict],
                 group: Sequence[WindowSpec], roles: Roles,
                 aggregations: dict[str, Callable]) -> tuple[list[Mismatch], int]:
    """Each feature recomputed by the reference loop from what existed at the row's time."""
    history = as_columns(seen)
    bounds = np.searchsorted(seen[QUERY].to_numpy(), np.arange(rows.num_rows + 1))
    mismatches = []
    for index, row in enumerate(rows.to_pylist()):
        known = history.rows(bounds[index], bounds[index + 1])
        query = {**row, roles.event_time: to_us(row[roles.event_time])}
        for spec in group:
            audit_value = reference_value(known, query, spec, event_time=roles.event_time,
                                          row_key=roles.row_key, aggregations=aggregations)
            mismatches += _differences(spec, row, stage, audit_value, roles, TIME_TRAVEL)
    return mismatches, rows.num_rows * len(group)


def _perturbation(seen: pa.Table, rows: pa.Table, stage: dict[Any, dict],
                  group: Sequence[WindowSpec], roles: Roles, label_time: set[str],
                  kernel: Kernel, aggregations: dict[str, Callable]) -> tuple[list[Mismatch], int]:
    """Each feature recomputed by the stage's kernel with the row's own label-time values nulled,
    from only the source rows available before its time; one kernel call for all samples.

    Every sample has its own copy of the rows it may see, told apart by the extra entity column
    QUERY, so that one call serves all samples although each sees a different past.
    """
    queries = _nulled(rows, label_time).append_column(
        QUERY, pa.array(np.arange(rows.num_rows), pa.int64()))
    result = kernel(seen, queries,
                    [dataclasses.replace(spec, entity=(*spec.entity, QUERY)) for spec in group],
                    event_time=roles.event_time, row_key=roles.row_key, aggregations=aggregations)
    mismatches, samples = [], rows.to_pylist()
    for spec in group:
        for row, value in zip(samples, result.columns[spec.name].to_pylist()):
            mismatches += _differences(spec, row, stage, value, roles, PERTURBATION)
    return mismatches, rows.num_rows * len(group)


def _differences(spec: WindowSpec | RowFeatureSpec, row: dict, stage: dict[Any, dict], audit_value: Any,
                 roles: Roles, check: str) -> list[Mismatch]:
    """[] when the audit's value agrees with the stage's, else the one mismatch."""
    output = stage[row[roles.row_key]][spec.name]
    if agree(output, audit_value):
        return []
    return [Mismatch(spec.name, row[roles.row_key], row[roles.event_time].isoformat(), output,
                     audit_value, check)]


def _nulled(table: pa.Table, columns: set[str]) -> pa.Table:
    """`table` with every one of `columns` it holds set to null."""
    for index, name in enumerate(table.column_names):
        if name in columns:
            table = table.set_column(index, name, pa.nulls(table.num_rows, table[name].type))
    return table


def _clean_rows(clean: DayPartitions, sample: pa.Table, specs: Sequence[WindowSpec],
                row_key: str, event_time: str, inputs: Sequence[str] = ()) -> pa.Table:
    """The sampled rows as validate left them: their own event time, entity values and the row
    features' inputs."""
    days = pc.unique(day_strings(sample[event_time]))
    columns = list(dict.fromkeys([row_key, event_time, *(c for s in specs for c in s.entity),
                                  *inputs]))
    times = pc.min_max(sample[event_time]).as_py()
    found = clean.between(times["min"].date(), times["max"].date()).to_table(
        columns=columns, filter=pads.field(clean.partition).isin(days)
        & pads.field(row_key).isin(sample[row_key]))
    missing = set(sample[row_key].to_pylist()) - set(found[row_key].to_pylist())
    if missing:
        raise AuditFailed(f"output rows {sorted(missing)[:10]} are not among the clean rows")
    return found
