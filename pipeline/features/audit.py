"""The time-travel audit: recompute sampled rows' features from only what existed at their time.

Two checks per sampled output row with event time t, each comparing with the stage's value:

- time travel: the audit takes the clean rows of its entities with an event time before t (later
  rows did not exist yet), blanks every label-time column wherever that row's label was not yet
  available at t (`_History.known_at`), and recomputes each feature with the brute-force reference.
  It shares nothing with the chunk/halo path and trusts no feature's declared available-at: a
  feature that reads a label-time column as if it were known at the event, or a lookback that is too
  short, shows up as a difference.
- perturbation (on one in PERTURBED_EVERY sampled rows): the row's own label-time values are set to null, every source row not yet available
  at t is dropped (event time at or after t: the row itself included) or blanked (label-time values
  whose label came at or after t), and the features are recomputed with the stage's own kernel. A
  feature must not change. This catches what no schema rule names and what a recomputation with the
  same definition cannot: grouping by the row's own future label, a window that includes the row,
  a label column mislabelled as known at the event.

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

from pipeline.epoch import to_us
from pipeline.features.reference import as_rows, reference_value
from pipeline.features.windows import WindowResult, WindowSpec, entity_codes, micros
from pipeline.schema import Roles

REL_TOL = 1e-9  # float features agree to this; counts and "no value" must match exactly
ABS_TOL = 1e-9
TIME_TRAVEL, PERTURBATION = "time travel", "perturbation"
PERTURBED_EVERY = 4  # the perturbation check runs on this share (1 in N) of the audit's sample
QUERY = "_audit_query"  # the perturbation check's extra entity column: each sample sees its own rows

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


def audit_batch(clean: pads.Dataset, partition: str, sample: pa.Table,
                specs: Sequence[WindowSpec], roles: Roles, label_time: set[str],
                max_label_delay: timedelta, kernel: Kernel) -> BatchAudit:
    """Both checks on the sampled rows: their differences and the values each compared.

    `sample` holds the stage's output rows: row key, event time and one column per feature.
    `label_time` names the columns known only once the label is; `kernel` is the stage's.
    """
    label_time = {*label_time, roles.label, roles.label_available_at}
    rows = _clean_rows(clean, partition, sample, specs, roles.row_key, roles.event_time)
    stage = {row[roles.row_key]: row for row in sample.to_pylist()}
    past = _past_rows(clean, partition, rows, specs, roles, max_label_delay)
    travelled, compared = _time_travel(past, rows, stage, specs, roles, label_time)
    # every PERTURBED_EVERY-th sample: a planted dependence on the future changes nearly every
    # row, and a full-sample perturbation cost ~11% of featurize throughput at 2M rows
    perturbed, changed = _perturbation(past, rows.take(np.arange(0, rows.num_rows,
                                                                 PERTURBED_EVERY)),
                                       stage, specs, roles, label_time, kernel)
    return BatchAudit(travelled + perturbed, compared, changed)


def _time_travel(past: pa.Table, rows: pa.Table, stage: dict[Any, dict],
                 specs: Sequence[WindowSpec], roles: Roles,
                 label_time: set[str]) -> tuple[list[Mismatch], int]:
    """Each feature recomputed by the reference loop from what existed at the row's time."""
    mismatches, compared = [], 0
    for entity in dict.fromkeys(spec.entity for spec in specs):
        group = [spec for spec in specs if spec.entity == entity]
        histories = _by_entity(past, entity, set(_keys(rows, entity)), roles, label_time)
        for row, key in zip(rows.to_pylist(), _keys(rows, entity)):
            history = histories.get(key)
            query = {**row, roles.event_time: to_us(row[roles.event_time])}
            for spec in group:
                known = history.known_at(query[roles.event_time], spec) if history else []
                audit_value = reference_value(known, query, spec, event_time=roles.event_time,
                                              row_key=roles.row_key)
                mismatches += _differences(spec, row, stage, audit_value, roles, TIME_TRAVEL)
                compared += 1
    return mismatches, compared


