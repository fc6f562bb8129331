"""Stage 5, evaluate + register: the model on a later period, against a baseline, then the registry.

Stops: shipping a worse model, and models nobody can trace. The test period is the one train
published (strictly after validation plus the embargo); the baseline predicts the training split's
mean label (or its positive rate), which train also published; the model must beat it by
`evaluate.min_improvement` to be promoted, and every evaluated model is registered with its metrics,
the decision and the reason, and its full lineage.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data
from pydantic import BaseModel

from pipeline.config import DriftConfig, PipelineConfig
from pipeline.model.metrics import compute_metrics, primary_metric
from pipeline.monitoring.drift import DriftReport, measure_drift
from pipeline.registry import lineage, register
from pipeline.schema import Roles
from pipeline.stage import (
    Facts,
    Files,
    Folder,
    Params,
    RowQuestion,
    Stage,
    StageContext,
    StageResult,
)
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.train import STAGE as TRAIN
from pipeline.stages.train import TrainFacts
from pipeline.telemetry import current_span
from pipeline.trace_format import fmt


class EvaluateParams(Params):
    roles: Roles
    task: str
    model_name: str
    min_improvement: float
    drift: DriftConfig

    @classmethod
    def from_config(cls, config: PipelineConfig) -> EvaluateParams:
        return cls(roles=Roles.of(config.dataset), task=config.train.task,
                   model_name=config.evaluate.model_name,
                   min_improvement=config.evaluate.min_improvement, drift=config.evaluate.drift)


class EvaluateFiles(Files):
    predictions = Folder("predictions.parquet")
    """Every test row: row key, event time, label, prediction, error."""


class Registration(BaseModel):
    model: str
    version: str
    uri: str
    promoted: bool
    reason: str
    metrics: dict[str, float]


class EvaluateFacts(Facts):
    metrics: dict[str, float]
    baseline: dict[str, float]
    improvement: float
    registration: Registration
    drift: DriftReport


class _Predict:
    """A Ray Data actor: loads the model once, predicts batch after batch."""

    def __init__(self, store, model_dir: str):
        from pipeline.model.predictor import load_predictor  # torch: only where a model runs

        self.predictor = load_predictor(store.fs, model_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        current_span().set_attributes({"rows": batch.num_rows})
        prediction = self.predictor.predict(batch)
        return batch.append_column("prediction", pa.array(prediction, pa.float64()))


def _test_rows(batch: pa.Table, event_time: str, label: str, start: datetime) -> pa.Table:
    """Train's test split: labeled rows from the test period on (unlabeled rows are history)."""
    in_period = pc.greater_equal(batch[event_time], pa.scalar(start, batch[event_time].type))
    return batch.filter(pc.and_(in_period, pc.is_valid(batch[label])))


