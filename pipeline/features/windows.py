"""The point-in-time window kernel: every window feature of many rows at once, in vectorised numpy.

A feature of a query row (entity e, event time t) aggregates the source rows of entity e whose
available-at time a lies in [t - W, t). Sources are sorted once per (available-at column, entity) by
(entity, a, row key); a query's window is then the contiguous slice [lo, hi) of that order, found by
two binary searches. Every aggregation reads the slice in O(1) or O(log n): prefix sums (count,
sum, mean), a "last valid position" index (last, time since last) and a segment tree (min, max,
std; merging (n, mean, M2) states keeps std exact where prefix sums of squares would cancel).
No Python runs per row.

Missing values (null, or NaN) in a source column are skipped by every aggregation and counted.
A row with a null entity value belongs to no entity: it feeds no window and its own window is empty.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.timestamps import column_us, to_us
from pipeline.core.user_code import Window, call, is_user_aggregation
from pipeline.features.segment_tree import merge_max, merge_min, merge_moments, range_reduce

if TYPE_CHECKING:
    from pipeline.core.config import PipelineConfig

NUMERIC_AGGREGATIONS = {"sum", "mean", "min", "max", "std", "last"}
NEVER = np.iinfo(np.int64).max  # available-at of a row whose available-at is unknown
KEY_LIMIT = 2**62  # entity * time-span keys must stay below this to fit int64
US = 1_000_000


@dataclass(frozen=True)
class WindowSpec:
    """One window feature with everything resolved: the kernel needs no config."""

    name: str
    entity: tuple[str, ...]
    column: str | None
    agg: str
    window_us: int
    available_at: str

    @property
    def window(self) -> timedelta:
        return timedelta(microseconds=self.window_us)


def window_specs(config: PipelineConfig) -> list[WindowSpec]:
    """The configured window features, each with its available-at column taken from the schema."""
    specs = []
    for feature in config.features.windows:
        kind = config.dataset.columns[feature.column].type if feature.column else None
        numeric = feature.agg in NUMERIC_AGGREGATIONS or is_user_aggregation(feature.agg)
        if numeric and kind in ("string", "timestamp"):
            raise ValueError(f"feature {feature.feature_name}: {feature.agg} needs a numeric "
                             f"column, {feature.column!r} is {kind}")
        specs.append(WindowSpec(
            name=feature.feature_name,
            entity=tuple(feature.entity),
            column=feature.column,
            agg=feature.agg,
            window_us=to_us(feature.window),
            available_at=config.available_at(feature),
        ))
    return specs


@dataclass
class WindowResult:
    columns: dict[str, pa.Array]
    """One array per feature, aligned with the query rows: int64 for count, float64 otherwise."""
    nulls_skipped: dict[str, int]
    """Per feature with a source column: missing source values that fell inside a window."""


def compute_windows(sources: pa.Table, queries: pa.Table, specs: Sequence[WindowSpec], *,
                    event_time: str, row_key: str,
                    aggregations: Mapping[str, Callable] | None = None) -> WindowResult:
    """Every feature in `specs` for every row of `queries`, aggregated over `sources`;
    `aggregations` holds the functions of user aggregations (`module:function`)."""
    t = micros(queries[event_time])
    codes: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, int]] = {}
    orders: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    columns, skipped = {}, {}
    for (available_at, entity), group in _groups(specs).items():
        if entity not in codes:
            codes[entity] = entity_codes(sources, queries, entity)
        if available_at not in orders:
            by_key = any(s.agg == "last" or is_user_aggregation(s.agg)
                         for s in specs if s.available_at == available_at)
            orders[available_at] = _time_order(sources, available_at, row_key, by_key)
        reach = max(spec.window_us for spec in group)
        window = _SortedSources(*orders[available_at], *codes[entity], t, reach)
        starts: dict[int, np.ndarray] = {}
        values: dict[str | None, _Values] = {}
        for spec in group:
            if spec.window_us not in starts:
                starts[spec.window_us] = window.lower_bounds(t - spec.window_us)
            if spec.column not in values:
                values[spec.column] = _Values.take(sources, spec.column, window.index)
            if is_user_aggregation(spec.agg):
                columns[spec.name], missing = _user_aggregate(
                    spec, (aggregations or {})[spec.agg], values[spec.column], window,
                    starts[spec.window_us], t)
            else:
                columns[spec.name], missing = _aggregate(spec, values[spec.column], window,
                                                         starts[spec.window_us], window.hi, t)
            if spec.column:
                skipped[spec.name] = missing
    return WindowResult({spec.name: columns[spec.name] for spec in specs}, skipped)


def micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Times as int64 microseconds since the epoch; a null time becomes NEVER."""
    return column_us(column, missing=NEVER)


