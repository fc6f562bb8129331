"""The packed feature tensor: featurize's output column that the model reads.

One fixed_size_list<float32> column holding a row's numeric inputs (numeric passthrough columns,
then window features; a missing value is NaN, never a null list), so the trainer reads one tensor
column instead of stacking columns per batch. Featurize writes it with `pack`, preprocessing reads it
with `unpack`; the column's name is spelled here only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PACKED = "features"


def pack(columns: list[pa.Array | pa.ChunkedArray], rows: int) -> pa.FixedSizeListArray:
    """The float32 tensor of these columns, side by side (null → NaN)."""
    matrix = np.column_stack([
        pc.fill_null(pc.cast(column, pa.float32()), np.nan).to_numpy() for column in columns
    ]) if columns else np.zeros((rows, 0), np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()), len(columns))


def unpack(table: pa.Table, column: str = PACKED) -> np.ndarray:
    """The packed column as a float64 (rows, n) matrix; nulls are NaN."""
    values = table[column].combine_chunks()
    if not pa.types.is_fixed_size_list(values.type):
        raise TypeError(f"column {column!r} must be fixed_size_list<float>, got {values.type}")
    width = values.type.list_size
    if values.null_count:
        raise ValueError(f"column {column!r} has {values.null_count} null lists; featurize must "
                         "write NaN for a missing feature, never a null row")
    flat = pc.fill_null(values.flatten(), float("nan")).to_numpy(zero_copy_only=False)
    return flat.astype(np.float64, copy=False).reshape(len(values), width)
