"""Stage 4, train: point-in-time features → a model, with Ray Train's TorchTrainer.

Stops: random splits across time (splits.py splits by event and label-available time, and writes the
split or the exclusion reason of every row to `splits/`), scalers fit on test data (preprocessing is
fit on the training split alone and saved with the model), lost progress when a worker dies (a
checkpoint every epoch under `<artifact root>/train_runs/<cache key>`, FailureConfig.max_failures;
a rerun of the same key resumes there), and unreproducible weights (seeds per rank and epoch,
order-preserving data, deterministic kernels).

Data path: Ray Data reads the featurize parquet; per split a map_batches keeps that split's rows and
encodes them once (standardised `features`, categorical codes, label), the training rows in a seeded
shuffled order, and materialises them; the trainer streams each worker its shard with
`iter_torch_batches`, so the loop never touches a raw column.

Output: `model/` (weights.pt, model.json, preprocessing.json, history.json; see predictor.py),
`splits/` (row key, split, reason).

Fault-injection hook for tests: with RAYPIPE_TEST_KILL_WORKER_AFTER_EPOCH=N in the driver's
environment, the highest-rank worker SIGKILLs itself once, after epoch N's checkpoint (a warning is
logged). It is an environment variable on purpose: no config file can switch it on.
"""

from __future__ import annotations

import logging
import os
import pickle
import posixpath
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from pipeline.artifacts import ArtifactStore
from pipeline.config import PipelineConfig, TrainConfig
from pipeline.model.preprocessing import FEATURES, FitStatistics, Preprocessor
from pipeline.model.splits import SPLITS, assign_splits, split_table
from pipeline.stage import Stage, StageContext, StageResult

logger = logging.getLogger(__name__)


def run(ctx: StageContext) -> StageResult:
    # torch is imported here, not at the top: the Ray Data workers that run this module's batch
    # functions (split, fit, encode) never need it, and importing it costs seconds per process.
    import torch

    from pipeline.model.loop import CHECKPOINT_FILE
    from pipeline.model.network import weights_checksum
    from pipeline.model.predictor import save_model

    config, store = ctx.config, ctx.store
    featurize = ctx.inputs["featurize"].manifest
    feature_columns = list(featurize["details"]["feature_columns"])
    categorical = list(featurize["details"]["categorical_columns"])
    rows = read_features(store, ctx.input_path("featurize", "data"), config, categorical)

    with ctx.telemetry.span("train.splits") as span:
        counts = write_splits(store, rows, posixpath.join(ctx.output, "splits"), config)
        span.set_attributes({f"rows.{name}": n for name, n in counts.items()})
    expected = featurize.get("rows", {}).get("out")
    if expected is not None and sum(counts.values()) != expected:
        raise ValueError(f"read {sum(counts.values())} rows, the featurize manifest says {expected}")
    with ctx.telemetry.span("train.preprocessing"):
        preprocessor = fit_preprocessing(rows, config, feature_columns, categorical)
    with ctx.telemetry.span("train.encode"):
        train = encode_split(rows, "train", preprocessor, config, shuffle_seed=config.train.seed)
        validation = encode_split(rows, "validation", preprocessor, config)
    with ctx.telemetry.span("train.fit", {"train.workers": config.train.num_workers}):
        loop = loop_config(config.train, preprocessor, ctx.telemetry.carrier())
        fit_started = time.time()
        result = fit(loop, train, validation, config.train, store, ctx.cache_key)
        fit_seconds = time.time() - fit_started

    # The latest checkpoint holds the whole training state, the best epoch's weights included.
    with result.checkpoint.as_directory() as directory:
        saved = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu",
                           weights_only=True)
    state, best = saved["state"], saved["best_network"]
    checksum = weights_checksum(best)
    save_model(store.fs, posixpath.join(ctx.output, "model"), loop.network, best, preprocessor,
               {"best_epoch": state["best_epoch"], "row_key": config.dataset.row_key,
                "event_time": config.dataset.event_time, "weights_sha256": checksum},
               history=state["history"])

    excluded = {k: v for k, v in counts.items() if k not in SPLITS}
    details = _details(state, counts, config, fit_started, fit_seconds)
    return StageResult(
        rows_in=sum(counts.values()),
        rows_out=sum(counts[name] for name in SPLITS),
        rows_quarantined=sum(excluded.values()),
        schema={config.dataset.row_key: str(rows.schema().base_schema.field(
            config.dataset.row_key).type), "split": "string", "reason": "string"},
        statistics={"label_mean": preprocessor.label_mean, "label_std": preprocessor.label_std,
                    "vocabulary_sizes": dict(zip(preprocessor.categorical_columns,
                                                 preprocessor.cardinalities))},
        details={**details, "weights_sha256": checksum, "train_run": result.path},
    )


