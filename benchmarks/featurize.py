"""Featurize throughput: the stage vs polars vs DuckDB on the same clean trips, in one run.

    python benchmarks/featurize.py                   # 10M trips, 3 runs of each engine
    python benchmarks/featurize.py --rows 1M --repeats 1
    python benchmarks/featurize.py --scaling         # the stage's peak memory at 1M vs 10M trips
    python benchmarks/featurize.py --smoke           # 50k trips, one run each: does it still run

The data: configs/local.yaml's generated trips at a fixed density (--rows-per-day), so more rows
mean a longer span; ingested and validated once through the CLI (`pipeline stage ingest`,
`pipeline stage validate`) in a base artifact root. Every engine computes the config's window
features (the default feature set) from validate's clean rows, each run in its own process, the
engines' order rotating from one repetition to the next:

- stage: `pipeline stage featurize --json` on a fresh artifact root holding hard links of the
  base root's ingest and validate outputs (featurize computes, nothing before it does): the
  stage as users run it, its time-travel audit included;
- polars and duckdb: benchmarks/window_peers.py in a child process of this file.

Three clocks, since the peers start no Ray: stage-only (the stage's seconds in the run's JSON
summary) against each peer's own seconds from its first read to its written file; the same with
Ray's start added to the stage; and each process's wall time, spawn to exit, for all three
(interpreter, imports, and for the stage the config, cache keys, run record and Ray's stop).
rows/s = clean rows / seconds; each figure is the median of the repetitions.

Memory: the peak over time of the summed PSS of each engine's process tree (for the stage, the
CLI process and every Ray process it starts: shared pages split fairly, so the object store is
not counted once per process), sampled every 100 ms, and the largest VmHWM of one Ray worker.
CPU seconds: every process of the tree at its last sample. The first repetition's outputs are
compared value for value (rtol = atol = 1e-9).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (
    REPO,
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
    stage_outcome,
    timed,
)
from processes import TreePeaks

from pipeline.core.config import PipelineConfig, load_config
from pipeline.core.durations import format_duration
from pipeline.features.windows import window_specs

CONFIG = REPO / "configs" / "local.yaml"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
ENGINES = ("stage", "polars", "duckdb")
PEERS = ("polars", "duckdb")
TARGET = 2.5  # x polars, stage-only clock, at 10M rows


# -- data ------------------------------------------------------------------------------------
def run_sets(rows: int, rows_per_day: int, root: Path, source: Path,
             chunk: str | None = None) -> list[str]:
    """configs/local.yaml over the span that `rows` trips fill at `rows_per_day`."""
    days = max(2, round(rows / rows_per_day))
    end = START + timedelta(days=days)
    span = end - START
    return [f"dataset.start={START.isoformat()}", f"dataset.end={end.isoformat()}",
            f"split.train_until={(START + span * 0.6).isoformat()}",
            f"split.validation_until={(START + span * 0.8).isoformat()}",
            f"dataset.generate.rows={rows}", f"dataset.source={source}",
            f"artifact_root={root}", *([f"features.chunk={chunk}"] if chunk else [])]


def prepare(sets: list[str], base: Path) -> Path:
    """Ingest and validate once in `base`; the folder of validate's published output."""
    pipeline_cli(["stage", "ingest"], CONFIG, sets)
    _, summary = pipeline_cli(["stage", "validate"], CONFIG, sets)
    return Path(stage_outcome(summary, "validate")["artifact"])


# -- engines ---------------------------------------------------------------------------------
def run_stage(sets: list[str], base: Path, root: Path) -> dict:
    copy_published(base, root, ("ingest", "validate"))
    peaks = TreePeaks()
    wall, summary = pipeline_cli(["stage", "featurize"], CONFIG, sets)
    used = peaks.stop()
    manifest = stage_manifest(summary, "featurize")
    if manifest["run_id"] != summary["run_id"]:
        raise RuntimeError("featurize was found cached: the fresh root was not fresh")
    seconds = stage_outcome(summary, "featurize")["seconds"]
    return {"seconds": seconds, "with_ray_start_seconds": seconds + summary["ray_start_seconds"],
            "process_seconds": wall, "rows": manifest["rows"]["out"], **used,
            "audit": manifest["details"]["audit"], "chunks": manifest["details"]["chunks"],
            "output": str(Path(stage_outcome(summary, "featurize")["artifact"]) / "data")}


