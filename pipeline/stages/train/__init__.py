"""Stage 4, train: point-in-time features → a model, with Ray Train's TorchTrainer.

Stops: random splits across time (splits.py splits by event and label-available time, and writes the
split or the exclusion reason of every row to `splits/`), scalers fit on test data (preprocessing is
fit on the training split alone and saved with the model), lost progress when a worker dies (a
checkpoint every epoch under `<artifact root>/train_runs/<cache key>`, FailureConfig.max_failures;
a rerun of the same key resumes there), and unreproducible weights (seeds per rank and epoch,
order-preserving data, deterministic kernels).

`train.num_workers: 0` is Ray Train's local mode: the same loop runs in the driver process, with no
controller or worker actors. Those actors (the controller, a worker per rank, and Ray Train's and
Ray Data's helper actors: several new processes even for one worker) are slow to start, a large
share of a run on one small machine. Local mode keeps the per-epoch checkpoints (under
`train_runs/<cache key>/local-mode` with a local artifact root) and resumes from them after a
kill. It gives up what the actors give: no restart inside the run after a
failure (the rerun resumes), no GPU placement by Ray, no isolation from the driver, one process.
The default for one machine (configs/local.yaml, smoke); `num_workers >= 1` is the cluster path.

Data path: one Ray task per featurize part file reads it and decides each row's split; rounds of
tasks over those tables write `splits/`, fit the preprocessing, count the drift histograms and
encode each split once (standardised `features`, categorical codes, label), the training rows in a
seeded shuffled order. Only the encoded splits become Ray Datasets: the trainer streams each worker
its shard with `iter_torch_batches`, so the loop never touches a raw column.

Output: `model/` (weights.pt, model.json, preprocessing.json, history.json; see predictor.py),
`splits/` (row key, split, reason).

Fault-injection hook for tests: with RAYPIPE_TEST_KILL_WORKER_AFTER_EPOCH=N in the driver's
environment, the highest-rank worker SIGKILLs itself once, after epoch N's checkpoint (a warning is
logged). It is an environment variable on purpose: no config file can switch it on.
"""

from __future__ import annotations

from collections import Counter

from pipeline.core.durations import parse_duration
from pipeline.core.formatting import fmt
from pipeline.engine.stage import RowQuestion, Stage, StageContext, StageResult
from pipeline.model.splits import SPLITS, test_period_start
from pipeline.monitoring.drift import Columns, Histogram, training_histograms
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.featurize import FeaturizeFacts
from pipeline.stages.train.data import encode_split, fit_preprocessing, split_rows, write_splits
from pipeline.stages.train.fit import Fitted, fit_model
from pipeline.stages.train.spec import TrainFacts, TrainFiles, TrainParams


def run(ctx: StageContext[TrainParams, TrainFiles]) -> StageResult[TrainFacts]:
    # torch is imported here, not at the top: the Ray workers that run this stage's task
    # functions (split, fit, encode; train.data) never need it, and importing it costs seconds
    # per process.
    with ctx.telemetry.span("train.import_torch"):
        import torch  # noqa: F401  (imported here, in its span; the fit uses it)

        import pipeline.model.loop  # noqa: F401
        from pipeline.model.network import weights_checksum
        from pipeline.model.predictor import save_model

    params, store = ctx.params, ctx.store
    featurize = ctx.input(FEATURIZE)
    facts: FeaturizeFacts = featurize.facts
    with ctx.telemetry.span("train.splits") as span:
        parts = split_rows(ctx, featurize.files.data, facts)
        counts, key_type = write_splits(ctx, parts, ctx.files.splits)
        span.set_attributes({f"rows.{name}": n for name, n in counts.items()})
    if sum(counts.values()) != featurize.rows_out:
        raise ValueError(f"read {sum(counts.values())} rows, featurize published "
                         f"{featurize.rows_out}")
    with ctx.telemetry.span("train.preprocessing"):
        preprocessor, label_mean = fit_preprocessing(ctx, parts, facts)
    with ctx.telemetry.span("train.histograms"):
        histograms = training_histograms(ctx, parts, Columns.of(facts, params.roles),
                                         parse_duration(facts.longest_window or 0))
    with ctx.telemetry.span("train.encode"):
        train = encode_split(ctx, parts, "train", preprocessor,
                             shuffle=(params.train.seed, counts["train"],
                                      params.train.num_workers))
        validation = encode_split(ctx, parts, "validation", preprocessor)
    del parts  # the encoded splits are all that training reads from here on
    fitted = fit_model(ctx, train, validation, preprocessor)
    checksum = weights_checksum(fitted.best)
    save_model(store.fs, ctx.files.model, fitted.network, fitted.best, preprocessor,
               {"best_epoch": fitted.state["best_epoch"], "row_key": params.roles.row_key,
                "event_time": params.roles.event_time, "weights_sha256": checksum},
               history=fitted.state["history"])

    excluded = {k: v for k, v in counts.items() if k not in SPLITS}
    return StageResult(
        rows_in=sum(counts.values()),
        rows_out=sum(counts[name] for name in SPLITS),
        rows_quarantined=sum(excluded.values()),
        schema={params.roles.row_key: str(key_type), "split": "string", "reason": "string"},
        statistics={"label_mean": preprocessor.label_mean, "label_std": preprocessor.label_std,
                    "vocabulary_sizes": dict(zip(preprocessor.categorical_columns,
                                                 preprocessor.cardinalities))},
        facts=_facts(fitted, counts, params, label_mean, checksum, histograms),
    )