def entity_codes(sources: pa.Table, queries: pa.Table,
                 entity: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense int64 codes of the entity values, shared by sources and queries (-1: a null value)."""
    codes, null = None, None
    for name in entity:
        both = pa.chunked_array(sources[name].chunks + queries[name].chunks,
                                type=sources.schema.field(name).type).combine_chunks()
        encoded = pc.dictionary_encode(both)
        part = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64)
        null = part < 0 if null is None else null | (part < 0)
        codes = part if codes is None else _dense(codes * len(encoded.dictionary) + part)
    count = int(codes.max(initial=-1)) + 1
    codes[null] = -1
    return codes[:sources.num_rows], codes[sources.num_rows:], count


def _dense(codes: np.ndarray) -> np.ndarray:
    """Renumber codes 0..k-1 so that combining several entity columns never overflows."""
    return pc.dictionary_encode(pa.array(codes)).indices.to_numpy().astype(np.int64)


def _groups(specs: Sequence[WindowSpec]) -> dict[tuple[str, tuple[str, ...]], list[WindowSpec]]:
    groups: dict[tuple[str, tuple[str, ...]], list[WindowSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.available_at, spec.entity), []).append(spec)
    return groups


def _time_order(sources: pa.Table, available_at: str, row_key: str,
                by_key: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source positions by available-at (ties by row key when a `last` needs that tie-break),
    and the available-at times in that order."""
    times = micros(sources[available_at])
    if by_key:
        order = pc.sort_indices(sources, [(available_at, "ascending"),
                                          (row_key, "ascending")]).to_numpy()
    else:
        order = np.argsort(times, kind="stable")
    return order, times[order]


class _SortedSources:
    """Sources of one (available-at, entity) group in (entity, available-at, row key) order.

    Only sources that some query can see are kept: available at or after min(t) - reach and
    before max(t). A window is found by binary search on the key entity * span + time, where time
    is microseconds after min(t) - reach or, when that would overflow int64, the rank among the
    kept times. Sources with a null entity get the code `count`, which no query has.
    """

    def __init__(self, time_order: np.ndarray, times: np.ndarray, codes: np.ndarray,
                 query_codes: np.ndarray, count: int, t: np.ndarray, reach: int):
        self.base = t.min(initial=NEVER) - reach
        first = np.searchsorted(times, self.base, "left")
        last = np.searchsorted(times, t.max(initial=0), "left")
        index, times = time_order[first:last], times[first:last]
        width = int(t.max(initial=0)) - int(self.base) + 1
        self.distinct = np.unique(times) if (count + 2) * width >= KEY_LIMIT else None
        self.span = width if self.distinct is None else len(self.distinct) + 1
        code = codes[index]
        code[code < 0] = count
        order = np.argsort(_small(code, count + 1), kind="stable")
        self.index = index[order]  # source positions, sorted
        self.code = code[order]
        self.available = times[order]
        self.key = self.code * self.span + self._axis(self.available)
        self.count = count
        self.query_codes = query_codes
        # binary searches for keys in ascending order walk memory forwards: several times faster
        self.query_order = np.argsort(_small(query_codes, count + 1), kind="stable")
        self.hi = self.lower_bounds(t)  # every window ends just before its row's own time

    def _axis(self, times: np.ndarray) -> np.ndarray:
        """Times as positions on the key's time axis (order and ties kept)."""
        if self.distinct is None:
            return times - self.base
        return np.searchsorted(self.distinct, times)

    def lower_bounds(self, start: np.ndarray) -> np.ndarray:
        """Per query, the first sorted source of its entity available at or after `start`."""
        order = self.query_order
        key = self.query_codes * self.span + self._axis(start)
        bound = np.empty(len(order), np.int64)
        bound[order] = np.searchsorted(self.key, key[order])
        bound[self.query_codes < 0] = 0  # no entity: an empty window [0, 0)
        return bound


def _small(codes: np.ndarray, count: int) -> np.ndarray:
    """Codes in the narrowest type that holds them: a stable argsort of uint16 is a radix sort."""
    return codes.astype(np.uint16) if count <= 1 << 16 else codes


def _aggregate(spec: WindowSpec, values: _Values, window: _SortedSources, lo: np.ndarray,
               hi: np.ndarray, t: np.ndarray) -> tuple[pa.Array, int]:
    """One feature for every query from its window slices; also the missing values skipped."""
    x, valid = values.x, values.valid
    n = values.counts[hi] - values.counts[lo]
    missing = int((hi - lo).sum() - n.sum())
    if spec.agg == "count":
        return pa.array(n, pa.int64()), missing
    if spec.agg in ("sum", "mean"):
        value = _window_sum(x, valid, window, lo, hi, n)
        if spec.agg == "mean":
            value = value / np.maximum(n, 1)
    elif spec.agg in ("last", "time_since_last"):
        at = np.maximum.accumulate(np.where(valid, np.arange(len(valid)), -1))
        latest = np.where(hi > 0, np.append(at, -1)[hi - 1], -1)
        latest = np.where(latest >= lo, latest, 0)  # n == 0 there: the value is masked below
        if spec.agg == "last":
            value = x[latest] if len(x) else np.zeros(len(lo))
        else:
            available = window.available[latest] if len(x) else np.zeros(len(lo), np.int64)
            value = (t - available) / US
    elif spec.agg == "std":
        _, _, m2 = range_reduce((valid.astype(np.float64), np.where(valid, x, 0.0),
                                 np.zeros(len(x))), merge_moments, (0.0, 0.0, 0.0), lo, hi)
        value = np.sqrt(m2 / np.maximum(n - 1, 1))
        return pa.array(value, pa.float64(), mask=n < 2), missing
    else:  # min, max
        least = spec.agg == "min"
        fill = np.inf if least else -np.inf
        (value,) = range_reduce((np.where(valid, x, fill),), merge_min if least else merge_max,
                                (fill,), lo, hi)
    return pa.array(value, pa.float64(), mask=n == 0), missing


def _user_aggregate(spec: WindowSpec, function: Callable, values: _Values,
                    window: _SortedSources, lo: np.ndarray,
                    t: np.ndarray) -> tuple[pa.Array, int]:
    """A user aggregation over every query's window slice [lo, hi) of the sorted values."""
    hi = window.hi
    missing = int((hi - lo).sum() - (values.counts[hi] - values.counts[lo]).sum())
    handed = Window(values=np.where(values.valid, values.x, np.nan),
                    available_at=window.available, start=lo, end=hi, event_time=t)
    return call(f"window aggregation {spec.agg} of feature {spec.name}", function, handed,
                len(lo)), missing


@dataclass
class _Values:
    """A source column in sorted order as float64, where it holds a value, and the running
    count of values (without a column: every row is a value)."""

    x: np.ndarray
    valid: np.ndarray
    counts: np.ndarray

    @classmethod
    def take(cls, sources: pa.Table, column: str | None, index: np.ndarray) -> _Values:
        if column is None:
            return cls(np.zeros(len(index)), np.ones(len(index), dtype=bool),
                       np.arange(len(index) + 1))
        taken = sources[column].take(pa.array(index))
        if pa.types.is_integer(taken.type) or pa.types.is_floating(taken.type) \
                or pa.types.is_boolean(taken.type):
            x = pc.fill_null(taken.cast(pa.float64()), np.nan).to_numpy()
            valid = ~np.isnan(x)
        else:  # count / time_since_last of any column
            x, valid = np.zeros(len(index)), pc.is_valid(taken).to_numpy(zero_copy_only=False)
        return cls(x, valid, _prefix(valid.astype(np.int64)))


def _prefix(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, dtype=values.dtype)
    np.cumsum(values, out=out[1:])
    return out


def _window_sum(x: np.ndarray, valid: np.ndarray, window: _SortedSources, lo: np.ndarray,
                hi: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Window sums from prefix sums of values centred on their entity's mean.

    Centring keeps the running sum near zero, so the difference of two prefix sums loses no
    precision to the magnitude of everything summed before the window.
    """
    size = window.count + 1  # the last code stands for "no entity"
    totals = np.bincount(window.code, weights=np.where(valid, x, 0.0), minlength=size)
    centre = totals / np.maximum(np.bincount(window.code, weights=valid, minlength=size), 1)
    sums = _prefix(np.where(valid, x - centre[window.code], 0.0))
    return sums[hi] - sums[lo] + n * centre[window.query_codes]
