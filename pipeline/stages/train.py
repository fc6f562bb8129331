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

import contextlib
import logging
import math
import os
import posixpath
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.core.config import PipelineConfig, SplitConfig, TrainConfig
from pipeline.core.durations import parse_duration
from pipeline.core.formatting import fmt
from pipeline.core.schema import Roles
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.exchange import PIECE_ROWS, exchange, returned, runs
from pipeline.engine.stage import (
    Facts,
    Files,
    Folder,
    Params,
    RowQuestion,
    Stage,
    StageContext,
    StageResult,
    top_reasons,
)
from pipeline.model.preprocessing import FitStatistics, Preprocessor
from pipeline.model.splits import SPLITS, test_period_start, with_splits
from pipeline.monitoring.drift import Columns, Histogram, training_histograms
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.featurize import FeaturizeFacts

logger = logging.getLogger(__name__)


class TrainParams(Params):
    roles: Roles
    split: SplitConfig
    train: TrainConfig

    @classmethod
    def from_config(cls, config: PipelineConfig) -> TrainParams:
        return cls(roles=Roles.of(config.dataset), split=config.split, train=config.train)


class TrainFiles(Files):
    model = Folder("model")
    """weights.pt, model.json, preprocessing.json, history.json (see pipeline.model.predictor)."""
    splits = Folder("splits")
    """(row key, split, reason) of every input row: the one place a row's split is decided."""


class TrainFacts(Facts):
    metrics: dict[str, float]
    """Validation metrics of the best epoch."""
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    restarts: int
    samples_per_second: float
    epoch_samples_per_second: list[float] = []
    """Training samples/s of each epoch, in order (the first one also warms caches and page
    mappings; benchmarks/train_ingest.py compares the later ones)."""
    splits: dict[str, int]
    excluded: dict[str, int]
    test_period_start: str
    """ISO time: the test split is every row with event time at or after it."""
    train_label_mean: float
    """The training split's mean label (positive rate for binary): evaluate's baseline."""
    train_rows_consumed: int
    worker_count: int
    device: str
    torch_threads: int | None = None
    """Intra-op threads of each worker's torch (one per worker CPU in local mode too)."""
    startup_seconds: float | None
    fit_seconds: float
    weights_sha256: str
    train_run: str | None
    """Ray Train's run folder (checkpoints); None in local mode, which keeps none."""
    feature_histograms: dict[str, Histogram] = {}
    """Each feature and the label over the training split: drift's reference."""

    def headline(self) -> str:
        left_out = f"left out: {top_reasons(self.excluded)}; " if any(self.excluded.values()) else ""
        return f"{left_out}best epoch {self.best_epoch} of {self.epochs_run}"


def run(ctx: StageContext[TrainParams, TrainFiles]) -> StageResult[TrainFacts]:
    # torch is imported here, not at the top: the Ray workers that run this module's task
    # functions (split, fit, encode) never need it, and importing it costs seconds per process.
    with ctx.telemetry.span("train.import_torch"):
        import torch

        from pipeline.model.loop import (
            CHECKPOINT_FILE,
            latest_kept_checkpoint,
            train_loop_per_worker,
        )
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
            _local_mode_checkpoints(store, ctx.cache_key, local_mode) as checkpoint_dir, \
            _worker_threads(torch, params.train, local_mode):
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


# -- data ------------------------------------------------------------------------------------
# Each pass over the rows is one round of plain Ray tasks over the part files' tables (see
# `StageContext.task`); only the encoded splits become Ray Datasets, for Ray Train to shard.
def split_rows(ctx: StageContext[TrainParams, TrainFiles], path: str,
               facts: FeaturizeFacts) -> list[ray.ObjectRef]:
    """The featurize output, one table per part file, in file then row order: only the columns
    training reads, each row with its split decided once (`split`, `reason` columns)."""
    roles = ctx.params.roles
    columns = list(dict.fromkeys([roles.row_key, roles.event_time, roles.label_available_at,
                                  roles.label, facts.packed_column, *facts.categorical_columns]))
    files = ctx.store.parquet_files(path)
    read = ctx.task(_read_with_splits, "train.read_file")
    return [read.remote(ctx.store, file, columns, ctx.params) for file in files]