def run_peer(engine: str, args: argparse.Namespace, validated: Path, work: Path) -> dict:
    """A peer in a fresh interpreter (this file with --engine), so its memory peak is its own."""
    command = [sys.executable, __file__, "--engine", engine, "--rows", str(args.rows),
               "--rows-per-day", str(args.rows_per_day), "--validated", str(validated),
               "--work", str(work)]
    peaks = TreePeaks()
    wall, stdout = timed(command)
    used = peaks.stop()
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "with_ray_start_seconds": result["seconds"], "process_seconds": wall,
            "peak_mb": used["peak_mb"], "cpu_seconds": used["cpu_seconds"]}


def engine_child(args: argparse.Namespace) -> dict:
    from window_peers import run_duckdb, run_polars

    config = load_config(CONFIG, run_sets(args.rows, args.rows_per_day, args.work, args.work))
    run = {"polars": run_polars, "duckdb": run_duckdb}[args.engine]
    return run(config, args.validated, args.work)


# -- comparison and report -------------------------------------------------------------------
def compare(config: PipelineConfig, outputs: dict[str, str]) -> dict:
    """Per feature and peer, how many rows differ from the stage (rtol = atol = 1e-9)."""
    key = config.dataset.row_key
    names = [spec.name for spec in window_specs(config)]
    tables = {engine: pads.dataset(path, format="parquet").to_table(columns=[key, *names])
              .sort_by(key) for engine, path in outputs.items()}
    stage = tables["stage"]
    report = {}
    for engine in PEERS:
        table = tables[engine]
        if not table[key].equals(stage[key]):
            raise RuntimeError(f"{engine} has other rows than the stage")
        report[engine] = {name: _differences(stage[name], table[name]) for name in names}
    return report


def _differences(left: pa.ChunkedArray, right: pa.ChunkedArray) -> int:
    a = pc.cast(left, pa.float64()).to_numpy(zero_copy_only=False)
    b = pc.cast(right, pa.float64()).to_numpy(zero_copy_only=False)
    missing = np.isnan(a) != np.isnan(b)
    close = np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)
    return int((missing | ~close).sum())


CLOCKS = {"stage_only": "seconds", "with_ray_start": "with_ray_start_seconds",
          "process": "process_seconds"}