def _details(state: dict, counts: Counter, config: PipelineConfig, fit_started: float,
             fit_seconds: float) -> dict:
    """The manifest's facts about the training run, from the final checkpoint's state."""
    history = state["history"]
    best = next(h for h in history if h["epoch"] == state["best_epoch"])
    train_seconds = sum(h["train_seconds"] for h in history)
    startup = state["first_batch_at"] - fit_started if state["first_batch_at"] else None
    return {
        "metrics": best["validation"],
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epochs_done"],
        "stopped_early": state["stopped"] and state["epochs_done"] < config.train.epochs,
        "restarts": state["restarts"],
        "samples_per_second": (sum(h["train_rows"] for h in history) / train_seconds
                               if train_seconds else 0.0),
        "train_rows": counts["train"],
        "train_rows_consumed": history[-1]["train_rows"],
        "validation_rows": counts["validation"],
        "test_rows": counts["test"],
        "splits": {name: counts[name] for name in SPLITS},
        "excluded": {k: v for k, v in counts.items() if k not in SPLITS},
        "worker_count": config.train.num_workers,
        "device": history[-1]["device"],
        # None when this fit resumed a run an earlier process had started
        "startup_seconds": round(startup, 3) if startup and startup > 0 else None,
        "fit_seconds": round(fit_seconds, 3),
    }


# -- data ------------------------------------------------------------------------------------
def read_features(store: ArtifactStore, path: str, config: PipelineConfig,
                  categorical: list[str]) -> ray.data.Dataset:
    """The featurize output, only the columns training reads, in a deterministic order."""
    dataset = config.dataset
    columns = list(dict.fromkeys([dataset.row_key, dataset.event_time,
                                  dataset.label_available_at, dataset.label, FEATURES,
                                  *categorical]))
    rows = ray.data.read_parquet(path, filesystem=store.arrow_filesystem(), columns=columns)
    rows.context.execution_options.preserve_order = True
    return rows


def _rows_in(batch: pa.Table, name: str, config: PipelineConfig) -> pa.Table:
    """The rows of one split (the same assign_splits that wrote splits/)."""
    splits, _ = assign_splits(batch[config.dataset.event_time],
                              batch[config.dataset.label_available_at], config.split)
    return batch.filter(pa.array(splits == name))


def write_splits(store: ArtifactStore, rows: ray.data.Dataset, directory: str,
                 config: PipelineConfig) -> Counter:
    """Write (row key, split, reason) for every row; return counts per split and per reason."""
    dataset = config.dataset
    tables = rows.map_batches(
        split_table, batch_format="pyarrow",
        fn_kwargs={"row_key": dataset.row_key, "event_time": dataset.event_time,
                   "label_available_at": dataset.label_available_at, "split": config.split})
    store.fs.makedirs(directory, exist_ok=True)
    counts: Counter = Counter({name: 0 for name in SPLITS})
    for index, ref in enumerate(tables.to_arrow_refs()):  # numbered parts: same bytes on a rerun
        table = ray.get(ref)
        if not table.num_rows:
            continue
        with store.fs.open(posixpath.join(directory, f"part-{index:05d}.parquet"), "wb") as handle:
            pq.write_table(table, handle)
        label = pc.coalesce(table["split"], table["reason"])
        counts.update(dict(zip(*(x.to_pylist() for x in pc.value_counts(label).flatten()))))
    return counts


def _fit_batch(batch: pa.Table, config: PipelineConfig, categorical: list[str]) -> pa.Table:
    train = _rows_in(batch, "train", config)
    if not train.num_rows:
        return pa.table({"statistics": pa.array([], pa.binary())})
    statistics = FitStatistics.of(train, categorical, config.dataset.label)
    return pa.table({"statistics": pa.array([pickle.dumps(statistics)], pa.binary())})


