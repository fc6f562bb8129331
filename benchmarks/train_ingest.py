"""Is the train stage's loop fed fast enough? Its steady-state samples/s against a plain PyTorch loop.

Both loops train the same network (pipeline.model.network.TabularNet, the config's default sizes)
with the same optimizer, loss, batch size, torch thread count and deterministic-kernel setting on
the same rows:

- stage:  the train stage's own `fit` (TorchTrainer, one worker) running `train_loop_per_worker`,
          fed by `ray.train.get_dataset_shard("train").iter_torch_batches(...)` from the
          materialised, already-encoded dataset the stage builds (Preprocessor.encode);
- plain:  the same rows as torch tensors already in memory, sliced batch by batch.

Steady state = the median over the second half of the epochs (the first ones warm caches, the
allocator and page mappings, in both loops). Ray Train's start-up (fit() called → first training batch) is reported on its own.
The run also times, per batch, the alternative of encoding raw columns inside the loop (vocabulary
lookup + standardisation), which is why the stage encodes once in Ray Data instead.

    python benchmarks/train_ingest.py                 # 1M rows, 8 epochs, CPU
    python benchmarks/train_ingest.py --smoke-test    # a few seconds of each
    python benchmarks/train_ingest.py --use-gpu       # both loops on the GPU

Writes benchmarks/results/train_ingest.json and train_ingest.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import TrainConfig
from pipeline.model.preprocessing import FitStatistics, Preprocessor

RESULTS = Path(__file__).resolve().parent / "results"
NUM_FEATURES, CATEGORIES, CARDINALITY = 16, ("pickup_zone", "dropoff_zone"), 50


def steady(per_epoch: list[float]) -> float:
    """The median of the second half of the epochs."""
    return statistics.median(per_epoch[len(per_epoch) // 2:])


def raw_rows(rows: int, seed: int = 0) -> pa.Table:
    """Featurize-shaped rows: packed float32 features (with NaNs), raw int categories, a label."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, NUM_FEATURES)).astype(np.float32)
    features[rng.random(features.shape) < 0.02] = np.nan
    zones = {name: rng.integers(1, CARDINALITY + 1, rows).astype(np.int32) for name in CATEGORIES}
    weights = rng.normal(size=NUM_FEATURES)
    label = np.nan_to_num(features) @ weights + 0.1 * zones["pickup_zone"] + rng.normal(size=rows)
    return pa.table({
        "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), NUM_FEATURES),
        **{name: pa.array(values) for name, values in zones.items()},
        "label": pa.array(label),
    })


def fit_preprocessor(table: pa.Table) -> Preprocessor:
    return FitStatistics.of(table, list(CATEGORIES), "label").finish(
        [f"f{i}" for i in range(NUM_FEATURES)], list(CATEGORIES), "label", "regression")


def stage_loop(encoded: list[pa.Table], validation: pa.Table, preprocessor: Preprocessor,
               settings: TrainConfig, use_gpu: bool) -> dict:
    """The train stage's fit() on already-encoded blocks, as run() calls it."""
    import ray
    import torch

    from pipeline.artifacts import ArtifactStore
    from pipeline.model.loop import CHECKPOINT_FILE, train_loop_per_worker
    from pipeline.stages.train import fit, loop_config

    train_ds = ray.data.from_arrow(encoded).materialize()
    validation_ds = ray.data.from_arrow(validation).materialize()
    loop = loop_config(settings, preprocessor)
    store = ArtifactStore(tempfile.mkdtemp(prefix="train-ingest-"))
    started = time.time()
    result = fit(train_loop_per_worker, loop, train_ds, validation_ds, settings, store,
                 f"bench-{int(started)}")
    fit_seconds = time.time() - started
    with result.checkpoint.as_directory() as directory:
        state = torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=True)["state"]
    per_epoch = [h["samples_per_second"] for h in state["history"]]
    return {
        "samples_per_second_per_epoch": per_epoch,
        "steady_samples_per_second": steady(per_epoch),
        "startup_seconds": state["first_batch_at"] - started,
        "fit_seconds": fit_seconds,
        "torch_threads": (result.return_value or {}).get("torch_threads"),
        "device": state["history"][-1]["device"],
    }


