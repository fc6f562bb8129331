"""Time as the kernels see it: int64 microseconds since the Unix epoch, UTC.

Every kernel (windows, chunks, splits, the audit) compares integers in this one unit, so a time has
exactly one conversion, here.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
US_PER_DAY = 86_400_000_000
_ONE_US = timedelta(microseconds=1)


def to_us(moment: datetime | date | timedelta) -> int:
    """A duration in microseconds, or a moment in microseconds since the epoch (naive = UTC)."""
    if isinstance(moment, timedelta):
        return moment // _ONE_US
    if not isinstance(moment, datetime):  # a calendar day: its midnight, UTC
        moment = datetime(moment.year, moment.month, moment.day)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - EPOCH) // _ONE_US


def from_us(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def column_us(times: pa.Array | pa.ChunkedArray | np.ndarray, missing: int) -> np.ndarray:
    """A timestamp column (Arrow or datetime64) as int64 microseconds; nulls become `missing`."""
    if isinstance(times, np.ndarray):
        if not np.issubdtype(times.dtype, np.datetime64):
            raise TypeError(f"expected datetime64 values, got {times.dtype}")
        values = times.astype("datetime64[us]").astype(np.int64)
        return np.where(np.isnat(times), missing, values)
    if not pa.types.is_timestamp(times.type):
        raise TypeError(f"expected a timestamp column, got {times.type}")
    as_us = pc.cast(times, pa.timestamp("us", tz=times.type.tz)).cast(pa.int64())
    return pc.fill_null(as_us, missing).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def day_strings(times: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Each timestamp's calendar day as 'YYYY-MM-DD' in the column's time zone: what
    `pc.strftime(times, format="%Y-%m-%d")` gives, much faster (a cast through date32)."""
    return pc.cast(pc.cast(times, pa.date32()), pa.string())
