"""Score models on the test period of a featurized table: one plain Ray task per parquet file.

Each task reads its file's test rows with a pyarrow filter (row groups outside the period are
skipped by their statistics), loads the models only if rows remain, and predicts them all in one
pass. Plain tasks start on Ray's already running workers; a Ray Data actor pool (the previous
design) started its own process per run, which dominated evaluate's wall time on small tables.
Files are independent, so a large table spreads over the cluster, one file per CPU at a time.
Each task also reduces its rows to an error breakdown (`pipeline.monitoring.breakdown`: loss by
day and by slice, and a bounded sample) for the report, so no per-row work is left to the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from pipeline.artifacts import ArtifactStore
from pipeline.monitoring.breakdown import BASELINE, Breakdown, merge, summarize
from pipeline.packed import PACKED
from pipeline.stage import StageContext
from pipeline.telemetry import current_span


@dataclass(frozen=True)
class Scan:
    """What every scoring task needs: which rows, which columns, which models."""

    store: ArtifactStore
    row_key: str
    event_time: str
    label: str
    start: datetime
    """The test period's first event time; labeled rows from it on are test rows."""
    categorical: tuple[str, ...]
    models: dict[str, str]
    """Prediction column → model folder."""
    task: str
    """regression or binary: which loss the breakdown sums."""
    baseline: float | None = None
    """A constant prediction broken down beside the models (as `BASELINE`), or None."""


def score(ctx: StageContext, features: str, scan: Scan) -> tuple[pa.Table, Breakdown]:
    """(row key, event time, label, one column per model) for every test row under `features`,
    and the breakdown of every model's errors on them."""
    files = sorted(p for p in scan.store.fs.find(features) if p.endswith(".parquet"))
    task = ctx.task(_score_file, "evaluate.score_file")
    scored = ray.get([task.remote(scan, path) for path in files])
    tables = [table for table, _ in scored]
    return (pa.concat_tables(tables) if tables else pa.table({}),
            merge(breakdown for _, breakdown in scored))


def _score_file(scan: Scan, path: str) -> tuple[pa.Table, Breakdown]:
    dataset = pads.dataset(path, filesystem=scan.store.arrow_filesystem(), format="parquet")
    start = pa.scalar(scan.start, dataset.schema.field(scan.event_time).type)
    test_rows = (pc.field(scan.event_time) >= start) & pc.field(scan.label).is_valid()
    table = dataset.to_table(columns=[scan.row_key, scan.event_time, scan.label, PACKED,
                                      *scan.categorical], filter=test_rows)
    current_span().set_attributes({"file": path, "rows": table.num_rows})
    scored = table.select([scan.row_key, scan.event_time, scan.label])
    predictions = _predict(scan, table) if table.num_rows else {c: [] for c in scan.models}
    for column, values in predictions.items():
        scored = scored.append_column(column, pa.array(values, pa.float64()))
    if scan.baseline is not None:
        predictions[BASELINE] = np.full(table.num_rows, scan.baseline)
    return scored, summarize(scan.task, table, scan.label, scan.event_time, scan.categorical,
                             predictions)


def _predict(scan: Scan, table: pa.Table) -> dict:
    from pipeline.model.predictor import load_predictor  # torch: only where rows are scored

    return {column: load_predictor(scan.store.fs, model_dir).predict(table)
            for column, model_dir in scan.models.items()}
