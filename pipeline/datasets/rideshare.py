"""Synthetic ride-share trips whose label can only be predicted well from history.

One row per trip, sorted by the time it was requested:

======================  =======================  ==============================================
column                  type                     meaning (known at)
======================  =======================  ==============================================
trip_id                 int64                    row key (event)
driver_id, rider_id     int64                    entities (event)
pickup_zone             int32                    entity, 1..zones (event)
dropoff_zone            int32                    (event)
requested_at            timestamp[us, UTC]       event time
completed_at            timestamp[us, UTC]       label-available time = requested_at + duration
distance_km             float64                  (event: the route is quoted at request)
duration_min            float64                  THE LABEL (completion)
fare                    float64                  metered from the duration (completion)
pace_min_per_km         float64                  duration_min / distance_km (completion)
day                     string                   ingestion partition "YYYY-MM-DD"
======================  =======================  ==============================================

``duration_min = distance_km * BASE_PACE * driver_pace * congestion(pickup_zone, requested_at) *
noise``. A driver's latent pace shows only in that driver's past paces; a zone's congestion (a
mean-reverting walk on a 15-minute grid times a rush-hour curve) shows only in the zone's recent
paces and in its recent demand, because busy zones also get more requests. A model without
windowed features therefore cannot see either, which is what lets the pipeline prove its features.

The table also carries the dirt validation must catch, each on its own disjoint set of rows at a
fixed share (``DIRT``): nulls in distance_km / pickup_zone / driver_id, exact duplicate rows,
completed_at before requested_at, rows stamped a year after ``end`` while their ``day`` partition is
an ordinary day in range (a clock-skew bug that survives partition pruning), and negative
distances. With ``cancelled_share`` (0 by default, so the default table is unchanged) that share
of trips is cancelled: they were requested but have no duration, completion, fare or pace, the
events without a label that ``dataset.unlabeled: history`` keeps. Row order is by the request time each row was generated with, so the skewed rows sit in
their day and each duplicate sits right after its original.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

from pipeline.core.timestamps import to_us

BASE_PACE = 2.0  # minutes per km in free-flowing traffic: 30 km/h
SLOT = timedelta(minutes=15)
ZONES = 50
MAX_DRIVERS = 2_000
MAX_RIDERS = 100_000
TRIPS_PER_DRIVER_WEEK = 40
SKEW_US = 365 * 86_400 * 1_000_000

DIRT = {
    "null": 0.005,
    "duplicate": 0.003,
    "completed_before_requested": 0.002,
    "future": 0.001,
    "negative_distance": 0.0005,
}

US = 1_000_000
US_PER_DAY = 86_400 * US
TIMESTAMP = pa.timestamp("us", tz="UTC")


def generate_rideshare(rows: int, start: datetime, end: datetime, seed: int,
                       cancelled_share: float = 0.0) -> pa.Table:
    """``rows`` trips requested in [start, end) (naive datetimes are UTC), deterministic in seed;
    ``cancelled_share`` of them cancelled (no label), disjoint from the dirty rows."""
    rng = np.random.default_rng(seed)
    start_us, end_us = to_us(start), to_us(end)
    if rows <= 0 or end_us <= start_us:
        raise ValueError(f"need rows > 0 and start < end, got {rows=}, {start=}, {end=}")
    duplicates = round(rows * DIRT["duplicate"])
    n = rows - duplicates
    weeks = (end_us - start_us) / (7 * US_PER_DAY)
    drivers = int(np.clip(n / weeks / TRIPS_PER_DRIVER_WEEK, 10, MAX_DRIVERS))
    riders = int(np.clip(n // 10, 10, MAX_RIDERS))

    slot_us = to_us(SLOT)
    slot_start = np.arange(start_us, end_us, slot_us)
    slot_width = np.minimum(slot_us, end_us - slot_start)
    hour = (slot_start % US_PER_DAY) / (3_600 * US)
    walk = mean_reverting_walk(rng, len(slot_start), ZONES, persistence=0.98, sd=0.25)
    congestion = rush_hour(hour)[:, None] * np.exp(walk)
    # Demand follows the daily cycle and rises with congestion, so recent request counts carry signal.
    popularity = rng.lognormal(0.0, 0.6, ZONES)
    demand = (0.1 + daylight(hour))[:, None] * popularity * congestion**2.0
    demand *= (slot_width / slot_us)[:, None]
    counts = rng.multinomial(n, (demand / demand.sum()).ravel())
    cell = np.repeat(np.arange(counts.size), counts)
    slot, zone = np.divmod(cell, ZONES)
    requested = slot_start[slot] + (rng.random(n) * slot_width[slot]).astype(np.int64)
    order = np.argsort(requested, kind="stable")
    requested, slot, zone = requested[order], slot[order], zone[order]

    driver_pace = rng.lognormal(0.0, 0.25, drivers)
    activity = rng.uniform(0.5, 1.5, drivers)
    driver = rng.choice(drivers, n, p=activity / activity.sum())
    distance = rng.lognormal(np.log(5.0), 0.6, n).clip(0.3, 60.0).round(3)
    duration = distance * BASE_PACE * driver_pace[driver] * congestion[slot, zone]
    duration = (duration * rng.lognormal(0.0, 0.1, n)).clip(1.0, 300.0).round(2)
    completed = requested + (duration * 60 * US).astype(np.int64)
    fare = (2.5 + 1.1 * distance + 0.35 * duration).round(2)
    day = requested // US_PER_DAY

    # the cancelled set comes last: with a share of 0 every other set is what it always was
    nulls, replayed, backwards, future, negative, cancelled = disjoint_rows(
        rng, n, rows, {**DIRT, "cancelled": cancelled_share})
    completed[backwards] = requested[backwards] - (completed[backwards] - requested[backwards])
    requested[future] += SKEW_US
    completed[future] += SKEW_US
    distance[negative] *= -1
    null_distance, null_zone, null_driver = nulls[0::3], nulls[1::3], nulls[2::3]
    pace = duration / distance

    table = pa.table(
        {
            "trip_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "driver_id": with_nulls(driver + 1, null_driver),
            "rider_id": pa.array(rng.integers(1, riders + 1, n, dtype=np.int64)),
            "pickup_zone": with_nulls((zone + 1).astype(np.int32), null_zone),
            "dropoff_zone": pa.array(rng.integers(1, ZONES + 1, n, dtype=np.int32)),
            "requested_at": pa.array(requested, TIMESTAMP),
            "completed_at": pa.array(completed, TIMESTAMP, mask=_rows_mask(n, cancelled)),
            "distance_km": with_nulls(distance, null_distance),
            "duration_min": with_nulls(duration, cancelled),
            "fare": with_nulls(fare, cancelled),
            "pace_min_per_km": with_nulls(pace, np.union1d(null_distance, cancelled)),
            "day": day_strings(day),
        }
    )
    return with_duplicates(table, replayed)


def mean_reverting_walk(
    rng: np.random.Generator, steps: int, series: int, persistence: float, sd: float
) -> np.ndarray:
    """(steps, series) stationary AR(1) in log space: it wanders, but never drifts off for good."""
    shocks = rng.normal(0.0, sd * np.sqrt(1 - persistence**2), (steps, series))
    walk = np.empty((steps, series))
    walk[0] = rng.normal(0.0, sd, series)
    for step in range(1, steps):  # over the time grid (thousands of steps), never over rows
        walk[step] = persistence * walk[step - 1] + shocks[step]
    return walk


def rush_hour(hour: np.ndarray) -> np.ndarray:
    """Congestion multiplier by hour of day (UTC): peaks around 08:30 and 17:30."""
    return (
        1 + 0.35 * np.exp(-((hour - 8.5) ** 2) / 2.0) + 0.45 * np.exp(-((hour - 17.5) ** 2) / 4.5)
    )


def daylight(hour: np.ndarray) -> np.ndarray:
    """Baseline demand by hour of day: near zero at 04:00, highest mid-afternoon."""
    return 0.5 * (1 - np.cos(2 * np.pi * (hour - 4) / 24))


def disjoint_rows(
    rng: np.random.Generator, n: int, rows: int, shares: dict[str, float]
) -> list[np.ndarray]:
    """One row set per kind of dirt (in ``shares`` order), sized by its share of ``rows`` and
    non-overlapping, so every dirty row has exactly one thing wrong and the shares are exact."""
    sizes = [round(share * rows) for share in shares.values()]
    picks = rng.permutation(n)[: sum(sizes)]
    return [np.sort(part) for part in np.split(picks, np.cumsum(sizes)[:-1])]


def with_nulls(values: np.ndarray, null_rows: np.ndarray) -> pa.Array:
    return pa.array(values, mask=_rows_mask(len(values), null_rows))


def _rows_mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return mask


def categorical(
    codes: np.ndarray, labels: pa.Array, null_rows: np.ndarray | None = None
) -> pa.Array:
    """``labels[codes]`` as plain strings, via a dictionary: far cheaper than building per-row
    strings when there are few distinct values."""
    codes = codes.astype(np.int32)
    indices = pa.array(codes) if null_rows is None else with_nulls(codes, null_rows)
    return pa.DictionaryArray.from_arrays(indices, labels).cast(pa.string())


def day_strings(days_since_epoch: np.ndarray) -> pa.Array:
    """'YYYY-MM-DD' per row."""
    first = int(days_since_epoch.min())
    labels = np.arange(first, int(days_since_epoch.max()) + 1).astype("datetime64[D]").astype(str)
    return categorical(days_since_epoch - first, pa.array(labels))


def with_duplicates(table: pa.Table, replayed: np.ndarray) -> pa.Table:
    """Each replayed row twice, the copy right after its original (an at-least-once delivery)."""
    repeats = np.ones(table.num_rows, dtype=np.int64)
    repeats[replayed] = 2
    return table.take(pa.array(np.repeat(np.arange(table.num_rows), repeats)))