def _read_with_splits(store: ArtifactStore, path: str, columns: list[str],
                      params: TrainParams) -> pa.Table:
    with store.fs.open(path, "rb") as handle:
        table = pq.read_table(handle, columns=columns)
    roles = params.roles
    return with_splits(table, event_time=roles.event_time,
                       label_available_at=roles.label_available_at, split=params.split,
                       label=roles.label)


def _in_split(batch: pa.Table, name: str) -> pa.Table:
    return batch.filter(pc.equal(batch["split"], name))


def write_splits(ctx: StageContext[TrainParams, TrainFiles], parts: list[ray.ObjectRef],
                 directory: str) -> tuple[Counter, str]:
    """Write (row key, split, reason) for every row, a numbered file per part (the same bytes on
    a rerun); return the counts per split and per reason, and the row key's type."""
    ctx.store.fs.makedirs(directory, exist_ok=True)
    write = ctx.task(_write_split_part, None)
    written = ray.get([write.remote(ctx.store, part, directory, index, ctx.params.roles.row_key)
                       for index, part in enumerate(parts)])
    counts: Counter = Counter({name: 0 for name in SPLITS})
    for part_counts, _ in written:
        counts.update(part_counts)
    return counts, written[0][1] if written else "null"


def _write_split_part(store: ArtifactStore, part: pa.Table, directory: str, index: int,
                      row_key: str) -> tuple[dict[str, int], str]:
    table = part.select([row_key, "split", "reason"])
    if table.num_rows:
        with store.fs.open(posixpath.join(directory, f"part-{index:05d}.parquet"), "wb") as sink:
            pq.write_table(table, sink)
    label = pc.coalesce(table["split"], table["reason"])
    counts = dict(zip(*(x.to_pylist() for x in pc.value_counts(label).flatten())))
    return counts, str(table.schema.field(row_key).type)


def fit_preprocessing(ctx: StageContext[TrainParams, TrainFiles], parts: list[ray.ObjectRef],
                      facts: FeaturizeFacts) -> tuple[Preprocessor, float]:
    """Standardisation and vocabularies from the training split's rows only (statistics per
    part, merged here), and the training split's mean label."""
    params = ctx.params
    label, categorical = params.roles.label, facts.categorical_columns
    statistics = ctx.task(_fit_statistics, None)
    merged = None
    for part in ray.get([statistics.remote(part, label, categorical) for part in parts]):
        if part is not None:
            merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise ValueError("the training split is empty: check split.train_until against the data")
    preprocessor = merged.finish(facts.feature_columns, categorical, label, params.train.task)
    return preprocessor, merged.label_mean


def _fit_statistics(part: pa.Table, label: str, categorical: list[str]) -> FitStatistics | None:
    train = _in_split(part, "train")
    return FitStatistics.of(train, categorical, label) if train.num_rows else None


def encode_split(ctx: StageContext[TrainParams, TrainFiles], parts: list[ray.ObjectRef],
                 name: str, preprocessor: Preprocessor,
                 shuffle: tuple[int, int, int] | None = None) -> ray.data.Dataset:
    """One split's rows, encoded once for every epoch, and shuffled when `shuffle` gives a seed,
    the split's row count and the number of training workers (see `shuffled`)."""
    encode = ctx.task(_encode_part, None)
    encoded = [encode.remote(part, name, preprocessor, ctx.params.roles.label) for part in parts]
    if shuffle is not None:
        encoded = shuffled(ctx, encoded, *shuffle)
    ray.wait(encoded, num_returns=len(encoded), fetch_local=False)  # done before fit starts
    from ray.data import from_arrow_refs  # not at the top: slow, it would delay Ray's start

    return from_arrow_refs(encoded)


def _encode_part(part: pa.Table, name: str, preprocessor: Preprocessor, label: str) -> pa.Table:
    rows = _in_split(part, name)
    missing = rows[label].null_count + int(
        pc.sum(pc.is_nan(rows[label].cast(pa.float64()))).as_py() or 0)
    if missing:
        raise ValueError(f"{missing} rows of the {name} split have no label ({label}); "
                         "validate should have quarantined them")
    return preprocessor.encode(rows)


