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
    unlabeled           no label: a row validate kept as history (`dataset.unlabeled: history`);
                        it fed other rows' windows, but there is nothing to learn or test on it

Pure numpy / pyarrow, no I/O. The train stage decides every row's split here, once, and publishes
(row key, split, reason) per row and the test period's start; evaluate and `pipeline trace` read
those instead of deciding again.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import SplitConfig
from pipeline.core.timestamps import column_us, to_us

SPLITS = ("train", "validation", "test")
REASONS = ("label_after_cutoff", "embargo", "missing_time", "unlabeled")

# Codes: 0 means "none" in both arrays, so `_SPLIT_NAMES[codes]` gives None for excluded rows.
_SPLIT_NAMES = np.array([None, *SPLITS], dtype=object)
_REASON_NAMES = np.array([None, *REASONS], dtype=object)
_TRAIN, _VALIDATION, _TEST = 1, 2, 3
_LABEL_AFTER_CUTOFF, _EMBARGO, _MISSING_TIME, _UNLABELED = 1, 2, 3, 4

_NEVER = np.iinfo(np.int64).max  # a missing label time: the label never became available


def split_codes(event_us: np.ndarray, label_us: np.ndarray, split: SplitConfig,
                event_missing: np.ndarray | None = None,
                label_missing: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kernel: int8 split codes (0 none, 1 train, 2 validation, 3 test) and reason codes."""
    train_until, validation_until = to_us(split.train_until), to_us(split.validation_until)
    embargo = to_us(split.embargo)
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
    if label_missing is not None and label_missing.any():
        splits[label_missing] = 0
        reasons[label_missing] = _UNLABELED
    if event_missing is not None and event_missing.any():
        splits[event_missing] = 0
        reasons[event_missing] = _MISSING_TIME
    return splits, reasons


def assign_splits(event_time: pa.Array | pa.ChunkedArray | np.ndarray,
                  label_available_at: pa.Array | pa.ChunkedArray | np.ndarray,
                  split: SplitConfig,
                  label: pa.Array | pa.ChunkedArray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the split name ("train"/"validation"/"test" or None) and the reason it has none;
    given the `label` column, a row without one is `unlabeled`."""
    event_us = column_us(event_time, missing=0)
    missing = _null_mask(event_time)
    label_us = column_us(label_available_at, missing=_NEVER)
    label_missing = None if label is None else pc.is_null(label).to_numpy(zero_copy_only=False)
    splits, reasons = split_codes(event_us, label_us, split, missing, label_missing)
    return _SPLIT_NAMES[splits], _REASON_NAMES[reasons]


def _null_mask(times: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    if isinstance(times, np.ndarray):
        return np.isnat(times)
    return pc.is_null(times).to_numpy(zero_copy_only=False)


def with_splits(table: pa.Table, event_time: str, label_available_at: str,
                split: SplitConfig, label: str | None = None) -> pa.Table:
    """`table` with each row's `split` and, for rows in none, its `reason` (`label` names the
    label column, whose null rows are `unlabeled`)."""
    splits, reasons = assign_splits(table[event_time], table[label_available_at], split,
                                    table[label] if label else None)
    return table.append_column("split", pa.array(splits, pa.string())).append_column(
        "reason", pa.array(reasons, pa.string()))


def test_period_start(split: SplitConfig) -> datetime:
    """The first moment of the test split: every later event is a test row."""
    return split.validation_until + split.embargo
