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

import os
import time
from collections import Counter

from pipeline.core.durations import parse_duration
from pipeline.core.formatting import fmt
from pipeline.engine.stage import RowQuestion, Stage, StageContext, StageResult
from pipeline.model.splits import SPLITS, test_period_start
from pipeline.monitoring.drift import Columns, Histogram, training_histograms
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.featurize import FeaturizeFacts
from pipeline.stages.train.data import encode_split, fit_preprocessing, split_rows, write_splits
from pipeline.stages.train.fit import fit, local_mode_checkpoints, loop_config, worker_threads
from pipeline.stages.train.spec import TrainFacts, TrainFiles, TrainParams


def run(ctx: StageContext[TrainParams, TrainFiles]) -> StageResult[TrainFacts]:
    # torch is imported here, not at the top: the Ray workers that run this stage's task
    # functions (split, fit, encode; train.data) never need it, and importing it costs seconds
    # per process.
    with ctx.telemetry.span("train.import_torch"):
        import torch

        from pipeline.model.checkpoints import CHECKPOINT_FILE, latest_kept_checkpoint
        from pipeline.model.loop import train_loop_per_worker
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
    local_mode = params.train.num_workers == 0
    with ctx.telemetry.span("train.fit", {"train.workers": params.train.num_workers}), \
            local_mode_checkpoints(store, ctx.cache_key, local_mode) as checkpoint_dir, \
            worker_threads(torch, params.train, local_mode):
        loop = loop_config(params.train, preprocessor, checkpoint_dir)
        fit_started = time.time()
        # the loop opens its own spans per epoch, each exported as it closes
        result = fit(ctx.traced(train_loop_per_worker, span=None), loop, train, validation,
                     params.train, store, ctx.cache_key)
        fit_seconds = time.time() - fit_started
        # The latest checkpoint holds the whole training state, the best epoch's weights included
        # (in local mode a resumed run that had nothing left to train reported none itself).
        final = result.checkpoint or latest_kept_checkpoint(checkpoint_dir)
        with final.as_directory() as directory:
            saved = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu",
                               weights_only=True)
    state, best = saved["state"], saved["best_network"]
    checksum = weights_checksum(best)
    save_model(store.fs, ctx.files.model, loop.network, best, preprocessor,
               {"best_epoch": state["best_epoch"], "row_key": params.roles.row_key,
                "event_time": params.roles.event_time, "weights_sha256": checksum},
               history=state["history"])

    excluded = {k: v for k, v in counts.items() if k not in SPLITS}
    return StageResult(
        rows_in=sum(counts.values()),
        rows_out=sum(counts[name] for name in SPLITS),
        rows_quarantined=sum(excluded.values()),
        schema={params.roles.row_key: str(key_type), "split": "string", "reason": "string"},
        statistics={"label_mean": preprocessor.label_mean, "label_std": preprocessor.label_std,
                    "vocabulary_sizes": dict(zip(preprocessor.categorical_columns,
                                                 preprocessor.cardinalities))},
        facts=_facts(state, counts, params, fit_started, fit_seconds, label_mean, checksum,
                     result.path, histograms),
    )


def _facts(state: dict, counts: Counter, params: TrainParams, fit_started: float,
           fit_seconds: float, label_mean: float, checksum: str, train_run: str,
           histograms: dict[str, Histogram]) -> TrainFacts:
    """The manifest's facts about the training run, from the final checkpoint's state."""
    history = state["history"]
    best = next(h for h in history if h["epoch"] == state["best_epoch"])
    train_seconds = sum(h["train_seconds"] for h in history)
    startup = state["first_batch_at"] - fit_started if state["first_batch_at"] else None
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
        fit_seconds=round(fit_seconds, 3),
        weights_sha256=checksum,
        train_run=train_run,
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