def shuffled(ctx: StageContext, tables: list[ray.ObjectRef], seed: int, rows: int,
             workers: int) -> list[ray.ObjectRef]:
    """`tables`' rows in a seeded global shuffle, an exchange (`pipeline.engine.exchange`) as Ray Data's
    `random_shuffle` does it, without its planning: dealers over runs of consecutive tables deal
    their rows at random among the buckets; each bucket gathers its pieces from every dealer and
    permutes them. The same seed and tables give the same order.

    About sqrt(rows / PIECE_ROWS) buckets and as many dealers, so that a piece holds about
    PIECE_ROWS rows however many small tables the split comes in; at least one bucket per
    training worker (Ray Train deals the blocks among them), at most one per table.
    """
    if not tables:
        return tables
    buckets = min(len(tables), max(1, workers, math.isqrt(rows // PIECE_ROWS)))
    deals = [(buckets, (seed, index), *(tables[i] for i in run))
             for index, run in enumerate(runs(len(tables), rows, buckets, least=buckets))]
    return exchange(ctx.task(_deal, None), ctx.task(_gather_bucket, None), deals, buckets,
                    lambda bucket: ((seed, buckets + bucket),))


def _deal(buckets: int, seed: tuple[int, int], *tables: pa.Table):
    table = pa.concat_tables(tables)
    bucket = np.random.default_rng(seed).integers(buckets, size=table.num_rows)
    pieces = [table.filter(pa.array(bucket == index)) for index in range(buckets)]
    return returned(pieces)


def _gather_bucket(seed: tuple[int, int], *pieces: pa.Table) -> pa.Table:
    table = pa.concat_tables(pieces)
    return table.take(pa.array(np.random.default_rng(seed).permutation(table.num_rows)))


# -- Ray Train -------------------------------------------------------------------------------
def loop_config(train: TrainConfig, preprocessor: Preprocessor, checkpoint_dir: str | None = None):
    """The loop's LoopConfig: architecture from the fitted preprocessing, the rest from config;
    `checkpoint_dir` only in local mode, where Ray Train keeps no checkpoint files itself."""
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
        kill_after_epoch=int(kill) if kill else None,
        checkpoint_dir=checkpoint_dir,
    )


def _local_mode_checkpoints(store: ArtifactStore, key: str, local_mode: bool):
    """Local mode's checkpoint folder: `train_runs/<cache key>/local-mode` under a local
    artifact root, so a killed run resumes as the Ray Train path does; a temporary folder under
    an object-store root (local mode is one machine's path; there, a rerun starts afresh)."""
    if not local_mode:
        return contextlib.nullcontext(None)
    if not store.is_local:
        return tempfile.TemporaryDirectory(prefix="raypipe-local-train-")
    return contextlib.nullcontext(os.path.join(os.path.abspath(store.train_runs_path()), key,
                                               "local-mode"))


@contextlib.contextmanager
def _worker_threads(torch, settings: TrainConfig, local_mode: bool) -> Iterator[None]:
    """In local mode, torch gets the threads one Ray Train worker would (its CPUs in
    `resources_per_worker`, default 1) for the fit, not every core of the driver's machine: a
    thread count that follows the machine would make the weights follow it too (kernels sum in
    another order), and the threads would compete with Ray's own processes."""
    if not local_mode:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(settings.resources_per_worker.get("CPU", 1))))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(train_loop_per_worker: Callable, loop, train: ray.data.Dataset,
        validation: ray.data.Dataset, settings: TrainConfig, store: ArtifactStore, name: str):
    """Run the TorchTrainer; checkpoints live under the artifact root, named by the cache key
    (with `num_workers: 0`, Ray Train's local mode: the loop runs here, in the driver)."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.model.loop import KEPT_CHECKPOINTS

    storage = store.train_runs_path()
    run_config = RunConfig(
        name=name,
        storage_path=os.path.abspath(storage) if store.is_local else storage,
        storage_filesystem=None if store.is_local else store.arrow_filesystem(),
        failure_config=FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=KEPT_CHECKPOINTS),
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
