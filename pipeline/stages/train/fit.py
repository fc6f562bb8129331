"""The train stage's Ray Train side: the loop's configuration, the TorchTrainer (or its local
mode in the driver), local mode's kept checkpoints and torch threads."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from pipeline.core.config import TrainConfig
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import StageContext
from pipeline.model.preprocessing import Preprocessor
from pipeline.stages.train.spec import TrainFiles, TrainParams

if TYPE_CHECKING:
    from pipeline.model.network import NetworkSpec  # torch: only where the loop runs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fitted:
    """What a fit leaves: the final checkpoint's training state, with the best epoch's weights."""

    state: dict[str, Any]
    best: dict[str, Any]
    """The best epoch's weights (a state dict)."""
    network: NetworkSpec
    started: float
    """Wall-clock time the fit started (start-up = the first batch's time - this)."""
    seconds: float
    train_run: str | None
    """Ray Train's run folder (checkpoints); None in local mode, which keeps none."""


def fit_model(ctx: StageContext[TrainParams, TrainFiles], train: ray.data.Dataset,
              validation: ray.data.Dataset, preprocessor: Preprocessor) -> Fitted:
    """Train on the encoded splits with Ray Train (in local mode, in the driver) in the
    `train.fit` span; the loop opens its own spans per epoch, each exported as it closes."""
    import torch

    from pipeline.model.checkpoints import CHECKPOINT_FILE, latest_kept_checkpoint
    from pipeline.model.loop import train_loop_per_worker
    from pipeline.model.network import build_network

    settings = ctx.params.train
    local_mode = settings.num_workers == 0
    with ctx.telemetry.span("train.fit", {"train.workers": settings.num_workers}), \
            local_mode_checkpoints(ctx.store, ctx.cache_key, local_mode) as checkpoint_dir, \
            worker_threads(torch, settings, local_mode):
        loop = loop_config(settings, preprocessor, checkpoint_dir, ctx.params.model_source())
        build_network(loop.network)  # a team's factory fails here, in one line, before Ray Train
        started = time.time()
        result = fit(ctx.traced(train_loop_per_worker, span=None), loop, train, validation,
                     settings, ctx.store, ctx.cache_key)
        seconds = time.time() - started
        # The latest checkpoint holds the whole training state, the best epoch's weights included
        # (in local mode a resumed run that had nothing left to train reported none itself).
        final = result.checkpoint or latest_kept_checkpoint(checkpoint_dir)
        with final.as_directory() as directory:
            saved = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu",
                               weights_only=True)
    return Fitted(saved["state"], saved["best_network"], loop.network, started, seconds,
                  result.path)


def loop_config(train: TrainConfig, preprocessor: Preprocessor, checkpoint_dir: str | None = None,
                model_source: str | None = None):
    """The loop's LoopConfig: architecture from the fitted preprocessing, the rest from config;
    `checkpoint_dir` only in local mode, where Ray Train keeps no checkpoint files itself;
    `model_source`, the text of the module of `train.model` when the team brings a network."""
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
                            dropout=train.dropout, task=train.task, factory=train.model,
                            source=model_source),
        task=train.task, lr=train.lr, weight_decay=train.weight_decay,
        batch_size=train.batch_size, epochs=train.epochs, patience=train.patience,
        seed=train.seed, label_mean=preprocessor.label_mean, label_std=preprocessor.label_std,
        kill_after_epoch=int(kill) if kill else None,
        checkpoint_dir=checkpoint_dir,
    )


def local_mode_checkpoints(store: ArtifactStore, key: str, local_mode: bool):
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
def worker_threads(torch, settings: TrainConfig, local_mode: bool) -> Iterator[None]:
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

    from pipeline.model.checkpoints import KEPT_CHECKPOINTS

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