def summarise(runs: dict[str, list[dict]]) -> dict:
    engines = {}
    for engine, repeats in runs.items():
        rows = repeats[0]["rows"]
        engines[engine] = {
            "rows": rows,
            **{f"{clock}_seconds": spread([r[field] for r in repeats])
               for clock, field in CLOCKS.items()},
            "rows_per_s": rows / spread([r["seconds"] for r in repeats])["median"],
            "cpu_seconds": spread([r["cpu_seconds"] for r in repeats]),
            "peak_mb": spread([r["peak_mb"] for r in repeats]),
        }
        if engine == "stage":
            engines[engine]["peak_worker_mb"] = spread([r["peak_worker_mb"] for r in repeats])
            engines[engine]["audit"] = repeats[0]["audit"]
            engines[engine]["chunks"] = repeats[0]["chunks"]
    peers = [peer for peer in PEERS if peer in engines]
    speedup = {clock: {peer: engines[peer][f"{clock}_seconds"]["median"]
                       / engines["stage"][f"{clock}_seconds"]["median"] for peer in peers}
               for clock in CLOCKS}
    return {"engines": engines, "speedup": speedup,
            "memory_vs": {peer: engines["stage"]["peak_mb"]["median"]
                          / engines[peer]["peak_mb"]["median"] for peer in peers}}


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = results["engines"]
    names = list(engines)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.27
    for offset, (clock, label) in zip((-width, 0, width), (
            ("stage_only", "engine's own clock"), ("with_ray_start", "+ Ray's start (stage)"),
            ("process", "process, spawn to exit"))):
        values = [engines[e]["rows"] / engines[e][f"{clock}_seconds"]["median"] for e in names]
        bars = left.bar([i + offset for i in range(len(names))], values, width, label=label)
        left.bar_label(bars, labels=[f"{v / 1000:,.0f}k" for v in values], fontsize=7)
    left.set_xticks(range(len(names)), names)
    left.set_ylabel("rows/s (median)")
    left.set_title(f"{results['rows']:,} clean rows, {results['provenance']['cpus']} CPUs: stage "
                   f"{results['speedup']['stage_only']['polars']:.2f}x polars, "
                   f"{results['speedup']['stage_only']['duckdb']:.2f}x DuckDB", fontsize=9)
    left.legend(fontsize=7)
    memory = [engines[e]["peak_mb"]["median"] for e in names]
    bars = right.bar(names, memory, color=["#3b7dd8", "#999999", "#bbbbbb"])
    right.bar_label(bars, labels=[f"{v:,.0f}" for v in memory])
    right.set_title("peak memory of the process tree (summed PSS), MB", fontsize=9)
    figure.suptitle(f"featurize: configs/local.yaml's features, chunk {results['chunk']}, "
                    f"{results['days']} days, {results['repeats']} runs each", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def measure(args: argparse.Namespace, rows: int, engines: tuple[str, ...],
            work: Path) -> tuple[dict[str, list[dict]], dict]:
    """Every engine `args.repeats` times on `rows` trips; the first repetition's outputs compared."""
    source, base = args.data / f"rideshare-{rows}-{args.rows_per_day}", work / "base"
    validated = prepare(run_sets(rows, args.rows_per_day, base, source, args.chunk), base)
    runs: dict[str, list[dict]] = {engine: [] for engine in engines}
    disagreements: dict = {}
    for repeat in range(args.repeats):
        for engine in alternated(engines, repeat):
            target = work / f"{engine}-{repeat}"
            if engine == "stage":
                result = run_stage(run_sets(rows, args.rows_per_day, target, source, args.chunk),
                                   base, target)
            else:
                result = run_peer(engine, args, validated, target)
            runs[engine].append(result)
            print(f"{engine:>7}: {result['rows']:,} rows in {result['seconds']:.1f}s "
                  f"({result['process_seconds']:.1f}s as a process), peak "
                  f"{result['peak_mb']:,.0f} MB", flush=True)
        if repeat == 0 and set(PEERS) <= set(engines):
            config = load_config(CONFIG, run_sets(rows, args.rows_per_day, base, source))
            disagreements = compare(config, {e: runs[e][0]["output"] for e in engines})
        for engine in engines:
            shutil.rmtree(work / f"{engine}-{repeat}", ignore_errors=True)
            runs[engine][-1].pop("output")
    return runs, disagreements


def stage_arm_arguments(doc: str, argv: list[str] | None, rows: int,
                        repeats: int) -> argparse.Namespace:
    """The arguments of a benchmark that compares settings of the stage (`stage_arms`); with
    --smoke, 50k trips and one run of each arm on data generated for it alone."""
    parser = benchmark_parser(doc, repeats=repeats, smoke="50k trips, one run of each arm")
    parser.add_argument("--rows", type=parse_rows, default=rows)
    parser.add_argument("--rows-per-day", type=parse_rows, default=50_000)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "benchmarks")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.rows_per_day, args.repeats = 50_000, 25_000, 1
        args.data = Path(tempfile.mkdtemp(prefix="featurize-arms-smoke-data-"))
    args.results = results_folder(args.results, args.smoke)
    return args


