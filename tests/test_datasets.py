"""The synthetic datasets: deterministic, correctly typed, dirty in known ways, and carrying a label
signal that only point-in-time history reveals (otherwise the featurize stage could prove nothing)."""

from __future__ import annotations

from datetime import datetime, timezone

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.datasets import (
    SourceNotEmpty,
    dataset_exists,
    ensure_dataset,
    generate_orders,
    generate_rideshare,
    open_dataset,
    orders,
    rideshare,
    write_partitioned,
)
from pipeline.datasets.writer import GENERATING

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
END = datetime(2026, 1, 15, tzinfo=timezone.utc)
ORDERS_END = datetime(2026, 1, 29, tzinfo=timezone.utc)
ROWS = 50_000
UTC_TS = pa.timestamp("us", tz="UTC")


@pytest.fixture(scope="module")
def trips() -> pa.Table:
    return generate_rideshare(ROWS, START, END, seed=0)


@pytest.fixture(scope="module")
def order_table() -> pa.Table:
    return generate_orders(ROWS, START, ORDERS_END, seed=0)


def test_rideshare_is_deterministic_in_seed(trips: pa.Table) -> None:
    assert generate_rideshare(ROWS, START, END, seed=0).equals(trips)
    assert not generate_rideshare(ROWS, START, END, seed=1).equals(trips)


def test_orders_is_deterministic_in_seed(order_table: pa.Table) -> None:
    assert generate_orders(ROWS, START, ORDERS_END, seed=0).equals(order_table)
    assert not generate_orders(ROWS, START, ORDERS_END, seed=1).equals(order_table)


def test_rideshare_schema_and_shape(trips: pa.Table) -> None:
    assert trips.schema == pa.schema(
        [
            ("trip_id", pa.int64()),
            ("driver_id", pa.int64()),
            ("rider_id", pa.int64()),
            ("pickup_zone", pa.int32()),
            ("dropoff_zone", pa.int32()),
            ("requested_at", UTC_TS),
            ("completed_at", UTC_TS),
            ("distance_km", pa.float64()),
            ("duration_min", pa.float64()),
            ("fare", pa.float64()),
            ("pace_min_per_km", pa.float64()),
            ("day", pa.string()),
        ]
    )
    assert trips.num_rows == ROWS
    df = trips.to_pandas()
    assert df.pickup_zone.dropna().between(1, rideshare.ZONES).all()
    assert (df.duration_min >= 1).all()
    assert set(df.day) == {
        d.strftime("%Y-%m-%d") for d in pd.date_range(START, END, inclusive="left")
    }
    normal = df[df.requested_at < END]
    assert (normal.day == normal.requested_at.dt.strftime("%Y-%m-%d")).all()
    assert normal.requested_at.is_monotonic_increasing
    assert (normal.requested_at >= START).all()
    trips_per_driver_week = len(df) / df.driver_id.nunique() / 2
    assert trips_per_driver_week >= 30


def test_orders_schema_and_shape(order_table: pa.Table) -> None:
    assert order_table.schema == pa.schema(
        [
            ("order_id", pa.string()),
            ("customer_id", pa.string()),
            ("warehouse", pa.string()),
            ("ordered_at", pa.int64()),
            ("delivered_at", pa.int64()),
            ("basket_value", pa.float64()),
            ("items", pa.int32()),
            ("late", pa.int8()),
            ("delivery_hours", pa.float64()),
            ("day", pa.string()),
        ]
    )
    assert order_table.num_rows == ROWS
    df = order_table.to_pandas()
    assert df.order_id.str.fullmatch(r"o-\d{9}").all()
    assert df.customer_id.dropna().str.fullmatch(r"c-\d{5}").all()
    assert set(df.warehouse.dropna()) == set(orders.WAREHOUSES)
    assert set(df.late) == {0, 1} and 0.05 < df.late.mean() < 0.5
    normal = df[df.ordered_at < ORDERS_END.timestamp()]
    ordered_day = pd.to_datetime(normal.ordered_at, unit="s").dt.strftime("%Y-%m-%d")
    assert (normal.day == ordered_day).all()
    assert (normal.ordered_at >= START.timestamp()).all()


def dirt_shares(df: pd.DataFrame, event: str, available: str, end, nullable: list[str]) -> dict:
    """Observed share of each kind of dirt, counted the way validation would; ``end`` is in the
    event column's own unit."""
    future = df[event] >= end
    return {
        "null": df[nullable].isna().any(axis=1).mean(),
        "duplicate": df.duplicated().mean(),
        "backwards": (df[available] < df[event]).mean(),
        "future": future.mean(),
    }


EXPECTED_DIRT = {"null": 0.005, "duplicate": 0.003, "backwards": 0.002, "future": 0.001}


