"""Score models on the test period of a featurized table: one plain Ray task per parquet file.

Each task reads its file's test rows with a pyarrow filter (row groups outside the period are
skipped by their statistics), loads the models only if rows remain, predicts them all in one
pass, and writes its scored rows as one part of the predictions. Plain tasks start on Ray's
already running workers, where a Ray Data actor pool would start its own process per run, which
dominates evaluate's wall time on small tables. Files are independent, so a large table spreads
over the cluster, one file per CPU at a time.

A small test period is scored in the driver instead, file after file by the same function
(`evaluate.score_in_driver_max_rows`): the driver has torch loaded already, while each Ray
worker that scores imports it first, which costs far more than scoring a few thousand rows. The
driver then holds one file's test rows at a time, bounded by that setting, not by the table.

No rows are gathered in the driver: each task (or call) sends back its row count, running
metrics per model (`pipeline.model.metrics.RunningMetrics`), an error breakdown
(`pipeline.monitoring.breakdown`: loss by day and by slice, and a bounded sample) and the drift
counts of its rows (`pipeline.monitoring.drift`: the test rows binned in the same read, so no
second round of tasks reads every file again). Gathering the scored rows would grow the driver's
memory with the test period.
"""

from __future__ import annotations

import operator
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import reduce

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from pipeline.core.packed import PACKED
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import StageContext
from pipeline.model.metrics import RunningMetrics
from pipeline.monitoring.breakdown import BASELINE, Breakdown, merge, summarize
from pipeline.monitoring.drift import TestPeriodCounter, add_counts
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
    error_of: str | None = None
    """The prediction column whose error (prediction - label) the scored rows carry."""
    drift: TestPeriodCounter | None = None
    """Bins the scored rows for drift, in the same read."""


@dataclass
class Scored:
    """What the scoring tasks of one pass send back instead of their rows."""

    rows: int
    metrics: dict[str, RunningMetrics]
    """Prediction column (and `BASELINE`) → its running metrics, over the rows it predicts."""
    unpredicted: dict[str, int]
    """Prediction column → test rows it has no prediction for (a champion scored on its own
    features and joined by row key)."""
    label_sum: float
    prediction_sum: dict[str, float]
    breakdown: Breakdown
    drift_counts: dict
    """Column -> (counts per bin, missing) of the scored rows, when the scan bins them."""

    def mean(self, column: str) -> float:
        return self.prediction_sum[column] / self.rows if self.rows else float("nan")


def score(ctx: StageContext, features: str, scan: Scan, output: str,
          joined: JoinedScores | None = None, in_driver: bool = False) -> Scored:
    """Score every test row under `features` and write (row key, event time, label, one column per
    model, then `joined`'s column, then the candidate's error) as part files under `output`;
    in Ray tasks, one per file, or `in_driver`."""
    calls = [(scan, path, posixpath.join(output, f"part-{index:05d}.parquet"), joined)
             for index, path in enumerate(scan.store.parquet_files(features))]
    parts = _per_file(ctx, _score_file, calls, in_driver)
    parts = parts if in_driver else ray.get(parts)
    return Scored(
        rows=sum(p.rows for p in parts),
        metrics=_per_column([p.metrics for p in parts], RunningMetrics.merge),
        unpredicted=_per_column([p.unpredicted for p in parts], operator.add),
        label_sum=sum(p.label_sum for p in parts),
        prediction_sum=_per_column([p.prediction_sum for p in parts], operator.add),
        breakdown=merge(p.breakdown for p in parts),
        drift_counts=_per_column([p.drift_counts for p in parts], add_counts))


def _per_column(parts: list[dict], combine: Callable) -> dict:
    """The parts' values column by column, combined (every part has the same columns)."""
    return {column: reduce(combine, (part[column] for part in parts))
            for column in parts[0]} if parts else {}


@dataclass
class JoinedScores:
    """A model's predictions on its own features, keyed by row, for `score` to join in."""

    column: str
    row_key: str
    parts: list
    """(row key, prediction) tables scored in the driver, or else ObjectRefs of them: each task
    fetches them itself, so the driver never holds the rows."""
    breakdown: Breakdown


def score_keyed(ctx: StageContext, features: str, scan: Scan,
                in_driver: bool = False) -> JoinedScores:
    """The one model of `scan` on its own features: its predictions by row key, left in the
    object store, and its error breakdown; in Ray tasks, one per file, or `in_driver`."""
    (column,) = scan.models
    keyed = _per_file(ctx, _score_keys, [(scan, path) for path in
                                         scan.store.parquet_files(features)], in_driver, 2)
    breakdowns = [breakdown for _, breakdown in keyed]
    return JoinedScores(column, scan.row_key, [table for table, _ in keyed],
                        merge(breakdowns if in_driver else ray.get(breakdowns)))