def fit_preprocessing(rows: ray.data.Dataset, config: PipelineConfig, feature_columns: list[str],
                      categorical: list[str]) -> Preprocessor:
    """Standardisation and vocabularies from the training split's rows only (a map and a merge)."""
    partial = rows.map_batches(_fit_batch, batch_format="pyarrow", batch_size=None,
                               fn_kwargs={"config": config, "categorical": categorical})
    merged = None
    for row in partial.take_all():
        statistics = pickle.loads(row["statistics"])
        merged = statistics if merged is None else merged.merge(statistics)
    if merged is None:
        raise ValueError("the training split is empty: check split.train_until against the data")
    return merged.finish(feature_columns, categorical, config.dataset.label, config.train.task)


def _encode_batch(batch: pa.Table, name: str, preprocessor: Preprocessor,
                  config: PipelineConfig) -> pa.Table:
    rows = _rows_in(batch, name, config)
    missing = rows[config.dataset.label].null_count + int(
        pc.sum(pc.is_nan(rows[config.dataset.label].cast(pa.float64()))).as_py() or 0)
    if missing:
        raise ValueError(f"{missing} rows of the {name} split have no label "
                         f"({config.dataset.label}); validate should have quarantined them")
    return preprocessor.encode(rows)


def encode_split(rows: ray.data.Dataset, name: str, preprocessor: Preprocessor,
                 config: PipelineConfig, shuffle_seed: int | None = None) -> ray.data.Dataset:
    """One split's rows, encoded once for every epoch (and shuffled with a fixed seed)."""
    encoded = rows.map_batches(_encode_batch, batch_format="pyarrow",
                               fn_kwargs={"name": name, "preprocessor": preprocessor,
                                          "config": config})
    if shuffle_seed is not None:
        encoded = encoded.random_shuffle(seed=shuffle_seed)
    return encoded.materialize()


# -- Ray Train -------------------------------------------------------------------------------
def loop_config(train: TrainConfig, preprocessor: Preprocessor, carrier: dict | None):
    """The loop's LoopConfig: architecture from the fitted preprocessing, the rest from config."""
    from pipeline.model.loop import KILL_ENV, LoopConfig
    from pipeline.model.network import NetworkSpec

    kill = os.environ.get(KILL_ENV)
    if kill:
        logger.warning("%s=%s: a training worker will SIGKILL itself after that epoch (test hook)",
                       KILL_ENV, kill)
    return LoopConfig(
        network=NetworkSpec(num_features=len(preprocessor.feature_columns),
                            cardinalities=preprocessor.cardinalities,
                            embedding_dim=train.embedding_dim, hidden=list(train.hidden),
                            dropout=train.dropout),
        task=train.task, lr=train.lr, weight_decay=train.weight_decay,
        batch_size=train.batch_size, epochs=train.epochs, patience=train.patience,
        seed=train.seed, label_mean=preprocessor.label_mean, label_std=preprocessor.label_std,
        carrier=carrier, kill_after_epoch=int(kill) if kill else None,
    )


def fit(loop, train: ray.data.Dataset, validation: ray.data.Dataset, settings: TrainConfig,
        store: ArtifactStore, name: str):
    """Run the TorchTrainer; checkpoints live under the artifact root, named by the cache key."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.model.loop import train_loop_per_worker

    storage = store.path("train_runs")
    run_config = RunConfig(
        name=name,
        storage_path=os.path.abspath(storage) if store.is_local else storage,
        storage_filesystem=None if store.is_local else store.arrow_filesystem(),
        failure_config=FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        worker_runtime_env=({"env_vars": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}}
                            if settings.use_gpu else None),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop},
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                     resources_per_worker=settings.resources_per_worker or None),
        run_config=run_config,
        datasets={"train": train, "validation": validation},
        # Only the training split is sharded; rank 0 scores all of validation. Order-preserving
        # execution makes the shards' contents and order the same on every run.
        dataset_config=DataConfig(datasets_to_split=["train"],
                                  execution_options=ExecutionOptions(preserve_order=True)),
    )
    return trainer.fit()


STAGE = Stage(
    name="train",
    inputs=("featurize",),
    config_sections=("dataset", "split", "train"),
    run=run,
    code_modules=("pipeline.stages.train", "pipeline.model.splits", "pipeline.model.preprocessing",
                  "pipeline.model.network", "pipeline.model.loop", "pipeline.model.metrics",
                  "pipeline.model.predictor"),
)
