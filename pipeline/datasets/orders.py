"""Synthetic e-commerce orders: a second event table shaped unlike ride-share trips.

It exists to prove that a new dataset needs a new config, not new code: string keys and entities,
integer epoch-second times instead of timestamps, and a binary label.

==============  =========  =====================================================
column          type       meaning (known at)
==============  =========  =====================================================
order_id        string     row key "o-000001234" (event)
customer_id     string     entity "c-00042" (event)
warehouse       string     entity, one of ``WAREHOUSES`` (event)
ordered_at      int64      event time, epoch seconds
delivered_at    int64      label-available time, epoch seconds
basket_value    float64    (event)
items           int32      (event)
late            int8       THE LABEL: 1 if delivery took longer than PROMISE_HOURS
delivery_hours  float64    (delivery_at - ordered_at) / 3600 (delivery)
day             string     ingestion partition "YYYY-MM-DD" (UTC date of ordered_at)
==============  =========  =====================================================

``delivery_hours = 30 * backlog(warehouse, ordered_at) * customer_remoteness * (1 + 3% per extra
item) * noise``. Each warehouse's backlog is a slow mean-reverting walk on an hourly grid that also
draws more orders when high, visible through its recently delivered orders; each customer's
remoteness shows in their past deliveries. Dirt as in the ride-share table (``DIRT``), on disjoint
row sets: nulls in basket_value / customer_id / warehouse, exact duplicates, delivered_at before
ordered_at, and rows stamped a year late inside an ordinary ``day`` partition.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.timestamps import to_us
from pipeline.datasets.rideshare import (
    categorical,
    day_strings,
    daylight,
    disjoint_rows,
    mean_reverting_walk,
    with_duplicates,
    with_nulls,
)

WAREHOUSES = [
    "AMS1", "BER1", "BER2", "CDG1", "FRA1", "LHR1", "LHR2", "MAD1", "MIL1", "VIE1", "WAW1", "ZRH1"
]  # fmt: skip
PROMISE_HOURS = 48.0
HOUR = 3_600
DAY = 24 * HOUR
SKEW_SECONDS = 365 * DAY
MAX_CUSTOMERS = 100_000

DIRT = {
    "null": 0.005,
    "duplicate": 0.003,
    "delivered_before_ordered": 0.002,
    "future": 0.001,
}


def generate_orders(rows: int, start: datetime, end: datetime, seed: int) -> pa.Table:
    """``rows`` orders placed in [start, end) (naive datetimes are UTC), deterministic in seed."""
    rng = np.random.default_rng(seed)
    start_s, end_s = to_us(start) // 1_000_000, to_us(end) // 1_000_000
    if rows <= 0 or end_s <= start_s:
        raise ValueError(f"need rows > 0 and start < end, got {rows=}, {start=}, {end=}")
    duplicates = round(rows * DIRT["duplicate"])
    n = rows - duplicates
    customers = int(np.clip(n // 20, 10, MAX_CUSTOMERS))

    hour_start = np.arange(start_s, end_s, HOUR)
    hour_width = np.minimum(HOUR, end_s - hour_start)
    walk = mean_reverting_walk(rng, len(hour_start), len(WAREHOUSES), persistence=0.99, sd=0.3)
    backlog = np.exp(walk + rng.normal(0.0, 0.15, len(WAREHOUSES)))
    size = rng.lognormal(0.0, 0.5, len(WAREHOUSES))
    demand = (0.2 + daylight((hour_start % DAY) / HOUR))[:, None] * size * backlog
    demand *= (hour_width / HOUR)[:, None]
    counts = rng.multinomial(n, (demand / demand.sum()).ravel())
    hour, warehouse = np.divmod(np.repeat(np.arange(counts.size), counts), len(WAREHOUSES))
    ordered = hour_start[hour] + (rng.random(n) * hour_width[hour]).astype(np.int64)
    order = np.argsort(ordered, kind="stable")
    ordered, hour, warehouse = ordered[order], hour[order], warehouse[order]

    remoteness = rng.lognormal(0.0, 0.3, customers)
    customer = rng.integers(0, customers, n)
    items = (1 + rng.poisson(2.0, n)).astype(np.int32)
    basket = (items * rng.lognormal(np.log(20.0), 0.5, n)).round(2)
    hours = 30.0 * backlog[hour, warehouse] * remoteness[customer] * (1 + 0.03 * (items - 1))
    seconds = (hours * rng.lognormal(0.0, 0.2, n) * HOUR).round().astype(np.int64).clip(HOUR)
    delivered = ordered + seconds
    late = (seconds > PROMISE_HOURS * HOUR).astype(np.int8)
    day = ordered // DAY

    nulls, replayed, backwards, future = disjoint_rows(rng, n, rows, DIRT)
    delivered[backwards] = ordered[backwards] - seconds[backwards]
    ordered[future] += SKEW_SECONDS
    delivered[future] += SKEW_SECONDS

    table = pa.table(
        {
            "order_id": labelled_ids("o-", np.arange(1, n + 1), 9),
            "customer_id": categorical(
                customer, labelled_ids("c-", np.arange(1, customers + 1), 5), nulls[1::3]
            ),
            "warehouse": categorical(warehouse, pa.array(WAREHOUSES), nulls[2::3]),
            "ordered_at": pa.array(ordered),
            "delivered_at": pa.array(delivered),
            "basket_value": with_nulls(basket, nulls[0::3]),
            "items": pa.array(items),
            "late": pa.array(late),
            "delivery_hours": pa.array(seconds / HOUR),
            "day": day_strings(day),
        }
    )
    return with_duplicates(table, replayed)


def labelled_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """'prefix' + zero-padded number, built in Arrow compute: fast on millions of rows, unlike Python."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")