def run(ctx: StageContext[EvaluateParams, EvaluateFiles]) -> StageResult[EvaluateFacts]:
    params, store, roles = ctx.params, ctx.store, ctx.params.roles
    trained = ctx.input(TRAIN)
    train_facts: TrainFacts = trained.facts
    test_start = datetime.fromisoformat(train_facts.test_period_start)
    scored = (ray.data.read_parquet(ctx.input(FEATURIZE).files.data,
                                    filesystem=store.arrow_filesystem())
              .map_batches(_test_rows, fn_args=(roles.event_time, roles.label, test_start),
                           batch_format="pyarrow")
              .map_batches(ctx.traced(_Predict, "evaluate.predict_batch"),
                           fn_constructor_args=(store, trained.files.model),
                           batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1),
                           batch_size=8192)
              .select_columns([roles.row_key, roles.event_time, roles.label, "prediction"]))
    test = pa.concat_tables(ray.get(scored.to_arrow_refs()) or [pa.table({})])
    rows_in = test.num_rows
    if not rows_in:
        raise ValueError("the test period has no rows: check split.validation_until and dataset.end")
    if rows_in != train_facts.splits["test"]:
        raise ValueError(f"{rows_in} rows from {test_start.isoformat()} on, but train put "
                         f"{train_facts.splits['test']} rows in the test split")

    truth = test[roles.label].to_numpy().astype("float64")
    predicted = test["prediction"].to_numpy()
    metrics = compute_metrics(params.task, truth, predicted)
    baseline_value = train_facts.train_label_mean
    baseline = compute_metrics(params.task, truth, np.full_like(truth, baseline_value))
    name, lower_is_better = primary_metric(params.task)
    improvement = (baseline[name] - metrics[name]) / abs(baseline[name]) if lower_is_better \
        else (metrics[name] - baseline[name]) / abs(baseline[name])
    promoted = improvement >= params.min_improvement
    reason = (f"{name} {metrics[name]:.4f} vs baseline {baseline[name]:.4f}: "
              f"{improvement:+.1%} (needs {params.min_improvement:+.1%})")
    drift = measure_drift(ctx, ctx.input(FEATURIZE), trained, roles, params.model_name, params.drift)
    promoted, reason = promoted and not drift.blocks_promotion, f"{reason}; {drift.summary}"

    errors = test.append_column("error", pa.array(predicted - truth, pa.float64()))
    with store.fs.open(ctx.output.predictions, "wb") as handle:
        pq.write_table(errors, handle)
    entry = register(store, params.model_name, trained.files.model, {
        "evaluate_cache_key": ctx.cache_key,
        "promoted": promoted,
        "reason": ("promoted: " if promoted else "not promoted: ") + reason,
        "metrics": metrics,
        "baseline": {"kind": "training-split mean label", "value": baseline_value, **baseline},
        "test_rows": rows_in,
        "drift": drift.model_dump(),
        "lineage": {**lineage(store, trained.artifact),
                    **lineage(store, ctx.input(FEATURIZE).artifact)},
        "run_id": ctx.run_id,
    })
    return StageResult(
        rows_in=rows_in, rows_out=rows_in,
        schema={f.name: str(f.type) for f in errors.schema},
        statistics={"prediction_mean": float(np.mean(predicted)), "label_mean": float(truth.mean())},
        facts=EvaluateFacts(metrics=metrics, baseline=baseline, improvement=improvement, drift=drift,
                            registration=Registration(**{name: entry[name] for name
                                                         in Registration.model_fields})),
    )


def explain(question: RowQuestion) -> list[str]:
    """The registered model's prediction and error for the row: as scored, for a test row."""
    facts: EvaluateFacts = question.output.facts
    model = facts.registration
    decision = "promoted" if model.promoted else "not promoted"
    label_column = question.params.roles.label
    scored = pq.read_table(question.output.files.predictions,
                           filesystem=question.store.arrow_filesystem(),
                           filters=question.where()).to_pylist()
    if scored:
        row = scored[0]
        return [f"model {model.model} {model.version} ({decision}) scored it in the test period: "
                f"predicts {fmt(row['prediction'])}; label {fmt(row[label_column])}; "
                f"error {row['error']:+.4g}"]
    features = pads.dataset(question.input(FEATURIZE).files.data,
                            filesystem=question.store.arrow_filesystem(),
                            format="parquet").to_table(filter=question.where())
    if not features.num_rows:
        return []
    from pipeline.model.predictor import load_predictor

    predicted = float(load_predictor(question.store.fs, question.input(TRAIN).files.model)
                      .predict(features)[0])
    label = features[label_column][0].as_py()
    error = "no label, no error" if label is None else f"error {predicted - label:+.4g}"
    return [f"model {model.model} {model.version} ({decision}) predicts {fmt(predicted)}; label "
            f"{fmt(label)}; {error} (not a test row: not in its metrics)"]


STAGE = Stage(
    name="evaluate",
    params=EvaluateParams,
    files=EvaluateFiles,
    facts=EvaluateFacts,
    run=run,
    explain=explain,
    inputs=(FEATURIZE, TRAIN),
)
