"""Row features of a team's own code (`pipeline.core.user_code`): computed for a batch of rows,
their results checked (one value per row, numbers, no infinities), and one line naming the
feature when a function raises or breaks that contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.user_code import Rows, UserCode, call


@dataclass(frozen=True)
class RowFeatureSpec:
    """One row feature, resolved: its name (a function of the feature module) and inputs."""

    name: str
    inputs: tuple[str, ...]


def row_feature_specs(code: UserCode | None, names: Sequence[str]) -> tuple[RowFeatureSpec, ...]:
    if not names:
        return ()
    return tuple(RowFeatureSpec(name, code.row_feature(name)[1].inputs) for name in names)


def compute_row_features(rows: pa.Table, specs: Sequence[RowFeatureSpec],
                         code: UserCode | None) -> dict[str, pa.Array]:
    """Every row feature of every row of `rows`: float64, null where the function gave NaN."""
    columns = {}
    for spec in specs:
        function, _ = code.row_feature(spec.name)
        given = Rows(spec.name, {name: _numpy(rows[name]) for name in spec.inputs})
        columns[spec.name] = call(f"row feature {spec.name}", function, given, rows.num_rows)
    return columns


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A column as `Rows` hands it over: float64, datetime64[us] or objects."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        return column.cast(pa.timestamp("us")).to_numpy()
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy()
    return np.array([*column.to_pylist(), None], dtype=object)[:-1]
