"""What a sampled row could have seen at its event time t: the clean rows of its entity from
before t, within one of its windows, with every label-time value blanked wherever that row's
label was not yet available at t. The time-travel audit recomputes features from this history
alone; `pipeline predict` blanks unknown values the same way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.core.schema import Roles
from pipeline.features.partitions import DayPartitions
from pipeline.features.windows import WindowSpec, micros

QUERY = "_audit_query"  # the perturbation check's extra entity column: each sample sees its own rows


def available_before(past: pa.Table, rows: pa.Table, group: Sequence[WindowSpec], roles: Roles,
                      label_time: set[str]) -> pa.Table:
    """What each sampled row could have seen: the past rows of its entity value with an event
    time before its own and available within one of the group's windows, label-time values not
    yet known at its time blanked. Tagged with the row's position (QUERY), grouped by it.

    The rows are those of the sampled row's own entity value: after nulling, a label-time entity
    matches nothing, so a feature that groups by one changes. A null entity value sees nothing.
    """
    source_code, query_code = _entity_groups(past, rows, group[0].entity)
    t = micros(rows[roles.event_time])
    owners, picks = [], []
    for available_at in dict.fromkeys(spec.available_at for spec in group):
        reach = max(spec.window_us for spec in group if spec.available_at == available_at)
        owner, source = _in_window(source_code, micros(past[available_at]), query_code,
                                   t - reach, t)
        owners.append(owner)
        picks.append(source)
    owner, source = np.concatenate(owners), np.concatenate(picks)
    before = micros(past[roles.event_time])[source] < t[owner]
    # a row in the windows of two available-at columns is seen once; sorted by owner
    pairs = _distinct(owner[before] * max(past.num_rows, 1) + source[before])
    owner, source = pairs // max(past.num_rows, 1), pairs % max(past.num_rows, 1)
    seen = past.take(pa.array(source, pa.int64())).append_column(QUERY, pa.array(owner))
    return blank_unknown(seen, t[owner], roles, label_time)


def _entity_groups(past: pa.Table, rows: pa.Table,
                   entity: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the entity values of past rows and of sampled rows, equal where the values are
    (-1: a null among them). Arrow's hash grouping: no code shared with the stage's kernel."""
    both = pa.concat_tables([past.select(list(entity)), rows.select(list(entity))])
    numbered = both.append_column("_row", pa.array(np.arange(both.num_rows), pa.int64()))
    # single-threaded: in a Ray worker Arrow's threaded hash aggregation failed with
    # "thread index 10 is out of range [0, 10)"
    groups = numbered.group_by(list(entity), use_threads=False).aggregate([("_row", "list")])
    members = groups["_row_list"].combine_chunks()
    codes = np.empty(both.num_rows, np.int64)
    codes[members.values.to_numpy()] = np.repeat(np.arange(groups.num_rows),
                                                 np.diff(members.offsets.to_numpy()))
    has_null = np.zeros(groups.num_rows, bool)
    for name in entity:
        has_null |= groups[name].is_null().to_numpy(zero_copy_only=False)
    codes[has_null[codes]] = -1
    return codes[:past.num_rows], codes[past.num_rows:]


def _in_window(source_code: np.ndarray, available: np.ndarray, query_code: np.ndarray,
               start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, source) pairs where the source has the query's code and start <= available < end.

    The candidates (a queried code, a time within some query's bounds) are keyed by
    code * span + time, where time counts microseconds from the earliest start or, where that
    would overflow, ranks among the candidates' distinct times. Those inside some query's
    [start, end) of their code are sorted by key, so one binary search finds each query's slice.
    """
    queried = np.zeros(max(source_code.max(initial=0), query_code.max(initial=0)) + 2, bool)
    queried[query_code[query_code >= 0]] = True  # code -1 (a null) indexes the last: never set
    first, last = start.min(initial=0), end.max(initial=0)
    candidates = np.flatnonzero(queried[source_code] & (available >= first)
                                & (available < last))
    code, available = source_code[candidates], available[candidates]
    span = int(last) - int(first) + 1
    if len(queried) * span < 1 << 62:
        def axis(times: np.ndarray) -> np.ndarray:
            return times - first
    else:
        distinct = _distinct(available)
        span = len(distinct) + 1

        def axis(times: np.ndarray) -> np.ndarray:
            return np.searchsorted(distinct, times)
    key = code * span + axis(available)
    low, high = query_code * span + axis(start), query_code * span + axis(end)
    named = query_code >= 0
    inside = _in_some_interval(key, low[named], high[named])  # few of a dense table's rows
    candidates, key = candidates[inside], key[inside]
    order = np.argsort(key)  # ties in any order: the caller sorts the pairs it keeps
    key = key[order]
    lo, hi = np.searchsorted(key, low), np.searchsorted(key, high)
    hi[~named] = lo[~named]
    lengths = hi - lo
    owner = np.repeat(np.arange(len(query_code)), lengths)
    offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, candidates[order[np.repeat(lo, lengths) + offset]]


def _in_some_interval(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each point lies in at least one of the intervals [starts[i], ends[i])."""
    order = np.argsort(starts)
    starts, reach = starts[order], np.maximum.accumulate(ends[order])
    last = np.searchsorted(starts, points, "right") - 1  # the intervals starting at or before it
    return (last >= 0) & (points < reach[np.maximum(last, 0)]) if len(starts) else \
        np.zeros(len(points), bool)


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (np.unique hashes int64 here: several times slower)."""
    ordered = np.sort(values)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]


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


def past_rows(clean: DayPartitions, rows: pa.Table, specs: Sequence[WindowSpec], roles: Roles,
               max_label_delay: timedelta) -> pa.Table:
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
    where &= pads.field(roles.event_time) < end
    columns = [roles.row_key, roles.event_time, roles.label_available_at,
               *(c for s in specs for c in (*s.entity, s.available_at)),
               *(s.column for s in specs if s.column)]
    # one chunk: taking each entity's rows from a many-chunk table is several times slower
    return clean.between(first.date(), end.date()).to_table(
        columns=list(dict.fromkeys(columns)), filter=where).combine_chunks()
