"""The train stage's feed against a plain PyTorch loop over the same tensors, in one run.

    python benchmarks/train_ingest.py                # 1M trips, 5 runs of each arm, alternated
    python benchmarks/train_ingest.py --smoke        # 20k trips, one run each: does it still run
    python benchmarks/train_ingest.py --use-gpu      # one Ray Train GPU worker against the GPU

Prepared once, through the CLI: configs/local.yaml's generated trips at --rows rows, then
`pipeline stage ingest`, `validate` and `featurize` in a base artifact root. Then, --repeats
times, each arm in its own process, in alternating order:

- stage: `pipeline stage train` on a fresh artifact root holding hard links of the base root's
  published outputs (train computes, nothing before it does), every epoch trained
  (`train.patience` = `train.epochs`). Its samples/s per epoch come from the train manifest
  (`epoch_samples_per_second`): Ray Data streaming the encoded split into the loop, Ray Train's
  loop with its metrics, per epoch.
- plain: this file with --plain. The same featurize output read with pyarrow, split by
  pipeline/model/splits.py and encoded by the same preprocessing, fit on the training split: the
  tensors the stage trains on, held in memory. The same network, optimizer, loss, batch size,
  epochs, torch threads (one, as the stage gives a worker) and deterministic kernels, and a
  shuffle of the same quality: one seeded permutation of the split, then every epoch a fresh
  permutation inside each chunk of `LoopConfig.fetch_rows` rows, gathered once and cut into
  batches (the stage's loop does exactly this to what Ray Data hands it). A per-batch gather
  from a full permutation is recorded too (`plain_full_permutation`), as a team might write it.

Steady state: the median samples/s over the epochs after the first, which warms caches,
allocators and page mappings in both arms. Each arm's figure is the median of its runs; the
ratio is stage / plain. Validation, checkpoints and Ray Train's start are outside both clocks
(the stage's start-up, fit() to first batch, is reported apart).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from measure import (  # noqa: E402
    Measurement,
    Summary,
    alternated,
    benchmark_parser,
    copy_published,
    parse_rows,
    pipeline_cli,
    results_folder,
    spread,
    stage_manifest,
    timed,
)

CONFIG = REPO / "configs" / "local.yaml"
ARMS = ("stage", "plain")
TARGET = 0.95


def steady(per_epoch: list[float]) -> float:
    """The median of the epochs after the first."""
    return statistics.median(per_epoch[1:] or per_epoch)


def run_sets(args: argparse.Namespace, root: Path, source: Path) -> list[str]:
    gpu = ["train.use_gpu=true", "train.num_workers=1"] if args.use_gpu else []
    return [f"dataset.source={source}", f"dataset.generate.rows={args.rows}",
            f"artifact_root={root}", f"train.epochs={args.epochs}",
            f"train.patience={args.epochs}", f"train.batch_size={args.batch_size}",
            *gpu]


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The base root: ingest, validate and featurize published for the generated source."""
    base, source = work / "base", work / "source"
    for stage in ("ingest", "validate", "featurize"):
        pipeline_cli(["stage", stage], CONFIG, run_sets(args, base, source))
    return base, source


def run_stage(args: argparse.Namespace, base: Path, source: Path, root: Path) -> dict:
    copy_published(base, root, ("ingest", "validate", "featurize"))
    wall, summary = pipeline_cli(["stage", "train"], CONFIG, run_sets(args, root, source))
    manifest = stage_manifest(summary, "train")
    if manifest["run_id"] != summary["run_id"]:
        raise RuntimeError("train was found cached: the fresh root was not fresh")
    facts = manifest["details"]
    per_epoch = facts["epoch_samples_per_second"]
    return {"samples_per_second_per_epoch": per_epoch, "steady_samples_per_second": steady(per_epoch),
            "epochs_run": facts["epochs_run"], "train_rows": facts["splits"]["train"],
            "startup_seconds": facts["startup_seconds"], "fit_seconds": facts["fit_seconds"],
            "device": facts["device"], "process_wall_seconds": wall}


def run_plain(args: argparse.Namespace, base: Path) -> dict:
    command = [sys.executable, __file__, "--plain", "--root", str(base), "--rows", str(args.rows),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               *(["--use-gpu"] if args.use_gpu else [])]
    return json.loads(timed(command)[1].strip().splitlines()[-1])