def _facts(fitted: Fitted, counts: Counter, params: TrainParams, label_mean: float,
           checksum: str, histograms: dict[str, Histogram]) -> TrainFacts:
    """The manifest's facts about the training run, from the final checkpoint's state."""
    state = fitted.state
    history = state["history"]
    best = next(h for h in history if h["epoch"] == state["best_epoch"])
    train_seconds = sum(h["train_seconds"] for h in history)
    startup = state["first_batch_at"] - fitted.started if state["first_batch_at"] else None
    return TrainFacts(
        metrics=best["validation"],
        best_epoch=state["best_epoch"],
        epochs_run=state["epochs_done"],
        stopped_early=state["stopped"] and state["epochs_done"] < params.train.epochs,
        restarts=state["restarts"],
        samples_per_second=(sum(h["train_rows"] for h in history) / train_seconds
                            if train_seconds else 0.0),
        epoch_samples_per_second=[round(h["samples_per_second"], 1) for h in history],
        splits={name: counts[name] for name in SPLITS},
        excluded={k: v for k, v in counts.items() if k not in SPLITS},
        test_period_start=test_period_start(params.split).isoformat(),
        train_label_mean=label_mean,
        train_rows_consumed=history[-1]["train_rows"],
        worker_count=params.train.num_workers,
        device=history[-1]["device"],
        torch_threads=history[-1].get("torch_threads"),
        # None when this fit resumed a run an earlier process had started
        startup_seconds=round(startup, 3) if startup and startup > 0 else None,
        fit_seconds=round(fitted.seconds, 3),
        weights_sha256=checksum,
        train_run=fitted.train_run,
        feature_histograms=histograms,
    )


def explain(question: RowQuestion) -> list[str]:
    """The split the row fell into and the rule that put it there."""
    params: TrainParams = question.params
    split = params.split
    splits = question.rows(question.output.files.splits)
    why = {
        "train": f"event and label both before train_until {fmt(split.train_until)}",
        "validation": f"event in [train_until + embargo {fmt(split.embargo)}, validation_until "
                      f"{fmt(split.validation_until)}) and label available before its end",
        "test": f"event at or after validation_until + embargo "
                f"({fmt(test_period_start(split))})",
    }
    unlabeled = "excluded: unlabeled: history only, it fed other rows' windows but has no label"
    lines = []
    for row in splits.to_pylist():
        consumed = "training consumed it" if row["split"] == "train" else "training did not use it"
        reason = why.get(row["split"]) or (unlabeled if row["reason"] == "unlabeled"
                                           else f"excluded: {row['reason']}")
        lines.append(f"split: {row['split'] or 'none'} ({reason}); {consumed}")
    return lines


def worker_group_resources(params: TrainParams) -> dict[str, float]:
    """What Ray Train's worker group needs at once: it never starts on less."""
    train = params.train
    per_worker = {"CPU": 1.0, **({"GPU": 1.0} if train.use_gpu else {}),
                  **train.resources_per_worker}
    return {name: amount * train.num_workers for name, amount in per_worker.items()
            if train.num_workers}


STAGE = Stage(
    name="train",
    params=TrainParams,
    files=TrainFiles,
    facts=TrainFacts,
    run=run,
    explain=explain,
    inputs=(FEATURIZE,),
    resources=worker_group_resources,
    # Ray Data, the loop's torch, and torch._dynamo, which building the first optimizer imports
    driver_imports=("ray.data", "pipeline.model.loop", "torch._dynamo"),
)