def _perturbation(past: pa.Table, rows: pa.Table, stage: dict[Any, dict],
                  specs: Sequence[WindowSpec], roles: Roles, label_time: set[str],
                  kernel: Kernel) -> tuple[list[Mismatch], int]:
    """Each feature recomputed by the stage's kernel with the row's own label-time values nulled
    and only the source rows available before its time; one kernel call per entity.

    Every sample gets its own copy of the rows it may see, told apart by the extra entity column
    QUERY, so that one call serves all samples although each sees a different past.
    """
    queries = _nulled(rows, label_time).append_column(
        QUERY, pa.array(np.arange(rows.num_rows), pa.int64()))
    mismatches, compared = [], 0
    for entity in dict.fromkeys(spec.entity for spec in specs):
        group = [spec for spec in specs if spec.entity == entity]
        sources = _available_before(past, rows, group, roles, label_time)
        result = kernel(sources, queries,
                        [dataclasses.replace(spec, entity=(*entity, QUERY)) for spec in group],
                        event_time=roles.event_time, row_key=roles.row_key)
        for spec in group:
            values = result.columns[spec.name].to_pylist()
            for row, value in zip(rows.to_pylist(), values):
                mismatches += _differences(spec, row, stage, value, roles, PERTURBATION)
            compared += len(values)
    return mismatches, compared


def _differences(spec: WindowSpec, row: dict, stage: dict[Any, dict], audit_value: Any,
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


def _available_before(past: pa.Table, rows: pa.Table, group: Sequence[WindowSpec], roles: Roles,
                      label_time: set[str]) -> pa.Table:
    """Per sampled row (tagged QUERY), its entity's past rows that could fall in one of the
    group's windows, with an event time before the row's; label-time values not yet known blanked.

    The rows are those of the sampled row's own entity value: after nulling, a label-time entity
    matches nothing, so a feature that groups by one changes.
    """
    entity = group[0].entity
    codes, query_codes, _ = entity_codes(past, rows, entity)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], query_codes, "left")
    ends = np.searchsorted(codes[order], query_codes, "right")
    event = micros(past[roles.event_time])[order]
    available = {spec.available_at: micros(past[spec.available_at])[order] for spec in group}
    t = micros(rows[roles.event_time])
    picks, owners = [], []
    for query in np.flatnonzero(query_codes >= 0):
        lo, hi, at = starts[query], ends[query], t[query]
        seen = np.zeros(hi - lo, bool)
        for spec in group:
            times = available[spec.available_at][lo:hi]
            seen |= (times >= at - spec.window_us) & (times < at)
        keep = lo + np.flatnonzero(seen & (event[lo:hi] < at))
        picks.append(order[keep])
        owners.append(np.full(len(keep), query, np.int64))
    picked = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    sources = past.take(pa.array(picked, pa.int64())).append_column(QUERY, pa.array(owner))
    return blank_unknown(sources, t[owner], roles, label_time)


def blank_unknown(rows: pa.Table, t: np.ndarray, roles: Roles, label_time: set[str]) -> pa.Table:
    """Label-time values blanked in each row whose label was not available before its own t
    (a null label-available time: never)."""
    unknown = pa.array(micros(rows[roles.label_available_at]) >= t)
    for index, name in enumerate(rows.column_names):
        if name in label_time:
            column = rows[name]
            rows = rows.set_column(index, name, pc.if_else(unknown, pa.scalar(None, column.type),
                                                           column))
    return rows