# -- the plain arm (a child: --plain) --------------------------------------------------------
def plain_tensors(root: Path, config, device):
    """The training split's encoded tensors, from the featurize output under `root`."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    import torch

    from pipeline.model.preprocessing import fit_preprocessor
    from pipeline.model.splits import with_splits

    (featurize,) = [p for p in (root / "stages" / "featurize").iterdir()
                    if (p / "manifest.json").exists()]
    facts = json.loads((featurize / "manifest.json").read_text())["details"]
    dataset = config.dataset
    files = sorted(str(p) for p in (featurize / "data").rglob("*.parquet"))
    table = pads.dataset(files, format="parquet").to_table()
    table = with_splits(table, event_time=dataset.event_time,
                        label_available_at=dataset.label_available_at, split=config.split,
                        label=dataset.label)
    train = table.filter(pc.equal(table["split"], "train"))
    preprocessor = fit_preprocessor(train, facts["feature_columns"], facts["categorical_columns"],
                                    dataset.label, config.train.task)
    encoded = preprocessor.encode(train)
    width = len(preprocessor.categorical)

    def tensor(name: str, columns: int | None = None):
        values = encoded[name].combine_chunks()
        array = values.flatten().to_numpy() if columns else values.to_numpy()
        array = array.reshape(-1, columns) if columns else array
        return torch.from_numpy(array.copy()).to(device)

    return (tensor("features", len(preprocessor.feature_columns)), tensor("categorical", width),
            tensor("label"), preprocessor)


def plain_loop(args: argparse.Namespace) -> dict:
    import torch
    from plain_torch import in_one_order, train_epoch
    from torch import nn

    from pipeline.core.config import load_config
    from pipeline.model.loop import deterministic_torch
    from pipeline.model.network import NetworkSpec, TabularNet

    config = load_config(CONFIG, [f"train.batch_size={args.batch_size}"])
    settings = config.train
    torch.set_num_threads(1)
    device = torch.device("cuda" if args.use_gpu else "cpu")
    deterministic_torch(device)
    features, codes, labels, preprocessor = plain_tensors(args.root, config, device)
    rows = labels.shape[0]
    generator = torch.Generator().manual_seed(settings.seed)
    tensors = in_one_order((features, codes, labels), settings.seed)

    def model_and_optimizer():
        torch.manual_seed(settings.seed)
        model = TabularNet(NetworkSpec(len(preprocessor.feature_columns),
                                       preprocessor.cardinalities, settings.embedding_dim,
                                       list(settings.hidden), settings.dropout)).to(device)
        return model, torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                        weight_decay=settings.weight_decay)

    def train(epochs: int, full_permutation: bool) -> list[float]:
        model, optimizer = model_and_optimizer()
        loss_fn, per_epoch = nn.MSELoss(), []
        for _ in range(epochs):
            if full_permutation:
                seconds = full_permutation_epoch(model, optimizer, loss_fn, tensors,
                                                 settings.batch_size, generator)
            else:
                seconds = train_epoch(model, optimizer, loss_fn, tensors, settings.batch_size,
                                      generator)
            per_epoch.append(rows / seconds)
        return per_epoch

    per_epoch = train(args.epochs, full_permutation=False)
    full = train(min(args.epochs, 3), full_permutation=True)
    return {"samples_per_second_per_epoch": per_epoch, "steady_samples_per_second": steady(per_epoch),
            "plain_full_permutation_steady_samples_per_second": steady(full),
            "epochs_run": args.epochs, "train_rows": rows, "torch_threads": torch.get_num_threads(),
            "device": device.type}


def full_permutation_epoch(model, optimizer, loss_fn, tensors: tuple, batch_size: int,
                           generator) -> float:
    """An epoch gathering every batch from a permutation of the whole split; its seconds."""
    import torch

    features, codes, labels = tensors
    model.train()
    started = time.perf_counter()
    permutation = torch.randperm(labels.shape[0], generator=generator).to(labels.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=labels.device)
    for start in range(0, labels.shape[0], batch_size):
        batch = permutation[start:start + batch_size]
        loss = loss_fn(model(features[batch], codes[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum.add_(loss.detach(), alpha=batch.shape[0])
    float(loss_sum)
    return time.perf_counter() - started


# -- report ----------------------------------------------------------------------------------
def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    names = ["plain PyTorch loop\n(tensors in memory)", "train stage\n(Ray Data + Ray Train loop)"]
    values = [arms["plain"]["steady_samples_per_second"]["median"],
              arms["stage"]["steady_samples_per_second"]["median"]]
    low = [arms[a]["steady_samples_per_second"]["min"] for a in ("plain", "stage")]
    high = [arms[a]["steady_samples_per_second"]["max"] for a in ("plain", "stage")]
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    bars = axis.bar(names, values, color=["#888888", "#1f77b4"],
                    yerr=[[v - lo for v, lo in zip(values, low)],
                          [hi - v for v, hi in zip(values, high)]], capsize=6)
    axis.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    axis.set_ylabel("training samples/s, steady state (median, min to max)")
    axis.set_title(f"train feed: stage = {results['ratio']:.2f}x the plain loop "
                   f"({results['repeats']} runs each, {results['device']}, batch "
                   f"{results['batch_size']})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, repeats=5, smoke="20k trips, 2 epochs, one run each")
    parser.add_argument("--rows", type=parse_rows, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain:  # the child: the plain loop, its result as the last line of stdout
        print(json.dumps(plain_loop(args)))
        return
    if args.smoke:
        args.rows, args.epochs, args.repeats = 20_000, 2, 1
    results_dir = results_folder(args.results, args.smoke)
    measurement = Measurement()
    work = Path(tempfile.mkdtemp(prefix="train-ingest-", dir="/var/tmp"))
    try:
        base, source = prepare(args, work)
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for repeat in range(args.repeats):
            for arm in alternated(ARMS, repeat):
                if arm == "stage":
                    runs[arm].append(run_stage(args, base, source, work / f"root-{repeat}"))
                    shutil.rmtree(work / f"root-{repeat}")
                else:
                    runs[arm].append(run_plain(args, base))
            print(f"run {repeat + 1}: stage {runs['stage'][-1]['steady_samples_per_second']:,.0f}"
                  f" vs plain {runs['plain'][-1]['steady_samples_per_second']:,.0f} samples/s",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if {r["train_rows"] for r in runs["stage"]} != {r["train_rows"] for r in runs["plain"]}:
        raise RuntimeError("the arms trained on different rows: "
                           f"{[r['train_rows'] for arm in ARMS for r in runs[arm]]}")
    arms = {arm: {"steady_samples_per_second": spread([r["steady_samples_per_second"]
                                                       for r in runs[arm]])} for arm in ARMS}
    ratio = (arms["stage"]["steady_samples_per_second"]["median"]
             / arms["plain"]["steady_samples_per_second"]["median"])
    full = statistics.median(r["plain_full_permutation_steady_samples_per_second"]
                             for r in runs["plain"])
    device = runs["stage"][0]["device"]
    results = {
        "rows_generated": args.rows, "train_rows": runs["stage"][0]["train_rows"],
        "epochs": args.epochs, "batch_size": args.batch_size, "repeats": args.repeats,
        "device": device, "arms": arms, "ratio": ratio,
        "ratio_per_repeat": [s["steady_samples_per_second"] / p["steady_samples_per_second"]
                             for s, p in zip(runs["stage"], runs["plain"])],
        "ratio_to_full_permutation_loop": arms["stage"]["steady_samples_per_second"]["median"]
        / full,
        "stage_startup_seconds": spread([r["startup_seconds"] or 0.0 for r in runs["stage"]]),
        "runs": runs,
    }
    measurement.save(results, results_dir / f"train_ingest{'_gpu' if args.use_gpu else ''}.json",
                     chart, Summary(
                         benchmark=f"train feed, {results['train_rows']:,} training rows, "
                                   f"batch {args.batch_size}, {device}",
                         peer="a plain PyTorch loop over the same tensors in memory, the same "
                              "network, threads and shuffle",
                         result=f"stage {ratio:.2f}x the plain loop's samples/s (median of "
                                f"{args.repeats} alternating runs; {results['ratio_to_full_permutation_loop']:.2f}x "
                                "a loop gathering every batch from a full permutation)",
                         target=f">= {TARGET}x", met=ratio >= TARGET))


if __name__ == "__main__":
    main()
