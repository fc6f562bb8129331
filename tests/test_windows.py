"""The window kernel agrees, value for value, with a brute-force loop and with DuckDB SQL.

Three independent definitions of "values of the same entity available in [t - W, t)": the numpy
kernel (`pipeline.features.windows`), the plain loop (`pipeline.features.reference`) and a DuckDB
range join written here. Hand-built tables pin the edge cases; hypothesis finds the rest.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.timestamps import day_strings, to_us
from pipeline.features import windows
from pipeline.features.audit import agree
from pipeline.features.chunks import halo_us, plan_chunks
from pipeline.features.reference import reference_windows
from pipeline.features.segment_tree import range_reduce
from pipeline.features.windows import WindowSpec, compute_windows

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
STAMP = pa.timestamp("us", tz="UTC")
MINUTE = 60_000_000
AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "last", "time_since_last")


def table(rows: list[dict]) -> pa.Table:
    """Rows given as minutes after T0 ("t", "ready") become a table with timestamp columns."""
    columns = {name: [row.get(name) for row in rows] for name in rows[0]}
    types = {"key": pa.int64(), "e": pa.int64(), "v": pa.float64(), "s": pa.string()}
    arrays = {}
    for name, values in columns.items():
        if name in ("t", "ready"):
            arrays[name] = pa.array([T0 + timedelta(minutes=v) for v in values], STAMP)
        else:
            arrays[name] = pa.array(values, types.get(name))
    return pa.table(arrays)


def spec(agg: str, minutes: float = 10, column: str | None = "v", available_at: str = "t",
         entity: tuple[str, ...] = ("e",)) -> WindowSpec:
    return WindowSpec(f"{agg}_{column}_{available_at}_{'_'.join(entity)}_{minutes}", entity,
                      column, agg, int(minutes * MINUTE), available_at)


def kernel(rows: pa.Table, specs: list[WindowSpec], queries: pa.Table | None = None) -> dict:
    result = compute_windows(rows, rows if queries is None else queries, specs, event_time="t",
                             row_key="key")
    return {name: column.to_pylist() for name, column in result.columns.items()}


def reference(rows: pa.Table, specs: list[WindowSpec]) -> dict:
    return reference_windows(rows, rows, specs, event_time="t", row_key="key")


@functools.cache
def duckdb_connection() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()  # a quarter of a second each: one per test session


def duckdb_windows(rows: pa.Table, specs: list[WindowSpec]) -> dict:
    """The oracle: a SQL range join per feature, independent of both Python implementations."""
    connection = duckdb_connection()
    connection.register("src", rows)
    connection.register("qry", rows.append_column("_q", pa.array(range(rows.num_rows))))
    out = {}
    for s in specs:
        value = f'src."{s.column}"' if s.column else 'src."key"'
        present = f"{value} IS NOT NULL"
        available = f'epoch_us(src."{s.available_at}")'
        aggregate = {
            "count": f"count({value})",
            "sum": f"sum({value})",
            "mean": f"avg({value})",
            "min": f"min({value})",
            "max": f"max({value})",
            "std": f"stddev_samp({value})",
            "last": f'last({value} ORDER BY {available}, src."key") FILTER (WHERE {present})',
            "time_since_last": f'(epoch_us(qry."t") - max({available}) FILTER (WHERE {present}))'
                               " / 1e6",
        }[s.agg]
        same = " AND ".join(f'src."{name}" = qry."{name}"' for name in s.entity)
        sql = f"""
            SELECT qry._q, {aggregate} AS value
            FROM qry LEFT JOIN src
              ON {same}
             AND {available} >= epoch_us(qry."t") - {s.window_us}
             AND {available} < epoch_us(qry."t")
            GROUP BY qry._q, qry."t" ORDER BY qry._q"""
        out[s.name] = [row[1] for row in connection.execute(sql).fetchall()]
    return out


def assert_same(left: dict, right: dict, rows: pa.Table | None = None) -> None:
    for name, values in left.items():
        for i, (a, b) in enumerate(zip(values, right[name], strict=True)):
            if isinstance(a, int) and isinstance(b, float):  # DuckDB's count is an integer too
                b = int(b)
            where = f" (row {rows.slice(i, 1).to_pylist()[0]})" if rows is not None else ""
            assert agree(a, b), f"{name}[{i}]: {a!r} != {b!r}{where}"


def check_all_three(rows: pa.Table, specs: list[WindowSpec]) -> dict:
    fast = kernel(rows, specs)
    assert_same(fast, reference(rows, specs), rows)
    assert_same(fast, duckdb_windows(rows, specs), rows)
    return fast


# -- hand-built cases --------------------------------------------------------------------------
def test_equal_timestamps_never_see_each_other():
    rows = table([{"key": 1, "e": 1, "t": 0, "v": 5.0}, {"key": 2, "e": 1, "t": 0, "v": 7.0},
                  {"key": 3, "e": 1, "t": 1, "v": 1.0}])
    out = check_all_three(rows, [spec("count"), spec("sum"), spec("last")])
    assert out[spec("count").name] == [0, 0, 2]
    assert out[spec("sum").name] == [None, None, 12.0]
    assert out[spec("last").name] == [None, None, 7.0]  # tie on time: the greater row key wins


def test_value_at_t_minus_w_is_in_and_value_at_t_is_out():
    rows = table([{"key": 1, "e": 1, "t": 0, "v": 1.0}, {"key": 2, "e": 1, "t": 10, "v": 2.0},
                  {"key": 3, "e": 1, "t": 20, "v": 4.0}])
    out = check_all_three(rows, [spec("count"), spec("sum"), spec("time_since_last")])
    # row 2 (t=10) sees row 1 (at t - W = 0); row 3 (t=20) sees row 2 (at 10) but not row 1
    assert out[spec("count").name] == [0, 1, 1]
    assert out[spec("sum").name] == [None, 1.0, 2.0]
    assert out[spec("time_since_last").name] == [None, 600.0, 600.0]


def test_one_row_entities_get_empty_windows_not_errors():
    rows = table([{"key": 1, "e": 1, "t": 0, "v": 1.0}, {"key": 2, "e": 2, "t": 1, "v": 2.0}])
    out = check_all_three(rows, [spec(agg) for agg in AGGREGATIONS])
    assert out[spec("count").name] == [0, 0]
    for agg in AGGREGATIONS[1:]:
        assert out[spec(agg).name] == [None, None]


def test_nulls_are_skipped_and_counted():
    rows = table([{"key": 1, "e": 1, "t": 0, "v": None}, {"key": 2, "e": 1, "t": 1, "v": 3.0},
                  {"key": 3, "e": 1, "t": 2, "v": None}, {"key": 4, "e": 1, "t": 3, "v": None}])
    specs = [spec("count"), spec("count", column=None), spec("mean"), spec("last"),
             spec("time_since_last")]
    out = check_all_three(rows, specs)
    assert out[spec("count").name] == [0, 0, 1, 1]
    assert out[spec("count", column=None).name] == [0, 1, 2, 3]
    assert out[spec("mean").name] == [None, None, 3.0, 3.0]
    assert out[spec("last").name] == [None, None, 3.0, 3.0]  # the last *present* value
    assert out[spec("time_since_last").name] == [None, None, 60.0, 120.0]
    result = compute_windows(rows, rows, [spec("mean")], event_time="t", row_key="key")
    assert result.nulls_skipped == {spec("mean").name: 0 + 1 + 1 + 2}


def test_only_nulls_in_window_give_null_and_zero_count():
    rows = table([{"key": 1, "e": 1, "t": 0, "v": None}, {"key": 2, "e": 1, "t": 1, "v": None}])
    out = check_all_three(rows, [spec(agg) for agg in AGGREGATIONS])
    assert out[spec("count").name] == [0, 0]
    assert out[spec("std").name] == [None, None]


def test_late_labels_arrive_after_later_events():
    # row 1's label is ready at minute 30; rows at 10 and 30 must not see it, the row at 31 does
    rows = table([
        {"key": 1, "e": 1, "t": 0, "ready": 30, "v": 8.0},
        {"key": 2, "e": 1, "t": 10, "ready": 11, "v": 2.0},
        {"key": 3, "e": 1, "t": 30, "ready": 40, "v": 4.0},
        {"key": 4, "e": 1, "t": 31, "ready": 50, "v": 6.0},
    ])
    label = [spec("mean", 60, available_at="ready"), spec("count", 60, available_at="ready"),
             spec("last", 60, available_at="ready")]
    out = check_all_three(rows, label)
    assert out[label[0].name] == [None, None, 2.0, 5.0]
    assert out[label[1].name] == [0, 0, 1, 2]
    assert out[label[2].name] == [None, None, 2.0, 8.0]  # row 1's label arrived last (at 30)


def test_std_is_sample_std_exact_for_constant_windows():
    rows = table([{"key": k, "e": 1, "t": k, "v": 1e9 + 0.1} for k in range(5)]
                 + [{"key": 9, "e": 1, "t": 9, "v": 1.0}])
    out = check_all_three(rows, [spec("std", 100)])
    assert out[spec("std", 100).name][:5] == [None, None, 0.0, 0.0, 0.0]
    assert out[spec("std", 100).name][5] == pytest.approx(np.std([1e9 + 0.1] * 5, ddof=1))


def test_entities_of_several_columns_strings_and_nulls():
    rows = table([
        {"key": 1, "e": 1, "s": "a", "t": 0, "v": 1.0},
        {"key": 2, "e": 1, "s": "b", "t": 1, "v": 2.0},
        {"key": 3, "e": 1, "s": "a", "t": 2, "v": 4.0},
        {"key": 4, "e": None, "s": "a", "t": 3, "v": 8.0},
        {"key": 5, "e": None, "s": "a", "t": 4, "v": 16.0},
        {"key": 6, "e": 1, "s": None, "t": 5, "v": 32.0},
    ])
    pair, text = spec("sum", entity=("e", "s")), spec("sum", entity=("s",))
    out = check_all_three(rows, [pair, text])
    assert out[pair.name] == [None, None, 1.0, None, None, None]  # a null entity matches nothing
    assert out[text.name] == [None, None, 1.0, 5.0, 13.0, None]


def test_string_row_keys_break_ties_for_last():
    rows = pa.table({"key": ["b", "a", "c"], "e": [1, 1, 1],
                     "t": pa.array([T0, T0, T0 + timedelta(minutes=1)], STAMP),
                     "v": [1.0, 2.0, 3.0]})
    out = kernel(rows, [spec("last")])
    assert out[spec("last").name] == [None, None, 1.0]  # "b" > "a"
    assert_same(out, reference(rows, [spec("last")]))


def test_queries_may_be_other_rows_than_sources():
    sources = table([{"key": 1, "e": 1, "t": 0, "v": 1.0}, {"key": 2, "e": 2, "t": 0, "v": 2.0}])
    queries = table([{"key": 7, "e": 2, "t": 5, "v": None}, {"key": 8, "e": 3, "t": 5, "v": None}])
    out = kernel(sources, [spec("sum"), spec("count")], queries)
    assert out == {spec("sum").name: [2.0, None], spec("count").name: [1, 0]}


def test_range_reduce_matches_slices():
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 5, 16, 17, 100):
        values = rng.normal(size=n)
        lo = rng.integers(0, n + 1, 200)
        hi = np.maximum(lo, rng.integers(0, n + 1, 200))
        (least,) = range_reduce((values,), lambda a, b: (np.minimum(a[0], b[0]),), (np.inf,),
                                lo, hi)
        expected = [values[a:b].min() if b > a else np.inf for a, b in zip(lo, hi)]
        assert least.tolist() == expected


# -- property-based ----------------------------------------------------------------------------
@st.composite
def tables(draw) -> pa.Table:
    n = draw(st.integers(1, 30))
    minutes = st.integers(0, 40)
    rows = []
    for key in draw(st.permutations(range(n))):
        t = draw(minutes)
        rows.append({
            "key": key,
            "e": draw(st.one_of(st.none(), st.integers(0, 3))),
            "s": draw(st.sampled_from(["a", "b"])),
            "t": t,
            "ready": t + draw(st.sampled_from([0, 1, 5, 30, 90])),
            "v": draw(st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False),
                                st.sampled_from([0.0, 1.5, -2.25]))),
        })
    return table(rows)


specs_strategy = st.lists(
    st.builds(spec, st.sampled_from(AGGREGATIONS), st.sampled_from([1, 5, 15, 60, 1e-6]),
              st.sampled_from(["v", None]), st.sampled_from(["t", "ready"]),
              st.sampled_from([("e",), ("e", "s"), ("s",)])),
    min_size=1, max_size=6, unique_by=lambda s: s.name,
).filter(lambda specs: all(s.column or s.agg in ("count", "time_since_last") for s in specs))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=tables(), specs=specs_strategy)
def test_kernel_agrees_with_reference_and_duckdb(rows, specs):
    check_all_three(rows, specs)


@settings(max_examples=60, deadline=None)
@given(rows=tables(), specs=specs_strategy)
def test_rank_time_axis_used_when_keys_would_overflow_agrees(rows, specs):
    """Many entities over a long span switch the search keys from microseconds to time ranks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(windows, "KEY_LIMIT", 0)
        assert_same(kernel(rows, specs), reference(rows, specs), rows)


