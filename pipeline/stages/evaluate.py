"""Stage 5, evaluate + register: the model on a later period, against a baseline, then the registry.

Stops: shipping a worse model, and models nobody can trace. The test period is strictly after the
validation period (plus the embargo); the baseline predicts the training split's mean label (or its
positive rate), the model must beat it by `evaluate.min_improvement` to be promoted, and every
evaluated model is registered with its metrics, the decision and the reason, and its full lineage.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
from ray.data.expressions import col

from pipeline.model.metrics import compute_metrics, primary_metric
from pipeline.model.predictor import load_predictor
from pipeline.model.splits import assign_splits
from pipeline.registry import lineage, register
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.telemetry import worker_span


class _Predict:
    """A Ray Data actor: loads the model once, predicts batch after batch."""

    def __init__(self, store, model_dir: str, carrier: dict):
        self.predictor = load_predictor(store.fs, model_dir)
        self.carrier = carrier

    def __call__(self, batch: pa.Table) -> pa.Table:
        with worker_span(self.carrier, "evaluate.predict_batch", {"rows": batch.num_rows}):
            prediction = self.predictor.predict(batch)
        return batch.append_column("prediction", pa.array(prediction, pa.float64()))


def _with_split(batch: pa.Table, dataset, split) -> pa.Table:
    splits, _ = assign_splits(batch[dataset.event_time], batch[dataset.label_available_at], split)
    return batch.append_column("split", pa.array(splits, pa.string()))


def run(ctx: StageContext) -> StageResult:
    config, store = ctx.config, ctx.store
    dataset, task = config.dataset, config.train.task
    def rows(columns: list[str] | None = None) -> ray.data.Dataset:
        """The featurize output with each row's split; both passes stream, nothing is held."""
        read = ray.data.read_parquet(ctx.input_path("featurize", "data"), columns=columns,
                                     filesystem=store.arrow_filesystem())
        return read.map_batches(_with_split, fn_args=(dataset, config.split),
                                batch_format="pyarrow")

    times_and_label = [dataset.event_time, dataset.label_available_at, dataset.label]
    label_table = pa.concat_tables(ray.get(
        rows(times_and_label).select_columns([dataset.label, "split"]).to_arrow_refs()))
    train_labels = label_table.filter(pc.equal(label_table["split"], "train"))[dataset.label]
    baseline_value = float(pc.mean(train_labels.cast(pa.float64())).as_py())

    model_dir = ctx.input_path("train", "model")
    scored = (rows().filter(expr=col("split") == "test")
              .map_batches(_Predict, fn_constructor_args=(store, model_dir, ctx.telemetry.carrier()),
                           batch_format="pyarrow", concurrency=1, batch_size=8192)
              .select_columns([dataset.row_key, dataset.event_time, dataset.label, "prediction"]))
    test = pa.concat_tables(ray.get(scored.to_arrow_refs()) or [pa.table({})])
    rows_in = test.num_rows
    if not rows_in:
        raise ValueError("the test period has no rows: check split.validation_until and dataset.end")

    truth = test[dataset.label].to_numpy().astype("float64")
    predicted = test["prediction"].to_numpy()
    metrics = compute_metrics(task, truth, predicted)
    baseline = compute_metrics(task, truth, np.full_like(truth, baseline_value))
    name, lower_is_better = primary_metric(task)
    improvement = (baseline[name] - metrics[name]) / abs(baseline[name]) if lower_is_better \
        else (metrics[name] - baseline[name]) / abs(baseline[name])
    promoted = improvement >= config.evaluate.min_improvement
    reason = (f"{name} {metrics[name]:.4f} vs baseline {baseline[name]:.4f}: "
              f"{improvement:+.1%} (needs {config.evaluate.min_improvement:+.1%})")

    errors = test.append_column("error", pa.array(predicted - truth, pa.float64()))
    with store.fs.open(posixpath.join(ctx.output, "predictions.parquet"), "wb") as handle:
        pq.write_table(errors, handle)
    registration = register(store, config.evaluate.model_name, model_dir, {
        "evaluate_cache_key": ctx.cache_key,
        "promoted": promoted,
        "reason": ("promoted: " if promoted else "not promoted: ") + reason,
        "metrics": metrics,
        "baseline": {"kind": "training-split mean label", "value": baseline_value, **baseline},
        "test_rows": rows_in,
        "lineage": {**lineage(store, ctx.inputs["train"]),
                    **lineage(store, ctx.inputs["featurize"])},
        "config_digest": config.digest(),
        "run_id": ctx.run_id,
    })
    return StageResult(
        rows_in=rows_in, rows_out=rows_in,
        schema={f.name: str(f.type) for f in errors.schema},
        statistics={"prediction_mean": float(np.mean(predicted)), "label_mean": float(truth.mean())},
        details={"metrics": metrics, "baseline": baseline, "improvement": improvement,
                 "registration": {k: registration[k] for k in
                                  ("model", "version", "uri", "promoted", "reason", "metrics")}},
    )


STAGE = Stage(
    name="evaluate",
    inputs=("featurize", "train"),
    config_sections=("dataset", "split", "train", "evaluate"),
    run=run,
    code_modules=("pipeline.stages.evaluate", "pipeline.registry"),
)
