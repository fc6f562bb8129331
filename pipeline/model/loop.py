"""The per-worker training loop that Ray Train runs on every worker of the TorchTrainer.

Per epoch: train on this worker's shard of the (already encoded) training split, evaluate on the
validation split (rank 0; the result is broadcast so every rank takes the same early-stopping
decision), then checkpoint and report (rank 0 writes the checkpoint; every rank reports, since
`ray.train.report` is a barrier). The checkpoint carries the whole training state (weights, optimizer,
the best epoch's weights, the history, the restart count), so after a worker dies Ray Train starts a
new worker group and the loop continues from the next epoch.

Reproducibility: every random draw is seeded from (seed, epoch, rank), at the start of each epoch,
so a run resumed from epoch k's checkpoint draws exactly what an uninterrupted run would have (the
per-epoch batch order included); data arrives from an order-preserving Ray Data split;
deterministic kernels are on.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from ray.data.collate_fn import ArrowBatchCollateFn
from torch import nn

from pipeline.model.checkpoints import (
    CHECKPOINT_FILE,
    checkpoint_folder,
    epoch_folder,
    latest_kept_checkpoint,
    save_checkpoint,
)
from pipeline.model.metrics import RunningMetrics
from pipeline.model.network import NetworkSpec, build_network, losses

BATCH_COLUMNS = ("features", "categorical", "label")
"""The encoded split's columns (`Preprocessor.encode`), in the order the loop uses them."""
KILL_ENV = "RAYPIPE_TEST_KILL_WORKER_AFTER_EPOCH"
"""Test hook: the highest-rank worker SIGKILLs itself after this (1-based) epoch's checkpoint, once
(only in an attempt that did not start from a checkpoint). Read by the train stage in the driver."""


@dataclass(frozen=True)
class LoopConfig:
    """Everything a worker needs, built by the train stage (the train_loop_config contract)."""

    network: NetworkSpec
    task: str
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    patience: int
    seed: int
    label_mean: float = 0.0
    label_std: float = 1.0
    prefetch_batches: int = 1
    fetch_rows: int = 65_536
    """Rows Ray Data hands over at a time; the loop cuts them into `batch_size` steps."""
    validation_batch_size: int = 16_384
    kill_after_epoch: int | None = None
    checkpoint_dir: str | None = None
    """Local mode only: where each epoch's checkpoint is written and kept (Ray Train's local mode
    has no storage of its own and holds a reference to the folder, not a copy). A folder under
    the artifact root, named by the cache key, is what makes a killed local-mode run resume."""