def test_rideshare_dirt_shares(trips: pa.Table) -> None:
    df = trips.to_pandas()
    nullable = ["distance_km", "pickup_zone", "driver_id"]
    got = dirt_shares(df, "requested_at", "completed_at", END, nullable)
    assert got == pytest.approx(EXPECTED_DIRT, abs=2e-4)
    assert (df.distance_km < 0).mean() == pytest.approx(0.0005, abs=1e-4)
    for column in nullable:
        assert df[column].isna().sum() > 0.001 * ROWS
    dups = df[df.duplicated(keep=False)]
    assert dups.trip_id.nunique() == len(dups) // 2
    assert (df.day[df.requested_at >= END] < "2026-01-15").all()  # they hide in normal partitions


def test_orders_dirt_shares(order_table: pa.Table) -> None:
    df = order_table.to_pandas()
    end = ORDERS_END.timestamp()
    got = dirt_shares(
        df, "ordered_at", "delivered_at", end, ["basket_value", "customer_id", "warehouse"]
    )
    assert got == pytest.approx(EXPECTED_DIRT, abs=2e-4)
    assert (df.day[df.ordered_at >= end] < "2026-01-29").all()


def history_mean(df: pd.DataFrame, entity: str, value: str, window, event: str, available: str):
    """Mean of ``value`` over the entity's rows whose ``available`` time is in [t - window, t),
    t = the row's ``event`` time: what an online feature store would have served at t."""
    src = df[[entity, available, value]].dropna().sort_values(available)
    grouped = src.groupby(entity)[value]
    src = src.assign(n=grouped.cumcount() + 1, s=grouped.cumsum())

    def before(times: pd.Series) -> np.ndarray:  # (count, sum) of rows available strictly before
        query = pd.DataFrame({entity: df[entity].to_numpy(), "t": times, "i": np.arange(len(df))})
        merged = pd.merge_asof(
            query.sort_values("t"),
            src,
            left_on="t",
            right_on=available,
            by=entity,
            allow_exact_matches=False,
        )
        return merged.sort_values("i")[["n", "s"]].fillna(0).to_numpy()

    n, total = (before(df[event]) - before(df[event] - window)).T
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def fit_and_score(train: pd.DataFrame, test: pd.DataFrame, label: str, features: list[str], loss):
    """OLS on the earlier period, scored on the later one."""

    def design(d: pd.DataFrame) -> np.ndarray:
        return np.column_stack([np.ones(len(d))] + [d[f].to_numpy(float) for f in features])

    weights, *_ = np.linalg.lstsq(design(train), train[label].to_numpy(float), rcond=None)
    return loss(design(test) @ weights - test[label].to_numpy(float))


def mae(error: np.ndarray) -> float:
    return np.abs(error).mean()


def brier(error: np.ndarray) -> float:
    return (error**2).mean()


def test_rideshare_label_needs_driver_history(trips: pa.Table) -> None:
    df = trips.to_pandas().dropna().drop_duplicates()
    df = df[(df.distance_km > 0) & (df.completed_at >= df.requested_at) & (df.requested_at < END)]
    df = df.reset_index(drop=True)
    df["driver_pace"] = history_mean(
        df, "driver_id", "pace_min_per_km", pd.Timedelta("7D"), "requested_at", "completed_at"
    )
    df["distance_x_pace"] = df.distance_km * df.driver_pace
    df = df[df.requested_at >= pd.Timestamp("2026-01-03", tz="UTC")].dropna()
    cutoff = pd.Timestamp("2026-01-10", tz="UTC")
    train, test = df[df.completed_at < cutoff], df[df.requested_at >= cutoff]
    without = fit_and_score(train, test, "duration_min", ["distance_km"], mae)
    with_history = fit_and_score(
        train, test, "duration_min", ["distance_km", "driver_pace", "distance_x_pace"], mae
    )
    assert with_history <= 0.85 * without, (without, with_history)


def test_orders_label_needs_history(order_table: pa.Table) -> None:
    df = order_table.to_pandas().dropna().drop_duplicates()
    end = ORDERS_END.timestamp()
    df = df[(df.delivered_at >= df.ordered_at) & (df.ordered_at < end)].reset_index(drop=True)
    for entity, window in (("customer_id", 30 * 86_400), ("warehouse", 86_400)):
        df[entity + "_hours"] = history_mean(
            df, entity, "delivery_hours", window, "ordered_at", "delivered_at"
        )
    df = df[df.ordered_at >= datetime(2026, 1, 8, tzinfo=timezone.utc).timestamp()]
    df = df.fillna({"customer_id_hours": df.delivery_hours.mean()}).dropna()
    cutoff = datetime(2026, 1, 20, tzinfo=timezone.utc).timestamp()
    train, test = df[df.delivered_at < cutoff], df[df.ordered_at >= cutoff]
    without = fit_and_score(train, test, "late", ["items"], brier)
    with_history = fit_and_score(
        train, test, "late", ["items", "customer_id_hours", "warehouse_hours"], brier
    )
    assert with_history <= 0.9 * without, (without, with_history)


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_write_read_round_trip(trips: pa.Table, tmp_path, kind: str) -> None:
    uri = (
        str(tmp_path / "trips") if kind == "local" else f"memory://roundtrip-{tmp_path.name}/trips"
    )
    assert not dataset_exists(uri)
    write_partitioned(trips, uri)
    assert dataset_exists(uri)
    fs, root = fsspec.core.url_to_fs(uri)
    assert fs.exists(f"{root}/day=2026-01-01/part-0.parquet")
    back = open_dataset(uri).to_table().select(trips.column_names)
    by_key = [("trip_id", "ascending")]
    assert back.sort_by(by_key).equals(trips.sort_by(by_key))
    day_file = pq.read_schema(fs.open(f"{root}/day=2026-01-01/part-0.parquet"))
    assert "day" not in day_file.names