def plain_loop(encoded: pa.Table, preprocessor: Preprocessor, settings: TrainConfig,
               threads: int, use_gpu: bool) -> dict:
    """Tensors already in memory (on the device), the same network, optimizer and batch size."""
    import torch
    from torch import nn

    from pipeline.model.loop import deterministic_torch
    from pipeline.model.network import NetworkSpec, TabularNet

    torch.set_num_threads(threads)
    device = torch.device("cuda" if use_gpu else "cpu")
    deterministic_torch(device)  # the stage's kernel settings: compare data paths, not kernels
    width = preprocessor.cardinalities
    features = torch.from_numpy(
        encoded["features"].combine_chunks().flatten().to_numpy().reshape(-1, NUM_FEATURES)
    ).to(device)
    codes = torch.from_numpy(
        encoded["categorical"].combine_chunks().flatten().to_numpy().reshape(-1, len(width))
    ).to(device)
    labels = torch.from_numpy(encoded["label"].to_numpy()).to(device)
    torch.manual_seed(settings.seed)
    model = TabularNet(NetworkSpec(NUM_FEATURES, width, settings.embedding_dim,
                                   list(settings.hidden), settings.dropout)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    loss_fn = nn.MSELoss()
    rows, per_epoch = labels.shape[0], []
    for _ in range(settings.epochs):
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, rows, settings.batch_size):
            end = start + settings.batch_size
            loss = loss_fn(model(features[start:end], codes[start:end]), labels[start:end])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double() * (min(end, rows) - start)
        float(loss_sum)  # synchronise (GPU) before stopping the clock
        per_epoch.append(rows / (time.perf_counter() - started))
    return {"samples_per_second_per_epoch": per_epoch,
            "steady_samples_per_second": steady(per_epoch),
            "torch_threads": torch.get_num_threads(), "device": device.type}


def encode_in_loop_cost(raw: pa.Table, preprocessor: Preprocessor, batch_size: int,
                        repeats: int = 50) -> float:
    """Seconds per batch to encode raw columns (what encoding inside the loop would add)."""
    import torch

    batch = raw.slice(0, batch_size)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.from_numpy(preprocessor.features(batch))
        torch.from_numpy(preprocessor.codes(batch))
        torch.from_numpy(preprocessor.scaled_label(batch))
    return (time.perf_counter() - started) / repeats


def gpu_name(use_gpu: bool) -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if use_gpu and torch.cuda.is_available() else None


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["plain PyTorch\n(tensors in memory)", "train stage loop\n(Ray Train + Ray Data)"]
    values = [result["plain"]["steady_samples_per_second"],
              result["stage"]["steady_samples_per_second"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bars = ax.bar(names, values, color=["#888888", "#1f77b4"])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:,.0f}", ha="center",
                va="bottom")
    ax.set_ylabel("training samples / s (steady state)")
    ax.set_title(f"train ingest: ratio {result['ratio']:.2f} (target ≥ 0.80), "
                 f"{result['device']}, batch {result['batch_size']}\n"
                 f"Ray Train start-up {result['stage']['startup_seconds']:.1f}s (not in the bars)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes, just check it runs")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default {RESULTS}; a temporary one for --smoke-test)")
    args = parser.parse_args(argv)
    if args.smoke_test:  # checks that it runs; its numbers mean nothing, so they go elsewhere
        args.rows, args.epochs = 20_000, 2
        args.out = args.out or Path(tempfile.mkdtemp(prefix="train-ingest-smoke-"))
    args.out = args.out or RESULTS

    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    settings = TrainConfig(epochs=args.epochs, patience=args.epochs + 1,
                           batch_size=args.batch_size, use_gpu=args.use_gpu)
    raw = raw_rows(args.rows)
    validation_raw = raw_rows(max(args.rows // 10, 1_000), seed=1)
    preprocessor = fit_preprocessor(raw)
    blocks = [preprocessor.encode(raw.slice(s, 50_000)) for s in range(0, raw.num_rows, 50_000)]

    stage = stage_loop(blocks, preprocessor.encode(validation_raw), preprocessor, settings,
                       args.use_gpu)
    plain = plain_loop(pa.concat_tables(blocks), preprocessor, settings,
                       threads=stage["torch_threads"] or 1, use_gpu=args.use_gpu)
    encode_seconds = encode_in_loop_cost(raw, preprocessor, args.batch_size)
    result = {
        "benchmark": "train_ingest",
        "rows": args.rows, "epochs": args.epochs, "batch_size": args.batch_size,
        "device": stage["device"],
        "network": {"hidden": list(settings.hidden), "embedding_dim": settings.embedding_dim,
                    "features": NUM_FEATURES, "categorical": len(CATEGORIES)},
        "stage": stage,
        "plain": plain,
        "ratio": stage["steady_samples_per_second"] / plain["steady_samples_per_second"],
        "target_ratio": 0.8,
        "encode_in_loop_seconds_per_batch": encode_seconds,
        "plain_step_seconds_per_batch": args.batch_size / plain["steady_samples_per_second"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "ray": ray.__version__,
                    "load_average_1m": os.getloadavg()[0], "gpu": gpu_name(args.use_gpu)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_ingest.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / "train_ingest.png")
    print(json.dumps({k: result[k] for k in ("device", "ratio", "encode_in_loop_seconds_per_batch",
                                             "plain_step_seconds_per_batch")}
                     | {"stage_sps": stage["steady_samples_per_second"],
                        "plain_sps": plain["steady_samples_per_second"],
                        "startup_s": stage["startup_seconds"]}, indent=2))
    return result


if __name__ == "__main__":
    main()