def _clean_rows(clean: pads.Dataset, partition: str, sample: pa.Table,
                specs: Sequence[WindowSpec], row_key: str, event_time: str) -> pa.Table:
    """The sampled rows as validate left them: their own event time and entity values."""
    days = pc.unique(pc.strftime(sample[event_time], format="%Y-%m-%d"))
    columns = list(dict.fromkeys([row_key, event_time, *(c for s in specs for c in s.entity)]))
    found = clean.to_table(columns=columns, filter=pads.field(partition).isin(days)
                           & pads.field(row_key).isin(sample[row_key]))
    missing = set(sample[row_key].to_pylist()) - set(found[row_key].to_pylist())
    if missing:
        raise AuditFailed(f"output rows {sorted(missing)[:10]} are not among the clean rows")
    return found


def _past_rows(clean: pads.Dataset, partition: str, rows: pa.Table, specs: Sequence[WindowSpec],
               roles: Roles, max_label_delay: timedelta) -> pa.Table:
    """Clean rows of the sampled rows' entities that might feed their windows, in one scan.

    For an entity's features that is event time in [min(t) - reach, max(t)), where reach is their
    longest window plus validate's max_label_delay (no label arrives later after its event).
    """
    times = rows[roles.event_time]
    end, where, first = pc.max(times).as_py(), None, None
    for entity in dict.fromkeys(spec.entity for spec in specs):
        reach = max(s.window for s in specs if s.entity == entity)
        start = pc.min(times).as_py() - reach - max_label_delay
        first = start if first is None else min(first, start)
        match = pads.field(roles.event_time) >= start
        for name in entity:
            match &= pads.field(name).isin(pc.drop_null(rows[name]))
        where = match if where is None else where | match
    where &= ((pads.field(partition) >= first.date().isoformat())
              & (pads.field(partition) <= end.date().isoformat())
              & (pads.field(roles.event_time) < end))
    columns = [roles.row_key, roles.event_time, roles.label_available_at,
               *(c for s in specs for c in (*s.entity, s.available_at)),
               *(s.column for s in specs if s.column)]
    # one chunk: taking each entity's rows from a many-chunk table is several times slower
    return clean.to_table(columns=list(dict.fromkeys(columns)), filter=where).combine_chunks()


def _keys(rows: pa.Table, entity: tuple[str, ...]) -> list[tuple]:
    return list(zip(*(rows[name].to_pylist() for name in entity)))


@dataclass
class _History:
    """The clean rows of one entity value, with their times in microseconds for quick masks."""

    rows: pa.Table
    roles: Roles
    label_time: set[str]

    def __post_init__(self) -> None:
        roles = self.roles
        self.micros = {name: micros(self.rows[name])
                       for name in (roles.event_time, roles.label_available_at)}

    def known_at(self, t: int, spec: WindowSpec) -> list[dict]:
        """What existed at time t and may fall in the window, label-time values not yet known
        blanked: rows whose event time is before t and that were available since t - W (the
        narrowing only spares the reference loop rows it would skip anyway)."""
        roles = self.roles
        near = ((self.micros[roles.event_time] < t)
                & (self.micros[spec.available_at] >= t - spec.window_us))
        columns = dict.fromkeys([roles.row_key, *spec.entity, spec.available_at,
                                 *([spec.column] if spec.column else []),
                                 roles.label_available_at])
        rows = self.rows.select(list(columns)).take(pa.array(np.flatnonzero(near), pa.int64()))
        return as_rows(blank_unknown(rows, np.full(rows.num_rows, t, np.int64), roles,
                                      self.label_time))


def _by_entity(past: pa.Table, entity: tuple[str, ...], wanted: set[tuple], roles: Roles,
               label_time: set[str]) -> dict[tuple, _History]:
    """The past rows of each wanted entity value (a null value matches nothing: left out)."""
    numbered = past.append_column("_row", pa.array(np.arange(past.num_rows), pa.int64()))
    groups = numbered.group_by(list(entity)).aggregate([("_row", "list")])
    return {key: _History(past.take(rows.values), roles, label_time)
            for key, rows in zip(_keys(groups, entity), groups["_row_list"])
            if key in wanted and None not in key}
