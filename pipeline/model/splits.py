"""Train / validation / test by time, with a reason for every row that is in none of them.

With T = split.train_until, V = split.validation_until and E = split.embargo, a row with event time t
and label-available time l goes to

    train       t < T          and l < T       (its label was known before the training cutoff)
    validation  T + E <= t < V and l < V
    test        t >= V + E

and every other row is excluded with one reason code:

    label_after_cutoff  the row's event is inside train (validation) but its label arrived only at
                        or after T (V): training on it would use a label the model could not have had
    embargo             the event lies in [T, T + E) or [V, V + E): a gap so that windowed features
                        of the later split do not overlap the labels of the earlier one
    missing_time        no event time (validate should have quarantined it; kept for the account)

Pure numpy / pyarrow, no I/O: the train stage writes one (row key, split, reason) row per input row
with it, and the evaluate stage picks its test rows with the same function.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import SplitConfig

SPLITS = ("train", "validation", "test")
REASONS = ("label_after_cutoff", "embargo", "missing_time")

# Codes: 0 means "none" in both arrays, so `_SPLIT_NAMES[codes]` gives None for excluded rows.
_SPLIT_NAMES = np.array([None, *SPLITS], dtype=object)
_REASON_NAMES = np.array([None, *REASONS], dtype=object)
_TRAIN, _VALIDATION, _TEST = 1, 2, 3
_LABEL_AFTER_CUTOFF, _EMBARGO, _MISSING_TIME = 1, 2, 3

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NEVER = np.iinfo(np.int64).max  # a missing label time: the label never became available


def _us(moment: datetime | timedelta) -> int:
    if isinstance(moment, timedelta):
        return moment // timedelta(microseconds=1)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def epoch_us(times: pa.Array | pa.ChunkedArray | np.ndarray, missing: int) -> np.ndarray:
    """int64 microseconds since the epoch (UTC) of a timestamp column; nulls become `missing`."""
    if isinstance(times, np.ndarray):
        if not np.issubdtype(times.dtype, np.datetime64):
            raise TypeError(f"expected datetime64 values, got {times.dtype}")
        values = times.astype("datetime64[us]").astype(np.int64)
        return np.where(np.isnat(times), missing, values)
    if not pa.types.is_timestamp(times.type):
        raise TypeError(f"expected a timestamp column, got {times.type}")
    as_us = pc.cast(times, pa.timestamp("us", tz=times.type.tz)).cast(pa.int64())
    return pc.fill_null(as_us, missing).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def split_codes(event_us: np.ndarray, label_us: np.ndarray, split: SplitConfig,
                event_missing: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kernel: int8 split codes (0 none, 1 train, 2 validation, 3 test) and reason codes."""
    train_until, validation_until = _us(split.train_until), _us(split.validation_until)
    embargo = _us(split.embargo)
    in_train = event_us < train_until
    in_validation = (event_us >= train_until + embargo) & (event_us < validation_until)
    in_test = event_us >= validation_until + embargo

    splits = np.zeros(len(event_us), dtype=np.int8)
    reasons = np.zeros(len(event_us), dtype=np.int8)
    splits[in_train & (label_us < train_until)] = _TRAIN
    splits[in_validation & (label_us < validation_until)] = _VALIDATION
    splits[in_test] = _TEST
    reasons[(in_train | in_validation) & (splits == 0)] = _LABEL_AFTER_CUTOFF
    reasons[~(in_train | in_validation | in_test)] = _EMBARGO
    if event_missing is not None and event_missing.any():
        splits[event_missing] = 0
        reasons[event_missing] = _MISSING_TIME
    return splits, reasons


def assign_splits(event_time: pa.Array | pa.ChunkedArray | np.ndarray,
                  label_available_at: pa.Array | pa.ChunkedArray | np.ndarray,
                  split: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the split name ("train"/"validation"/"test" or None) and the reason it has none."""
    event_us = epoch_us(event_time, missing=0)
    missing = _null_mask(event_time)
    label_us = epoch_us(label_available_at, missing=_NEVER)
    splits, reasons = split_codes(event_us, label_us, split, missing)
    return _SPLIT_NAMES[splits], _REASON_NAMES[reasons]


def _null_mask(times: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    if isinstance(times, np.ndarray):
        return np.isnat(times)
    return pc.is_null(times).to_numpy(zero_copy_only=False)


def split_table(table: pa.Table, row_key: str, event_time: str, label_available_at: str,
                split: SplitConfig) -> pa.Table:
    """(row key, split, reason) for every row of `table`: what `pipeline trace` reads back."""
    splits, reasons = assign_splits(table[event_time], table[label_available_at], split)
    return pa.table({
        row_key: table[row_key],
        "split": pa.array(splits, pa.string()),
        "reason": pa.array(reasons, pa.string()),
    })
