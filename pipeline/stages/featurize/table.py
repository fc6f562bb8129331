"""The feature table of some rows: the one code that featurize's chunk tasks and
`pipeline predict` both run, so that a served feature equals the trained one bit for bit."""

from __future__ import annotations

import pyarrow as pa

from pipeline.core.packed import PACKED, pack
from pipeline.core.schema import Roles
from pipeline.features.audit import Kernel
from pipeline.features.row_features import compute_row_features
from pipeline.features.windows import WindowResult, compute_windows
from pipeline.stages.featurize.spec import FeaturizeParams


def sort_rows(rows: pa.Table, roles: Roles) -> pa.Table:
    """Rows in the one order the kernel is handed them: by event time, then row key.

    The kernel's float sums depend on the order of its sources, so this order, not the layout of
    the files they came from, is what makes a feature value reproducible (`pipeline predict`
    recomputes the same values from other files)."""
    return rows.sort_by([(roles.event_time, "ascending"), (roles.row_key, "ascending")])


def features_table(rows: pa.Table, sources: pa.Table, params: FeaturizeParams,
                   kernel: Kernel = compute_windows) -> tuple[pa.Table, WindowResult]:
    """`rows` with their point-in-time features over `sources` (both in `sort_rows` order): the
    passthrough columns, one column per feature and the packed tensor."""
    user = params.user_features()
    result = kernel(sources, rows, params.windows, event_time=params.roles.event_time,
                    row_key=params.roles.row_key, aggregations=user.aggregations)
    columns = {name: rows[name] for name in params.passthrough_columns}
    columns.update(compute_row_features(rows, params.row_features, user.code))
    columns.update(result.columns)
    packed = pack([columns[name] for name in params.feature_columns], rows.num_rows)
    return pa.table({**columns, PACKED: packed}), result