class PackedCollate(ArrowBatchCollateFn):
    """Arrow batch → dict of tensors, fixed-size lists as (rows, width) without a copy.

    Ray Data's default conversion of fixed_size_list columns is slow enough to rival a small
    network's training step; flattening the child array and reshaping is several times faster.
    The tensors share the Arrow buffers, which are read-only: nothing writes into a batch.
    """

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        tensors = {}
        for name in batch.column_names:
            column = batch[name].combine_chunks()
            if pa.types.is_fixed_size_list(column.type):
                values = column.flatten().to_numpy(zero_copy_only=False)
                values = values.reshape(len(column), column.type.list_size)
            else:
                values = column.to_numpy(zero_copy_only=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "array is not writable"
                tensors[name] = torch.from_numpy(values)
        return tensors


@dataclass
class TrainingState:
    """What a checkpoint remembers besides the tensors."""

    epochs_done: int = 0
    best_epoch: int = 0
    best_loss: float = float("inf")
    epochs_without_improvement: int = 0
    stopped: bool = False
    restarts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per-epoch records; their wall-clock fields (predictor.WALL_CLOCK) feed the manifest's
    details only and are stripped when the model is saved, so the saved files are byte-stable."""
    first_batch_at: float | None = None
    """Wall-clock time of the first training batch (start-up = this - the driver's fit start)."""


def train_loop_per_worker(train_loop_config: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import ray.train.torch

    from pipeline.telemetry import worker_meter, worker_span

    config: LoopConfig = train_loop_config["loop"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    deterministic_torch(device)

    _seed(config.seed, 0, 0)  # identical initial weights on every rank
    network = build_network(config.network)
    optimizer_state, best_weights, state = None, None, TrainingState()
    checkpoint = ray.train.get_checkpoint() or latest_kept_checkpoint(config.checkpoint_dir)
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location="cpu",
                               weights_only=True)
        network.load_state_dict(saved["network"])
        optimizer_state, best_weights = saved["optimizer"], saved["best_network"]
        state = TrainingState(**saved["state"])
        state.restarts += int(not state.stopped and state.epochs_done < config.epochs)
    model = ray.train.torch.prepare_model(network)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    loss_fn, _ = losses(network, config.task)
    batch_seconds = worker_meter().create_histogram(
        "train.batch_seconds", unit="s", description="wall time per training batch, data included")

    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = ray.train.get_dataset_shard("validation") if rank == 0 else None
    for epoch in range(state.epochs_done, config.epochs):
        if state.stopped:
            break
        number = epoch + 1
        with worker_span(None, "train.epoch",
                         {"rank": rank, "epoch": number, "epochs": config.epochs,
                          "world_size": world}) as span:
            _seed(config.seed, number, rank)
            train_loss, rows, seconds, first_batch_at = _train_epoch(
                model, optimizer, loss_fn, train_shard, config, number, rank, batch_seconds)
            if state.first_batch_at is None:
                state.first_batch_at = first_batch_at
            train_loss, rows = _sum_across_ranks(train_loss, rows, world, device)
            validation = _evaluate(network, validation_shard, config, device) if rank == 0 else None
            validation = _broadcast(validation, world)

            improved = validation["loss"] < state.best_loss
            if improved:
                state.best_loss, state.best_epoch = validation["loss"], number
                state.epochs_without_improvement = 0
                best_weights = _cpu_copy(network.state_dict())
            else:
                state.epochs_without_improvement += 1
            state.epochs_done = number
            state.stopped = state.epochs_without_improvement >= config.patience
            record = {"epoch": number, "train_loss": train_loss / max(rows, 1),
                      "train_rows": int(rows), "train_seconds": seconds,
                      "samples_per_second": rows / seconds if seconds > 0 else 0.0,
                      "validation": validation, "improved": improved,
                      "attempt": state.restarts, "device": device.type, "world_size": world,
                      "torch_threads": torch.get_num_threads()}
            state.history.append(record)
            span.set_attributes({"train.rows": int(rows), "train.loss": record["train_loss"],
                                 "validation.loss": validation["loss"]})

        with worker_span(None, "train.checkpoint", {"rank": rank, "epoch": number}):
            _report(network, optimizer, best_weights, state, record, rank, config)
        if config.kill_after_epoch == number and checkpoint is None and rank == world - 1:
            _die_after_checkpoint_is_registered(config)

    return {"state": asdict(state), "device": device.type, "world_size": world,
            "torch_threads": torch.get_num_threads()}


def _train_epoch(model, optimizer, loss_fn, shard, config: LoopConfig, epoch: int, rank: int,
                 batch_seconds) -> tuple[float, int, float, float | None]:
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    rows, first_batch_at = 0, None
    # Each batch Ray Data hands over costs slicing and bookkeeping comparable to a small network's
    # step: fetch many steps' rows at once and cut them here (benchmarks/train_ingest.py).
    fetch = config.batch_size * max(1, config.fetch_rows // config.batch_size)
    # The split arrives in one seeded global order, the same every epoch; each epoch permutes the
    # rows of every fetched chunk anew, so no two epochs step through the same batches (one fixed
    # order for all epochs gives a less accurate model than reshuffling).
    order = torch.Generator().manual_seed(_derive(config.seed, epoch, rank, 1))
    attributes = {"rank": rank}
    started = last = time.perf_counter()
    for chunk in shard.iter_torch_batches(
        batch_size=fetch,
        prefetch_batches=config.prefetch_batches,
        collate_fn=PackedCollate(),
        pin_memory=device.type == "cuda",
    ):
        if first_batch_at is None:
            first_batch_at = time.time()
        size = chunk["label"].shape[0]
        permutation = torch.randperm(size, generator=order).to(device)
        # one gather a chunk, then plain slices
        features, codes, label = (chunk[name][permutation] for name in BATCH_COLUMNS)
        for start in range(0, size, config.batch_size):
            stop = start + config.batch_size
            loss = loss_fn(model(features[start:stop], codes[start:stop]), label[start:stop])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count = min(stop, size) - start
            loss_sum.add_(loss.detach(), alpha=count)  # no .item(): keep the GPU queue full
            rows += count
            now = time.perf_counter()
            batch_seconds.record(now - last, attributes)
            last = now
    return float(loss_sum.item()), rows, time.perf_counter() - started, first_batch_at


def _evaluate(network: nn.Module, shard, config: LoopConfig, device) -> dict[str, float]:
    """Validation loss (the training objective) and task metrics in label units.

    Batch by batch into sums: in local mode this runs in the driver, and holding every batch's
    outputs until the end would grow its private memory with the split.
    """
    network.eval()
    loss_sum, metrics = 0.0, RunningMetrics(config.task)
    _, loss_fn = losses(network, config.task)
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=config.validation_batch_size,
                                              prefetch_batches=config.prefetch_batches,
                                              collate_fn=PackedCollate()):
            output = network(batch["features"], batch["categorical"]).double().cpu()
            label = batch["label"].double().cpu()
            loss_sum += float(loss_fn(output, label))
            if config.task == "regression":
                metrics.add(label.numpy() * config.label_std + config.label_mean,
                            output.numpy() * config.label_std + config.label_mean)
            else:
                metrics.add(label.numpy(), torch.sigmoid(output).numpy())
    if not metrics.rows:
        raise ValueError("the validation split is empty: check split.train_until, "
                         "split.validation_until and split.embargo")
    return {"loss": loss_sum / metrics.rows, **metrics.result()}


def _report(network, optimizer, best_weights, state: TrainingState, record: dict[str, Any],
            rank: int, config: LoopConfig) -> None:
    """Checkpoint (rank 0 writes it) and report; every rank calls report, it is a barrier."""
    import ray.train

    metrics = {"epoch": record["epoch"], "train_loss": record["train_loss"],
               "samples_per_second": record["samples_per_second"],
               "best_epoch": state.best_epoch, "restarts": state.restarts,
               "stopped": state.stopped,
               **{f"validation_{k}": v for k, v in record["validation"].items()}}
    with checkpoint_folder(config.checkpoint_dir, record["epoch"]) as directory:
        checkpoint = None
        if rank == 0:
            save_checkpoint({"network": _cpu_copy(network.state_dict()),
                              "optimizer": optimizer.state_dict(),
                              "best_network": best_weights,
                              "state": asdict(state)}, directory)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=epoch_folder(record["epoch"]))


def _die_after_checkpoint_is_registered(config: LoopConfig) -> None:
    """The fault-injection hook: a real process death, not an exception Ray could catch (in
    local mode that process is the driver: the test runs it as a child process)."""
    import ray.train

    if config.checkpoint_dir is None:
        ray.train.get_all_reported_checkpoints()  # the controller has registered our checkpoint
    os.kill(os.getpid(), signal.SIGKILL)


def _sum_across_ranks(loss_sum: float, rows: int, world: int, device) -> tuple[float, int]:
    if world == 1:
        return loss_sum, rows
    import torch.distributed as dist

    totals = torch.tensor([loss_sum, float(rows)], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return float(totals[0]), int(totals[1])


def _broadcast(value: Any, world: int) -> Any:
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _cpu_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def _derive(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _seed(seed: int, epoch: int, rank: int) -> None:
    import random

    value = _derive(seed, epoch, rank)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def deterministic_torch(device) -> None:
    """Deterministic kernels (and cuBLAS workspace) so equal inputs give bit-equal weights."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # Some CUDA kernels have no deterministic variant: warn there rather than refuse to train.
    # torch.use_deterministic_algorithms would also import torch._inductor.config (slow to import)
    # only to set Inductor's flag; this loop never compiles, so set the kernels' switch alone.
    torch._C._set_deterministic_algorithms(True, warn_only=device.type == "cuda")