def test_ensure_dataset_generates_once_and_resumes_only_its_own_attempt(tmp_path) -> None:
    uri = str(tmp_path / "orders")
    (tmp_path / "orders").mkdir()  # an empty folder is as good as none
    args = {"kind": "orders", "rows": 2_000, "start": START, "end": END, "seed": 3}
    assert ensure_dataset(uri, **args) is True
    assert ensure_dataset(uri, **args) is False

    fs, root = fsspec.core.url_to_fs(uri)
    assert not fs.exists(f"{root}/{GENERATING}")  # gone once the dataset is complete
    # a generation killed before its _SUCCESS: our marker and half-written files
    fs.rm(f"{root}/_SUCCESS")
    fs.pipe_file(f"{root}/{GENERATING}", b'{"generated": {}}')
    fs.makedirs(f"{root}/day=2030-01-01")
    fs.pipe_file(f"{root}/day=2030-01-01/part-0.parquet", b"half-written garbage")
    assert not dataset_exists(uri)
    assert ensure_dataset(uri, **args) is True
    table = open_dataset(uri).to_table()
    assert table.num_rows == 2_000
    assert pc.max(table["day"]).as_py() < "2026-01-15"


def _plant(tmp_path, layout: str):
    """A location that holds something ensure_dataset did not write."""
    target = tmp_path / "target"
    if layout == "a_file":
        target.write_text("not a folder")
        return target
    target.mkdir()
    if layout == "user_folder":
        (target / "notes.txt").write_text("my notes")
        pq.write_table(pa.table({"x": [1, 2, 3]}), target / "events.parquet")
    elif layout == "partitions_without_markers":
        (target / "day=2026-01-01").mkdir()
        pq.write_table(pa.table({"x": [1]}), target / "day=2026-01-01" / "part-0.parquet")
    elif layout == "stray_file_beside_our_marker":
        (target / GENERATING).write_text("{}")
        (target / "notes.txt").write_text("my notes")
    return target


def _contents(path) -> dict:
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("layout", ["user_folder", "partitions_without_markers",
                                    "stray_file_beside_our_marker", "a_file"])
def test_ensure_dataset_never_touches_what_it_did_not_create(tmp_path, layout: str) -> None:
    target = _plant(tmp_path, layout)
    before = _contents(target)
    with pytest.raises(SourceNotEmpty, match=str(target)):
        ensure_dataset(str(target), "orders", 1_000, START, END, seed=0)
    with pytest.raises(SourceNotEmpty):
        write_partitioned(generate_orders(100, START, END, seed=0), str(target))
    assert _contents(target) == before


def test_ensure_dataset_refuses_a_mismatch_and_unknown_kinds(tmp_path) -> None:
    uri = str(tmp_path / "trips")
    ensure_dataset(uri, "rideshare", 1_000, START, END, seed=0)
    with pytest.raises(ValueError, match="rows"):
        ensure_dataset(uri, "rideshare", 2_000, START, END, seed=0)
    with pytest.raises(ValueError, match="cancelled_share"):
        ensure_dataset(uri, "rideshare", 1_000, START, END, seed=0, cancelled_share=0.1)
    with pytest.raises(ValueError, match="'taxi'.*rideshare"):
        ensure_dataset(str(tmp_path / "other"), "taxi", 1_000, START, END, seed=0)


def test_run_refuses_to_generate_over_a_users_folder(tmp_path, capsys) -> None:
    from tests.conftest import SMOKE, run_cli

    target = _plant(tmp_path, "user_folder")
    before = _contents(target)
    code, _, _ = run_cli("run", "-c", str(SMOKE), "--set", f"dataset.source={target}",
                         "--set", f"artifact_root={tmp_path / 'artifacts'}")
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0]
    assert "dataset.generate" in lines[0]
    assert _contents(target) == before


def test_ensure_dataset_cancels_the_configured_share_of_trips(tmp_path) -> None:
    uri = str(tmp_path / "trips")
    assert ensure_dataset(uri, "rideshare", 4_000, START, END, seed=1, cancelled_share=0.1)
    assert not ensure_dataset(uri, "rideshare", 4_000, START, END, seed=1, cancelled_share=0.1)
    trips = open_dataset(uri).to_table()
    cancelled = trips.filter(pc.and_(pc.is_null(trips["duration_min"]),
                                     pc.is_null(trips["completed_at"])))
    assert 0.08 * 4_000 < cancelled.num_rows < 0.12 * 4_000
    with pytest.raises(ValueError, match="cancelled_share"):
        ensure_dataset(uri, "rideshare", 4_000, START, END, seed=1)
