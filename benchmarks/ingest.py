"""Ingest throughput: the ingest stage vs a plain pyarrow read + write of the same files.

    python benchmarks/ingest.py                  # 1M rows, 3 layouts → benchmarks/results/ingest.{json,png}
    python benchmarks/ingest.py --rows 200000 --repeats 1
    python benchmarks/ingest.py --smoke          # 20k rows, one run each: does it still run

The source: `generate_rideshare` trips written as hive-partitioned parquet (`day=YYYY-MM-DD/`) in
three layouts of --rows rows each:

- daily-60:   60 days, one file per day;
- daily-365:  365 days, one file per day (the same row count spread over a year);
- small-3000: the daily-60 rows, each day split into 50 files (3,000 files of a few hundred rows).

Stage: Ray is started once (`ensure_ray`, timed apart as ray_init_s), then each repetition runs
`Runner(config, STAGES).run(only="ingest")` on configs/smoke.yaml's columns with a fresh artifact root.
stage_s is the stage's own time (its span: listing, footer checks, copy tasks); runner_s is the
whole call, adding the cache key (which lists and stats every source file), the run record and
telemetry. The stage's child spans say where its time goes: ingest.list, ingest.check_footers and
ingest.copy_files (tasks in parallel: their wall from first start to last end is reported).

Peer, in the same process on the same files: list them, `pyarrow.dataset.dataset(files)
.to_table(columns=declared)`, then `pq.write_table` into one file. Its threads use the same cores
as Ray's two CPUs. Stage and peer alternate within each repetition, the order reversed every other
repetition; medians are reported and the ratio is stage_s / pyarrow_s (the target: at most 1.5 on
every layout). --smoke runs the same measurement on 20,000 rows once and writes to a temporary
folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from measure import (
    REPO,
    Measurement,
    Summary,
    alternated,
    benchmark_parser,
    parse_rows,
    results_folder,
    spread,
)

from pipeline.core.config import PipelineConfig, load_config

CONFIG = REPO / "configs" / "smoke.yaml"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
LAYOUTS = {"daily-60": (60, 1), "daily-365": (365, 1), "small-3000": (60, 50)}
"""Layout name → (days, files per day)."""
CHILD_SPANS = ("ingest.list", "ingest.check_footers", "ingest.copy_files")
ARMS = ("stage", "pyarrow")
TARGET = 1.5  # ratio_stage_to_pyarrow, at most, on every layout


# -- data ------------------------------------------------------------------------------------
def write_layout(rows: int, days: int, files_per_day: int, seed: int, target: Path) -> None:
    """`rows` trips over `days` days as day=.../part-NN.parquet, each day cut into equal files."""
    from pipeline.datasets.rideshare import generate_rideshare

    table = generate_rideshare(rows, START, START + timedelta(days=days), seed)
    day = table["day"].to_numpy(zero_copy_only=False)
    table = table.drop_columns(["day"])
    order = np.argsort(day, kind="stable")
    values, firsts = np.unique(day[order], return_index=True)
    stops = np.append(firsts[1:], len(order))
    for value, first, stop in zip(values, firsts, stops):
        folder = target / f"day={value}"
        folder.mkdir(parents=True)
        rows_of_day = table.take(pa.array(order[first:stop]))
        for part, piece in enumerate(np.array_split(np.arange(rows_of_day.num_rows),
                                                    files_per_day)):
            pq.write_table(rows_of_day.take(pa.array(piece)), folder / f"part-{part:02d}.parquet")


def layout_config(source: Path, days: int, artifact_root: Path) -> PipelineConfig:
    """configs/smoke.yaml's declared columns over this layout's days, on 2 local CPUs."""
    return load_config(CONFIG, [
        f"dataset.source={source}", "dataset.generate=null",
        f"dataset.start={START.isoformat()}",
        f"dataset.end={(START + timedelta(days=days)).isoformat()}",
        f"artifact_root={artifact_root}", "cluster.num_cpus=2", "telemetry.exporter=jsonl",
    ])


# -- the two arms ----------------------------------------------------------------------------
def run_stage(config: PipelineConfig) -> dict:
    """The ingest stage through the runner, on the already started Ray; its child spans."""
    from pipeline.engine.runner import Runner
    from pipeline.stages.dag import STAGES

    runner = Runner(config, STAGES)
    started = time.perf_counter()
    summary = runner.run(only="ingest")
    runner_s = time.perf_counter() - started
    (outcome,) = summary.stages
    spans = runner.telemetry.spans()
    children = {}
    for name in CHILD_SPANS:
        found = [s for s in spans if s["name"] == name]
        if found:
            children[name] = (max(s["end_ns"] for s in found)
                              - min(s["start_ns"] for s in found)) / 1e9
    copies = [s for s in spans if s["name"] == "ingest.copy_files"]
    return {"stage_s": outcome.seconds, "runner_s": runner_s, "rows": outcome.rows_out,
            "children_s": children, "copy_tasks": len(copies),
            "copy_task_s": sorted(round((s["end_ns"] - s["start_ns"]) / 1e9, 3) for s in copies)}


def run_pyarrow(source: Path, columns: list[str], output: Path) -> dict:
    """List the files, read the declared columns with pyarrow.dataset, write one parquet file."""
    started = time.perf_counter()
    files = sorted(str(path) for path in source.glob("day=*/*.parquet"))
    table = pads.dataset(files, format="parquet").to_table(columns=columns)
    output.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output / "part-0.parquet")
    return {"pyarrow_s": time.perf_counter() - started, "rows": table.num_rows,
            "files": len(files)}


# -- reporting -------------------------------------------------------------------------------
def summarise(name: str, stage: list[dict], peer: list[dict]) -> dict:
    stage_s = spread([r["stage_s"] for r in stage])
    pyarrow_s = spread([r["pyarrow_s"] for r in peer])
    children = {child: spread([r["children_s"].get(child, 0.0) for r in stage])
                for child in CHILD_SPANS}
    attributed = sum(children[c]["median"] for c in CHILD_SPANS)
    result = {
        "files": peer[0]["files"], "rows": stage[0]["rows"],
        "stage_s": stage_s, "runner_s": spread([r["runner_s"] for r in stage]),
        "pyarrow_s": pyarrow_s,
        "ratio_stage_to_pyarrow": stage_s["median"] / pyarrow_s["median"],
        "ratio_runner_to_pyarrow": statistics.median(r["runner_s"] for r in stage)
        / pyarrow_s["median"],
        "children_s": children,
        "unattributed_s": stage_s["median"] - attributed,
        "dominant_child": max(CHILD_SPANS, key=lambda c: children[c]["median"]),
        "copy_tasks": stage[0]["copy_tasks"],
        "runs": {"stage": stage, "pyarrow": peer},
    }
    print(f"{name:>10}: {result['files']:>5} files, stage {stage_s['median']:.2f}s vs pyarrow "
          f"{pyarrow_s['median']:.2f}s = {result['ratio_stage_to_pyarrow']:.2f}x "
          f"(runner {result['runner_s']['median']:.2f}s); "
          + ", ".join(f"{c} {children[c]['median']:.2f}s" for c in CHILD_SPANS), flush=True)
    return result


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["layouts"])
    layouts = [results["layouts"][n] for n in names]
    x = np.arange(len(names))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    stage = [r["stage_s"]["median"] for r in layouts]
    peer = [r["pyarrow_s"]["median"] for r in layouts]
    left.bar(x - 0.2, stage, 0.4, label="ingest stage", color="#3b7dd8")
    left.bar(x + 0.2, peer, 0.4, label="pyarrow read + write", color="#999999")
    for i, r in enumerate(layouts):
        left.text(i - 0.2, stage[i], f"{r['ratio_stage_to_pyarrow']:.2f}x", ha="center",
                  va="bottom")
    left.set_xticks(x, [f"{n}\n({r['files']:,} files)" for n, r in zip(names, layouts)])
    left.set_ylabel("seconds (median)")
    left.set_title("stage vs pyarrow (ratio over the stage's bar)")
    left.legend()
    bottom = np.zeros(len(names))
    for child, color in zip(CHILD_SPANS, ("#8cb4e8", "#3b7dd8", "#1d4f91")):
        values = np.array([r["children_s"][child]["median"] for r in layouts])
        right.bar(x, values, 0.5, bottom=bottom, label=child, color=color)
        bottom += values
    right.bar(x, [max(0.0, r["unattributed_s"]) for r in layouts], 0.5, bottom=bottom,
              label="unattributed", color="#dddddd")
    right.set_xticks(x, names)
    right.set_title("the stage's time by child span (median)")
    right.legend(fontsize=8)
    figure.suptitle(f"ingest, {results['rows_generated']:,} rows per layout, "
                    f"{results['provenance']['cpus']} CPUs (Ray started once, "
                    f"{results['ray_init_s']:.1f}s, not counted)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def measure(args: argparse.Namespace, work: Path) -> dict:
    """Ray's start, then every layout: stage and peer `args.repeats` times each, alternated."""
    from pipeline.engine.ray_cluster import ensure_ray

    sources = {}
    for name, (days, per_day) in LAYOUTS.items():
        sources[name] = work / name
        write_layout(args.rows, days, per_day, args.seed, sources[name])
    columns = list(load_config(CONFIG).dataset.columns)
    started = time.perf_counter()
    ensure_ray(layout_config(sources["daily-60"], 60, work / "unused").cluster)
    ray_init_s = time.perf_counter() - started
    layouts = {}
    for name, (days, _) in LAYOUTS.items():
        stage, peer = [], []
        for repeat in range(args.repeats):
            root = work / f"{name}-{repeat}"
            for arm in alternated(ARMS, repeat):
                if arm == "stage":
                    stage.append(run_stage(layout_config(sources[name], days, root / "artifacts")))
                else:
                    peer.append(run_pyarrow(sources[name], columns, root / "pyarrow"))
            shutil.rmtree(root)
        if stage[0]["rows"] != peer[0]["rows"]:
            raise RuntimeError(f"{name}: stage wrote {stage[0]['rows']} rows, "
                               f"pyarrow {peer[0]['rows']}")
        layouts[name] = summarise(name, stage, peer)
    return {"ray_init_s": ray_init_s, "layouts": layouts}


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, repeats=3, smoke="20k rows, one run of each arm")
    parser.add_argument("--rows", type=parse_rows, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.repeats = 20_000, 1
    results_dir = results_folder(args.results, args.smoke)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    measurement = Measurement()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        measured = measure(args, work)
    finally:
        import ray

        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    layouts = measured["layouts"]
    within = {name: r["ratio_stage_to_pyarrow"] <= TARGET for name, r in layouts.items()}
    results = {"rows_generated": args.rows, "repeats": args.repeats, **measured,
               "within_target": within}
    ratios = ", ".join(f"{r['ratio_stage_to_pyarrow']:.2f}x on {name} ({r['files']:,} files)"
                       for name, r in layouts.items())
    measurement.save(results, results_dir / "ingest.json", chart, Summary(
        benchmark=f"ingest, {args.rows:,} trips in each of {len(LAYOUTS)} layouts, stage's own "
                  "clock, Ray started once",
        peer="pyarrow.dataset read of the declared columns + pq.write_table, same process, "
             "same files",
        result=f"stage / pyarrow seconds: {ratios} (median of {args.repeats} runs, arms alternated)",
        target=f"<= {TARGET}x pyarrow on every layout", met=all(within.values())))


if __name__ == "__main__":
    main()