def _per_file(ctx: StageContext, work: Callable, calls: list[tuple], in_driver: bool,
              returns: int = 1) -> list:
    """`work(*call)` for each call: in the driver, each in its span, or one Ray task each, whose
    object refs it returns (`returns` of them per task when more than one)."""
    if in_driver:
        traced = ctx.traced(work, "evaluate.score_file")
        return [traced(*call) for call in calls]
    task = ctx.task(work, "evaluate.score_file")
    task = task.options(num_returns=returns) if returns > 1 else task
    return [task.remote(*call) for call in calls]


def _score_file(scan: Scan, path: str, output: str, joined: JoinedScores | None) -> Scored:
    table = _test_rows(scan, path)
    scored = table.select([scan.row_key, scan.event_time, scan.label])
    truth = pc.cast(table[scan.label], pa.float64()).to_numpy(zero_copy_only=False)
    predictions = _predict(scan, table)
    for column, values in predictions.items():
        scored = scored.append_column(column, pa.array(values, pa.float64()))
    metrics = {column: _metrics(scan.task, truth, values) for column, values in predictions.items()}
    unpredicted = {column: 0 for column in predictions}
    if joined is not None:
        values = _join(joined, table[scan.row_key])
        scored = scored.append_column(joined.column, values)
        unpredicted[joined.column] = values.null_count
        present = values.is_valid().to_numpy(zero_copy_only=False)
        metrics[joined.column] = _metrics(scan.task, truth[present],
                                          values.drop_null().to_numpy(zero_copy_only=False))
    broken_down = dict(predictions)
    if scan.baseline is not None:
        broken_down[BASELINE] = np.full(table.num_rows, scan.baseline)
        metrics[BASELINE] = _metrics(scan.task, truth, broken_down[BASELINE])
    if scan.error_of is not None:
        scored = scored.append_column("error", pa.array(predictions[scan.error_of] - truth,
                                                        pa.float64()))
    with scan.store.fs.open(output, "wb") as handle:
        pq.write_table(scored, handle)
    return Scored(rows=table.num_rows, metrics=metrics, unpredicted=unpredicted,
                  label_sum=float(truth.sum()),
                  prediction_sum={c: float(v.sum()) for c, v in broken_down.items()},
                  breakdown=summarize(scan.task, table, scan.label, scan.event_time,
                                      scan.categorical, broken_down),
                  drift_counts=scan.drift.count(table) if scan.drift else {})


def _score_keys(scan: Scan, path: str) -> tuple[pa.Table, Breakdown]:
    table = _test_rows(scan, path)
    predictions = _predict(scan, table)
    (column, values), = predictions.items()
    keyed = pa.table({scan.row_key: table[scan.row_key], column: pa.array(values, pa.float64())})
    return keyed, summarize(scan.task, table, scan.label, scan.event_time, scan.categorical,
                            predictions)


def _test_rows(scan: Scan, path: str) -> pa.Table:
    dataset = pads.dataset(path, filesystem=scan.store.arrow_filesystem(), format="parquet")
    start = pa.scalar(scan.start, dataset.schema.field(scan.event_time).type)
    test_rows = (pc.field(scan.event_time) >= start) & pc.field(scan.label).is_valid()
    table = dataset.to_table(columns=[scan.row_key, scan.event_time, scan.label, PACKED,
                                      *scan.categorical], filter=test_rows)
    current_span().set_attributes({"file": path, "rows": table.num_rows})
    return table


def _join(joined: JoinedScores, keys: pa.ChunkedArray) -> pa.Array:
    """`joined`'s prediction for each key, in the keys' order; null where it has none."""
    if not joined.parts:
        return pa.nulls(len(keys), pa.float64())
    in_driver = isinstance(joined.parts[0], pa.Table)
    scores = pa.concat_tables(joined.parts if in_driver else ray.get(joined.parts))
    where = pc.index_in(keys, value_set=scores[joined.row_key])
    return scores[joined.column].combine_chunks().take(where)


def _metrics(task: str, truth: np.ndarray, predicted: np.ndarray) -> RunningMetrics:
    running = RunningMetrics(task)
    running.add(truth, predicted)
    return running


def _predict(scan: Scan, table: pa.Table) -> dict[str, np.ndarray]:
    if not table.num_rows:
        return {column: np.zeros(0) for column in scan.models}
    from pipeline.model.predictor import load_predictor  # torch: only where rows are scored

    return {column: np.asarray(load_predictor(scan.store.fs, model_dir).predict(table),
                               np.float64)
            for column, model_dir in scan.models.items()}