def stage_arms(rows: int, rows_per_day: int, repeats: int, arms: dict[str, list[str]],
               data: Path) -> dict[str, list[dict]]:
    """The stage under each arm's extra `--set`s, `repeats` times, alternated, on rows validated
    once: what a setting costs (telemetry_overhead.py, audit_cost.py)."""
    source = data / f"rideshare-{rows}-{rows_per_day}"
    work = Path(tempfile.mkdtemp(prefix="featurize-arms-", dir="/var/tmp"))
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    try:
        base = work / "base"
        prepare(run_sets(rows, rows_per_day, base, source), base)
        for repeat in range(repeats):
            for arm in alternated(list(arms), repeat):
                root = work / f"{arm}-{repeat}"
                result = run_stage(run_sets(rows, rows_per_day, root, source) + arms[arm], base,
                                   root)
                result.pop("output")
                runs[arm].append(result)
                shutil.rmtree(root)
                print(f"{repeat + 1}/{repeats} {arm}: {result['seconds']:.1f}s "
                      f"({result['cpu_seconds']:.0f} CPU s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, repeats=3, smoke="50k trips, one run of each engine")
    parser.add_argument("--rows", type=parse_rows, default=10_000_000)
    parser.add_argument("--rows-per-day", type=parse_rows, default=50_000)
    parser.add_argument("--chunk", default=None, help="features.chunk (default: the config's)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "benchmarks",
                        help="where sources are generated, and reused by a later run")
    parser.add_argument("--scaling", action="store_true", help="stage peak memory, 1M vs 10M")
    parser.add_argument("--engine", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--validated", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine:  # a child process: one peer, its result as the last line of stdout
        print(json.dumps(engine_child(args)))
        return
    if args.smoke:
        args.rows, args.rows_per_day, args.repeats = 50_000, 25_000, 1
        args.data = Path(tempfile.mkdtemp(prefix="featurize-smoke-data-"))
    results_dir = results_folder(args.results, args.smoke)
    args.data.mkdir(parents=True, exist_ok=True)
    measurement = Measurement()
    if args.scaling:
        scaling(args, measurement, results_dir)
        return
    work = Path(tempfile.mkdtemp(prefix="featurize-bench-", dir="/var/tmp"))
    try:
        runs, disagreements = measure(args, args.rows, ENGINES, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.smoke:
            shutil.rmtree(args.data, ignore_errors=True)
    config = load_config(CONFIG, run_sets(args.rows, args.rows_per_day, work, work, args.chunk))
    results = {
        "rows": runs["stage"][0]["rows"], "rows_generated": args.rows,
        "days": (config.dataset.end - config.dataset.start).days, "repeats": args.repeats,
        "chunk": format_duration(config.features.chunk),
        "features": [spec.name for spec in window_specs(config)],
        **summarise(runs),
        "values_differing_from_stage": disagreements,
        "agree": all(n == 0 for peer in disagreements.values() for n in peer.values()),
        "runs": runs,
    }
    if not results["agree"]:
        raise RuntimeError(f"the engines disagree: {disagreements}")
    polars, duckdb = (results["speedup"]["stage_only"][p] for p in PEERS)
    with_start = results["speedup"]["with_ray_start"]["polars"]
    process = results["speedup"]["process"]["polars"]
    measurement.save(results, results_dir / "featurize.json", chart, Summary(
        benchmark=f"featurize, {results['rows']:,} clean trips, {len(results['features'])} "
                  "window features, audit included",
        peer="polars (rolling_*_by) and DuckDB (RANGE window frames), value for value equal",
        result=f"stage {polars:.2f}x polars and {duckdb:.2f}x DuckDB in rows/s on the stage's "
               f"own clock; {with_start:.2f}x polars with Ray's start, {process:.2f}x as "
               f"processes (median of {args.repeats})",
        target=f">= {TARGET}x polars at 10M rows, stage-only clock",
        met=polars >= TARGET if args.rows >= 10_000_000 else None))


def scaling_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["runs"])
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    for offset, measure, label in ((-0.2, "peak_mb", "process tree (summed PSS)"),
                                   (0.2, "peak_worker_mb", "largest Ray worker (VmHWM)")):
        values = [results["runs"][size][measure]["median"] for size in sizes]
        bars = axis.bar([i + offset for i in range(len(sizes))], values, 0.4, label=label)
        axis.bar_label(bars, fmt="%.0f")
    axis.set_xticks(range(len(sizes)), [f"{int(size):,} trips" for size in sizes])
    axis.set_ylabel("peak memory, MB")
    axis.set_title(f"featurize at one density: {results['peak_growth']:.2f}x the memory for "
                   "10x the rows", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def scaling(args: argparse.Namespace, measurement: Measurement, results_dir: Path) -> None:
    """The stage's peak memory at 1M and 10M rows at one density (so a 10x longer span)."""
    sizes = (20_000, 200_000) if args.smoke else (1_000_000, 10_000_000)
    stage = {}
    for rows in sizes:
        work = Path(tempfile.mkdtemp(prefix="featurize-scaling-", dir="/var/tmp"))
        try:
            runs, _ = measure(args, rows, ("stage",), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        stage[str(rows)] = summarise(runs)["engines"]["stage"]
    small, large = (stage[str(rows)] for rows in sizes)
    growth = large["peak_mb"]["median"] / small["peak_mb"]["median"]
    results = {"chunk": args.chunk, "rows_per_day": args.rows_per_day, "runs": stage,
               "peak_growth": growth,
               "peak_worker_growth": large["peak_worker_mb"]["median"]
               / small["peak_worker_mb"]["median"]}
    measurement.save(results, results_dir / "featurize-scaling.json", scaling_chart, Summary(
        benchmark=f"featurize memory, {sizes[0]:,} vs {sizes[1]:,} trips at one density",
        peer="the stage itself on a 10x shorter span",
        result=f"peak memory grows {growth:.2f}x for 10x the rows (chunk + halo bound it)",
        target="<= 1.3x", met=growth <= 1.3))


if __name__ == "__main__":
    main()
