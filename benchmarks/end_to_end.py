"""A whole retrain: `pipeline run` vs the plain script a team would write without it, in one run.

    python benchmarks/end_to_end.py                          # 1M and 10M trips, 3 runs each
    python benchmarks/end_to_end.py --rows 1M --repeats 1    # a quicker check
    python benchmarks/end_to_end.py --smoke                  # 20k trips, one run each

The source: configs/local.yaml's ride-share table (`ensure_dataset`, the generator `pipeline run`
uses when the source is missing) at --rows rows over the config's 60 days, generated once before
any timing, outside both arms, under --data (a fresh folder in /var/tmp unless given; a given one
is reused, so a later benchmark on the same rows skips generation).

Both arms run as child processes of this one, timed from spawn to exit, in alternating order, and
both train every epoch (`train.patience` = `train.epochs`: neither stops early, so both do the
same training work; the best epoch's weights are kept by both):

- pipeline: `python -m pipeline run -c configs/local.yaml --set dataset.source=... --set
  dataset.generate.rows=N --set artifact_root=<fresh> --json`, a first run. Per phase: ray.start
  (timed apart from every stage), each stage's seconds from the JSON summary, and "other"
  (interpreter, imports, config, run record, exit) = wall - the rest. Its test metrics are
  evaluate's; its epochs and torch threads are the train manifest's. The pipeline trains with one
  torch thread per worker (in local mode too), which keeps its weights the same on any machine.
- script: this file with --script: polars + torch, no Ray, timed per phase in the child, with
  torch's default threads (every core: what a script gets unless it says otherwise, and on an
  idle machine its fastest). read + clean: the source's day partitions in [dataset.start,
  dataset.end), then validate's rules (pipeline/quality/rules.py): nulls in any declared column,
  non-finite floats, later copies of a row key, out-of-range values, labels before their events
  or more than validate.max_label_delay after, events outside the range. features: the config's
  windows with the polars peer of benchmarks/featurize.py (benchmarks/window_peers.py). split:
  pipeline/model/splits.py's rules in polars (labels available before each cutoff, the embargo).
  train: pipeline/model/preprocessing.py's transform (training-split mean/std, NaN -> 0 after
  standardising, vocabulary codes with 0 = unknown, standardised label), the same TabularNet,
  AdamW with train.lr and weight_decay, MSE, the batch size, every epoch, the best epoch's weights
  on validation loss, and the stage's shuffle (benchmarks/plain_torch.py). score: RMSE and MAE on
  the test period in label units.

The phases compared side by side: start-up (pipeline: ray.start + other; script: interpreter and
imports), read + clean (ingest + validate), features (featurize, with its audit), split + train
(train), score (evaluate, with its report and registry); and scoring alone (`scoring_s`): the
script's score phase against evaluate's `evaluate.score` span. The wall ratio is pipeline / script
per repetition and of the medians, with and without Ray's start (the script starts none).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

PROCESS_STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from measure import (  # noqa: E402
    Measurement,
    Summary,
    alternated,
    benchmark_parser,
    generate_source,
    parse_rows,
    parse_sizes,
    pipeline_cli,
    results_folder,
    span_seconds,
    spread,
    stage_manifest,
    timed,
)

from pipeline.core.config import PipelineConfig, load_config  # noqa: E402

CONFIG = REPO / "configs" / "local.yaml"
PHASES = ("start-up", "read + clean", "features", "split + train", "score")
ARMS = ("script", "pipeline")
TARGETS = {1_000_000: 1.2, 10_000_000: 0.7}
"""Pipeline wall / script wall at most this at these sizes, test RMSE no worse."""
PIPELINE_PHASES = {"start-up": ("ray.start", "other"), "read + clean": ("ingest", "validate"),
                   "features": ("featurize",), "split + train": ("train",),
                   "score": ("evaluate", "register")}


# -- the source ------------------------------------------------------------------------------
def source_config(rows: int, source: Path | None = None,
                  sets: Sequence[str] = ()) -> PipelineConfig:
    sets = [f"dataset.generate.rows={rows}", *sets]
    return load_config(CONFIG, sets + ([f"dataset.source={source}"] if source else []))


# -- the pipeline arm ------------------------------------------------------------------------
def every_epoch() -> list[str]:
    """Both arms train every epoch: no early stop, so both do the same training work."""
    return [f"train.patience={load_config(CONFIG).train.epochs}"]


def run_pipeline(source: Path, rows: int, artifact_root: Path) -> dict:
    """One first `pipeline run` as a child process: wall, per-phase seconds, test metrics."""
    wall, summary = pipeline_cli(["run"], CONFIG, [
        f"dataset.source={source}", f"dataset.generate.rows={rows}",
        f"artifact_root={artifact_root}", *every_epoch()])
    if any(s["status"] != "ran" for s in summary["stages"]):
        raise RuntimeError(f"not a first run: {summary['stages']}")
    seconds = {s["name"]: s["seconds"] for s in summary["stages"]}
    run_dir = artifact_root / "runs" / summary["run_id"]
    seconds["ray.start"] = summary["ray_start_seconds"] or 0.0
    seconds["other"] = wall - sum(seconds.values())
    rows_of = {s["name"]: s for s in summary["stages"]}
    train = stage_manifest(summary, "train")["details"]
    return {"wall_s": wall, "wall_without_ray_start_s": wall - seconds["ray.start"],
            "seconds": seconds,
            "scoring_s": span_seconds(run_dir, "evaluate.score"),
            "phases_s": {phase: sum(seconds[p] for p in parts)
                         for phase, parts in PIPELINE_PHASES.items()},
            "rows": {"clean": rows_of["validate"]["rows_out"],
                     "train": train["splits"]["train"], "validation": train["splits"]["validation"],
                     "test": rows_of["evaluate"]["rows_out"]},
            "best_epoch": train["best_epoch"], "epochs_run": train["epochs_run"],
            "torch_threads": train["torch_threads"],
            "test_metrics": summary["test_metrics"], "run_id": summary["run_id"]}


# -- the script arm (runs in a child: `--script`) ---------------------------------------------
class Phases:
    """Seconds per named phase of the script, each from the end of the one before."""

    def __init__(self, started: float) -> None:
        self.seconds: dict[str, float] = {}
        self._last = started

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now


def plain_script(config: PipelineConfig, source: Path, torch_threads: int) -> dict:
    """The retrain without the pipeline: polars for data and windows, a torch loop for the MLP
    (`torch_threads` 0: torch's default)."""
    import numpy as np
    import polars as pl
    import torch
    from window_peers import events, groups

    from pipeline.features.windows import window_specs
    from pipeline.model.network import NetworkSpec, TabularNet

    if torch_threads:
        torch.set_num_threads(torch_threads)
    phases = Phases(PROCESS_STARTED)
    phases.done("start-up")

    clean = read_and_clean(pl, config, source)
    phases.done("read + clean")

    features = clean.lazy().select(config.dataset.row_key)
    for (entity, available_at), specs in groups(window_specs(config)).items():
        group = events(pl, clean.lazy(), entity, available_at, specs, config)
        features = features.join(group, on=config.dataset.row_key, how="left")
    table = clean.join(features.collect(), on=config.dataset.row_key, how="left")
    phases.done("features")

    table = with_split(pl, config, table)
    numeric = [*config.features.numeric, *(spec.name for spec in window_specs(config))]
    splits = {name: table.filter(pl.col("split") == name) for name in ("train", "validation",
                                                                       "test")}
    phases.done("split")

    tensors, cardinalities, unscale = preprocess(np, torch, config, splits, numeric)
    train = config.train
    torch.manual_seed(train.seed)
    network = TabularNet(NetworkSpec(num_features=len(numeric), cardinalities=cardinalities,
                                     embedding_dim=train.embedding_dim, hidden=train.hidden))
    phases.done("preprocess")
    best_epoch, epochs = fit(torch, network, tensors, train)
    phases.done("train")

    with torch.no_grad():
        network.eval()
        predicted = unscale(network(*tensors["test"][:2]).numpy())
    truth = splits["test"][config.dataset.label].to_numpy()
    errors = predicted - truth
    metrics = {"rmse": float(np.sqrt(np.mean(errors**2))), "mae": float(np.mean(np.abs(errors))),
               "rows": len(truth)}
    phases.done("score")
    seconds = phases.seconds
    return {"seconds": seconds,
            "phases_s": {"start-up": seconds["start-up"],
                         "read + clean": seconds["read + clean"],
                         "features": seconds["features"],
                         "split + train": seconds["split"] + seconds["preprocess"]
                         + seconds["train"],
                         "score": seconds["score"]},
            "rows": {"clean": clean.height, "train": splits["train"].height,
                     "validation": splits["validation"].height, "test": splits["test"].height},
            "best_epoch": best_epoch, "epochs_run": epochs,
            "torch_threads": torch.get_num_threads(),
            "test_metrics": metrics}


def read_and_clean(pl, config: PipelineConfig, source: Path):
    """The days in range, then validate's rules; a row breaking any rule is dropped."""
    dataset = config.dataset
    first, last = dataset.start.date(), (dataset.end - timedelta(microseconds=1)).date()
    files = sorted(str(path) for folder in source.glob(f"{dataset.partition}=*")
                   if first.isoformat() <= folder.name.split("=", 1)[1] <= last.isoformat()
                   for path in folder.glob("*.parquet"))
    raw = pl.read_parquet(files, columns=list(dataset.columns), hive_partitioning=False)
    t, label_at = pl.col(dataset.event_time), pl.col(dataset.label_available_at)
    keep = [pl.col(dataset.row_key).is_first_distinct()]
    for name, spec in dataset.columns.items():
        column = pl.col(name)
        if spec.required:
            keep.append(column.is_not_null())
        if spec.type in ("float32", "float64"):
            keep.append(column.is_finite())
        if spec.min is not None:
            keep.append(column >= spec.min)
        if spec.max is not None:
            keep.append(column <= spec.max)
    keep += [label_at >= t, label_at - t <= config.validate_.max_label_delay,
             t >= dataset.start, t < dataset.end]
    return raw.filter(pl.all_horizontal(keep))


def with_split(pl, config: PipelineConfig, table):
    """train / validation / test by event time and label-available time, with the embargo."""
    split, dataset = config.split, config.dataset
    t, label_at = pl.col(dataset.event_time), pl.col(dataset.label_available_at)
    train_until, validation_until = split.train_until, split.validation_until
    return table.with_columns(
        pl.when((t < train_until) & (label_at < train_until)).then(pl.lit("train"))
        .when((t >= train_until + split.embargo) & (t < validation_until)
              & (label_at < validation_until)).then(pl.lit("validation"))
        .when(t >= validation_until + split.embargo).then(pl.lit("test"))
        .otherwise(None).alias("split"))


def preprocess(np, torch, config: PipelineConfig, splits: dict, numeric: list[str]):
    """Per split (features, codes, label) tensors, fit on the training split alone; the embedding
    sizes (vocabulary + 1 for unknown); the map from network outputs back to label units."""
    def matrix(frame):
        return frame.select(numeric).cast({name: float for name in numeric}).to_numpy()

    train = matrix(splits["train"])
    mean, std = np.nanmean(train, axis=0), np.nanstd(train, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    vocabularies = {name: np.sort(splits["train"][name].drop_nulls().unique().to_numpy())
                    for name in config.features.categorical}
    label = config.dataset.label
    label_mean = float(splits["train"][label].mean())
    label_std = float(splits["train"][label].std(ddof=0)) or 1.0

    def codes(frame):
        columns = []
        for name, vocabulary in vocabularies.items():
            values = frame[name].fill_null(-1).to_numpy()
            index = np.searchsorted(vocabulary, values).clip(0, len(vocabulary) - 1)
            columns.append(np.where(vocabulary[index] == values, index + 1, 0))
        return np.stack(columns, axis=1).astype(np.int64)

    tensors = {}
    for name, frame in splits.items():
        scaled = (matrix(frame) - mean) / std
        scaled = np.where(np.isfinite(scaled), scaled, 0.0).astype(np.float32)
        target = ((frame[label].to_numpy() - label_mean) / label_std).astype(np.float32)
        tensors[name] = (torch.from_numpy(scaled), torch.from_numpy(codes(frame)),
                         torch.from_numpy(target))
    cardinalities = [len(vocabulary) + 1 for vocabulary in vocabularies.values()]
    return tensors, cardinalities, lambda output: output.astype(np.float64) * label_std + label_mean


def fit(torch, network, tensors: dict, train) -> tuple[int, int]:
    """AdamW on MSE, the stage's shuffle, train.patience on validation loss; keeps the best
    weights. Returns (best epoch, epochs run)."""
    from plain_torch import in_one_order, train_epoch

    rows = in_one_order(tensors["train"], train.seed)
    optimizer = torch.optim.AdamW(network.parameters(), lr=train.lr,
                                  weight_decay=train.weight_decay)
    loss_fn = torch.nn.MSELoss()
    generator = torch.Generator().manual_seed(train.seed)
    best_loss, best_epoch, best_weights, waited, epoch = float("inf"), 0, None, 0, 0
    for epoch in range(1, train.epochs + 1):
        train_epoch(network, optimizer, loss_fn, rows, train.batch_size, generator)
        network.eval()
        with torch.no_grad():
            validation = loss_fn(network(*tensors["validation"][:2]),
                                 tensors["validation"][2]).item()
        if validation < best_loss:
            best_loss, best_epoch, waited = validation, epoch, 0
            best_weights = {k: v.clone() for k, v in network.state_dict().items()}
        else:
            waited += 1
            if waited >= train.patience:
                break
    network.load_state_dict(best_weights)
    return best_epoch, epoch


def run_script(source: Path, rows: int, torch_threads: int) -> dict:
    """The plain script as a child process (this file with --script), timed from spawn to exit."""
    wall, stdout = timed([sys.executable, __file__, "--script", "--source", str(source),
                          "--rows", str(rows), "--torch-threads", str(torch_threads)])
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["phases_s"]["start-up"] += wall - sum(result["phases_s"].values())  # exit included
    return result


# -- report ----------------------------------------------------------------------------------
def summarise(rows: int, generation_s: float, runs: dict[str, list[dict]],
              load: dict[str, tuple]) -> dict:
    script, pipeline = runs["script"], runs["pipeline"]
    medians = {arm: spread([r["wall_s"] for r in found]) for arm, found in runs.items()}
    without_start = spread([r["wall_without_ray_start_s"] for r in pipeline])
    rmse = {arm: spread([r["test_metrics"]["rmse"] for r in found])["median"]
            for arm, found in runs.items()}
    ratio = medians["pipeline"]["median"] / medians["script"]["median"]
    target = TARGETS.get(rows)
    return {
        "rows": rows,
        "generation_s": generation_s,
        "repeats": len(script),
        "wall_s": medians,
        "wall_ratio": ratio,
        "wall_ratio_per_repeat": [p["wall_s"] / s["wall_s"] for s, p in zip(script, pipeline)],
        "wall_without_ray_start_s": without_start,
        "wall_ratio_without_ray_start": without_start["median"] / medians["script"]["median"],
        "phases_s": {arm: {phase: spread([r["phases_s"][phase] for r in found])["median"]
                           for phase in PHASES} for arm, found in runs.items()},
        "scoring_s": {"script": spread([r["phases_s"]["score"] for r in script])["median"],
                      "pipeline": spread([r["scoring_s"] for r in pipeline])["median"],
                      "what": "the script's batched torch inference and metrics against "
                              "evaluate.score (its scoring tasks: read the test rows, predict, "
                              "break errors down, write the predictions), within evaluate"},
        "test_rmse": rmse,
        "test_mae": {arm: spread([r["test_metrics"]["mae"] for r in found])["median"]
                     for arm, found in runs.items()},
        "epochs_run": {arm: [r["epochs_run"] for r in found] for arm, found in runs.items()},
        "torch_threads": {arm: found[0]["torch_threads"] for arm, found in runs.items()},
        "target_wall_ratio": target,
        "met": (ratio <= target and rmse["pipeline"] <= rmse["script"]) if target else None,
        "load_average": load,
        "runs": runs,
    }


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results["sizes"].values(), key=lambda size: size["rows"])
    figure, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4), squeeze=False)
    for axis, size in zip(axes[0], sizes):
        for offset, arm, color in ((-0.2, "script", "#999999"), (0.2, "pipeline", "#3b7dd8")):
            values = [size["phases_s"][arm][phase] for phase in PHASES]
            bars = axis.bar([i + offset for i in range(len(PHASES))], values, width=0.4,
                            color=color,
                            label=f"{arm}: {size['wall_s'][arm]['median']:.1f}s wall, "
                                  f"RMSE {size['test_rmse'][arm]:.3f}")
            axis.bar_label(bars, fmt="%.1f", fontsize=7)
        axis.set_xticks(range(len(PHASES)), PHASES, fontsize=8)
        axis.set_ylabel("seconds (median of repetitions)")
        axis.set_title(f"{size['rows']:,} rows: pipeline = {size['wall_ratio']:.2f}x the script "
                       f"({size['wall_ratio_without_ray_start']:.2f}x without Ray's start)",
                       fontsize=9)
        axis.legend(fontsize=8)
    figure.suptitle("end to end: `pipeline run` (first run) vs a plain polars + torch script, "
                    "configs/local.yaml, every epoch trained", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, repeats=3, smoke="20k trips, one run of each arm")
    parser.add_argument("--rows", default="1M,10M",
                        help="comma-separated row counts (k and M suffixes), each a size")
    parser.add_argument("--data", type=Path, help="where sources are generated (and reused); "
                        "default: a temporary folder under /var/tmp, deleted afterwards")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="the script's torch threads (default 0: torch's default)")
    parser.add_argument("--script", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.script:  # the child: the plain script, its result as the last line of stdout
        config = source_config(parse_rows(args.rows), args.source, every_epoch())
        print(json.dumps(plain_script(config, args.source, args.torch_threads)))
        return
    if args.smoke:
        args.rows, args.repeats = "20k", 1
    results_dir = results_folder(args.results, args.smoke)
    measurement = Measurement()
    data = args.data or Path(tempfile.mkdtemp(prefix="end-to-end-", dir="/var/tmp"))
    work = Path(tempfile.mkdtemp(prefix="end-to-end-runs-", dir="/var/tmp"))
    sizes = {}
    try:
        for rows in parse_sizes(args.rows):
            sizes[str(rows)] = measure_size(rows, data, work, args.repeats, args.torch_threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.data is None:
            shutil.rmtree(data, ignore_errors=True)
    results = {"config": "configs/local.yaml", "sizes": sizes}
    judged = [size for size in sizes.values() if size["met"] is not None]
    measurement.save(results, results_dir / "end_to_end.json", chart, Summary(
        benchmark="end to end, configs/local.yaml, first run, every epoch trained, "
                  + " and ".join(f"{int(r):,}" for r in sizes) + " trips",
        peer="the plain polars + torch script a team would write (same rows, network, epochs, "
             "shuffle; torch's default threads)",
        result="; ".join(
            f"{int(rows):,}: pipeline {size['wall_ratio']:.2f}x the script's wall "
            f"({size['wall_ratio_without_ray_start']:.2f}x without Ray's start), test RMSE "
            f"{size['test_rmse']['pipeline']:.3f} vs {size['test_rmse']['script']:.3f}"
            for rows, size in sizes.items()) + f" (median of {args.repeats})",
        target="; ".join(f"<= {t}x at {r:,} rows" for r, t in TARGETS.items())
        + ", RMSE no worse",
        met=all(size["met"] for size in judged) if judged else None))


def measure_size(rows: int, data: Path, work: Path, repeats: int, torch_threads: int) -> dict:
    """Both arms at one size, `repeats` times, alternated so that drift in load hits both."""
    source = data / f"rideshare-{rows}"
    generation_s = generate_source(CONFIG, source, [f"dataset.generate.rows={rows}"])
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for repeat in range(repeats):
        for arm in alternated(ARMS, repeat):
            if arm == "script":
                runs[arm].append(run_script(source, rows, torch_threads))
            else:
                root = work / f"artifacts-{rows}-{repeat}"
                runs[arm].append(run_pipeline(source, rows, root))
                shutil.rmtree(root)
        script, pipeline = runs["script"][-1], runs["pipeline"][-1]
        if script["rows"]["test"] != pipeline["rows"]["test"]:
            raise RuntimeError(f"the arms scored other rows: {script['rows']} vs "
                               f"{pipeline['rows']}")
        print(f"{rows:,} rows, run {repeat + 1}: script {script['wall_s']:.1f}s "
              f"(RMSE {script['test_metrics']['rmse']:.3f}), pipeline "
              f"{pipeline['wall_s']:.1f}s (RMSE {pipeline['test_metrics']['rmse']:.3f})"
              f", load {os.getloadavg()[0]:.1f}", flush=True)
    return summarise(rows, generation_s, runs,
                     {"before": load_before, "after": os.getloadavg()})


if __name__ == "__main__":
    main()