@settings(max_examples=60, deadline=None)
@given(rows=tables(), specs=specs_strategy, chunk_minutes=st.sampled_from([1, 7, 15, 60]))
def test_chunks_with_their_halo_give_the_same_features(rows, specs, chunk_minutes):
    """Chunked computation (each chunk from its rows plus the halo) equals one pass over all."""
    whole = kernel(rows, specs)
    t = rows["t"].cast(pa.int64()).to_numpy()
    halo = halo_us(specs, "ready", timedelta(minutes=90))
    day = T0.date()
    chunks = [c for c in plan_chunks([day], chunk_minutes * MINUTE, halo)
              if c.end_us > t.min() and c.start_us <= t.max()]
    pieces = {name: [None] * rows.num_rows for name in whole}
    for chunk in chunks:
        own = np.flatnonzero((t >= chunk.start_us) & (t < chunk.end_us))
        near = np.flatnonzero((t >= chunk.halo_start_us) & (t < chunk.end_us))
        part = kernel(rows.take(pa.array(near, pa.int64())), specs,
                      rows.take(pa.array(own, pa.int64())))
        for name, values in part.items():
            for position, value in zip(own, values):
                pieces[name][position] = value
    assert_same(pieces, whole, rows)


def test_plan_chunks_is_aligned_to_the_epoch_and_covers_each_day():
    day = T0.date()
    chunks = plan_chunks([day, day + timedelta(days=2)], 6 * 60 * MINUTE, 7 * MINUTE)
    starts = [c.start_us - to_us(day) for c in chunks]
    hours = [s // (60 * MINUTE) for s in starts]
    assert hours == [0, 6, 12, 18, 48, 54, 60, 66]
    assert [c.index for c in chunks] == list(range(8))
    assert all(c.halo_start_us == c.start_us - 7 * MINUTE for c in chunks)


def test_label_time_halo_adds_the_label_delay():
    specs = [spec("mean", 60, available_at="ready"), spec("count", 90, available_at="t")]
    assert halo_us(specs, "ready", timedelta(minutes=45)) == 105 * MINUTE
    assert halo_us(specs[1:], "ready", timedelta(minutes=45)) == 90 * MINUTE


def test_unknown_available_at_never_counts():
    rows = table([{"key": 1, "e": 1, "t": 0, "ready": 0, "v": 1.0},
                  {"key": 2, "e": 1, "t": 1, "ready": 1, "v": 1.0}])
    rows = rows.set_column(rows.schema.get_field_index("ready"), "ready",
                           pc.if_else(pa.array([True, False]), pa.scalar(None, STAMP),
                                      rows["ready"]))
    out = check_all_three(rows, [spec("count", available_at="ready")])
    assert out[spec("count", available_at="ready").name] == [0, 0]


@settings(max_examples=50, deadline=None)
@given(micros=st.lists(st.one_of(st.none(), st.integers(-2**50, 2**50)), max_size=50),
       zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata"]))
def test_day_strings_are_strftime_days_in_the_columns_zone(micros, zone):
    """Validate's day partitions and the audit's sample days: the fast cast gives what
    `strftime("%Y-%m-%d")` gives, nulls and pre-1970 times included."""
    times = pa.array(micros, pa.timestamp("us", tz=zone))
    assert day_strings(times).equals(pc.strftime(times, format="%Y-%m-%d"))
