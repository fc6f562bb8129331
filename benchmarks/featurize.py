"""Featurize throughput: this stage vs polars vs DuckDB on the same synthetic trips, in one run.

    python benchmarks/featurize.py --rows 10000000   # → benchmarks/results/featurize.{json,png}
    python benchmarks/featurize.py --scaling         # peak memory at 1M vs 10M rows
    python benchmarks/featurize.py --rows 1000000    # a quicker run

The data: `generate_rideshare` trips at a fixed density (--rows-per-day), so more rows means a
longer time span, with validate's dirt removed, written the way validate writes clean rows (parquet,
hive-partitioned by the UTC day of the event time). Each engine computes the default feature set
of configs/local.yaml with the same [t - W, t) semantics, reading the clean parquet and writing its
output as parquet, in its own fresh process:

- stage:  `pipeline.stages.featurize` on a local Ray with 2 CPUs, audit included;
- polars: `rolling_<agg>_by(..., closed="left").over(entity)`; label-time features roll over the
          union of source events (at their available-at time) and query events (at t);
- duckdb: window frames `RANGE BETWEEN W PRECEDING AND CURRENT ROW EXCLUDE GROUP`, the same union.

Ray starts its workers at niceness 15; here they run at 0 like the peers, which matters only on a
machine shared with other work. CPU seconds (user + system of every process involved) are reported
too: on a shared machine they are steadier than wall time.

Peak memory: for polars and duckdb, the peak RSS of their process (the kernel's VmHWM). For the
stage, the peak over time of the summed PSS (shared pages split fairly, so Ray's shared-memory
object store is not counted once per process) of the driver and every Ray process it started,
sampled every 100 ms from /proc; and separately the largest VmHWM of a single Ray worker.
The three outputs are then compared value for value; rows/s = rows / wall seconds of the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.config import PipelineConfig, load_config
from pipeline.durations import format_duration
from pipeline.features.windows import WindowSpec, window_specs

REPO = Path(__file__).resolve().parents[1]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
ENGINES = ("stage", "polars", "duckdb")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- data ------------------------------------------------------------------------------------
def benchmark_config(rows: int, rows_per_day: int, root: Path,
                     chunk: str | None = None) -> PipelineConfig:
    """configs/local.yaml (the default features) over the span that `rows` trips fill."""
    days = max(2, round(rows / rows_per_day))
    end = START + timedelta(days=days)
    span = end - START
    return load_config(REPO / "configs" / "local.yaml", [
        f"dataset.start={START.isoformat()}", f"dataset.end={end.isoformat()}",
        f"split.train_until={(START + span * 0.6).isoformat()}",
        f"split.validation_until={(START + span * 0.8).isoformat()}",
        f"artifact_root={root / 'artifacts'}",
        *([f"features.chunk={chunk}"] if chunk else []),
    ])


def prepare(config: PipelineConfig, rows: int, seed: int, root: Path) -> Path:
    """Clean rows as validate writes them, generated once per (rows, span, seed)."""
    from pipeline.datasets.rideshare import generate_rideshare

    dataset = config.dataset
    target = root / f"rideshare-{rows}-{(dataset.end - dataset.start).days}d-s{seed}"
    if (target / "clean").exists():
        return target
    raw = generate_rideshare(rows, dataset.start, dataset.end, seed)
    end = pa.scalar(dataset.end, pa.timestamp("us", tz="UTC"))
    raw = raw.filter(pc.field("driver_id").is_valid() & pc.field("pickup_zone").is_valid()
                     & pc.field("distance_km").is_valid() & (pc.field("distance_km") > 0)
                     & (pc.field("completed_at") >= pc.field("requested_at"))
                     & (pc.field("requested_at") < end))
    _, first = np.unique(raw["trip_id"].to_numpy(), return_index=True)
    clean = raw.take(pa.array(np.sort(first))).drop_columns(["day"])
    clean = clean.append_column("day", pc.strftime(clean["requested_at"], format="%Y-%m-%d"))
    staging = Path(tempfile.mkdtemp(dir=root))
    pads.write_dataset(clean, staging / "clean", format="parquet",
                       partitioning=pads.partitioning(pa.schema([("day", pa.string())]),
                                                      flavor="hive"))
    staging.rename(target)
    return target


# -- memory ----------------------------------------------------------------------------------
class TreeMemory:
    """Peak summed PSS of this process and all its descendants, sampled in a thread; also the
    CPU seconds they used."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak_bytes = interval, 0
        self.workers_hwm_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def cpu_seconds() -> float:
        """CPU seconds used so far by this process and its live descendants."""
        return sum(cpu_seconds(pid) for pid in descendants(os.getpid()))

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = descendants(os.getpid())
            self.peak_bytes = max(self.peak_bytes, sum(pss_bytes(pid) for pid in pids))
            for pid in pids:
                if _cmdline(pid).startswith("ray::"):
                    self.workers_hwm_bytes = max(self.workers_hwm_bytes, hwm_bytes(pid))
            self._stop.wait(self.interval)


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def hwm_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


# -- engines ---------------------------------------------------------------------------------
def run_stage(config: PipelineConfig, data: Path, output: Path) -> dict:
    import ray

    from pipeline.artifacts import Artifact, ArtifactStore
    from pipeline.stage import Output, StageContext
    from pipeline.stages import featurize
    from pipeline.stages.validate import ValidateFacts, ValidateFiles
    from pipeline.telemetry import Telemetry, TelemetrySpec

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ["RAY_worker_niceness"] = "0"  # Ray nices workers to 15; the peers run at 0
    memory = TreeMemory()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    store = ArtifactStore(str(output))
    # `data` is laid out as validate's output (clean/ partitioned by day), written by this script
    validate = Output(Artifact("validate", str(data), {"fingerprint": "bench"}),
                      ValidateFiles(str(data)),
                      ValidateFacts(quarantine_reasons={}, rows_unlabeled=0,
                                    quarantined_share=0.0, files=0))
    staging = store.begin("featurize", "bench", "bench")
    context = StageContext(featurize.FeaturizeParams.from_config(config), store,
                           {"validate": validate}, featurize.STAGE.files(staging),
                           Telemetry.start(TelemetrySpec(exporter="none")), "bench",
                           "0000000000000000")
    started, cpu = time.perf_counter(), memory.cpu_seconds()
    result = featurize.STAGE.run(context)
    seconds, cpu = time.perf_counter() - started, memory.cpu_seconds() - cpu
    ray.shutdown()
    memory.stop()
    return {"seconds": seconds, "rows": result.rows_out, "peak_bytes": memory.peak_bytes,
            "cpu_seconds": cpu,
            "peak_worker_bytes": memory.workers_hwm_bytes, "output": f"{staging}/data",
            "audit": result.facts.audit, "chunks": result.facts.chunks}


def run_polars(config: PipelineConfig, data: Path, output: Path) -> dict:
    import polars as pl

    dataset = config.dataset
    started, cpu = time.perf_counter(), _own_cpu()
    clean = pl.scan_parquet(str(data / "clean" / "**" / "*.parquet"), hive_partitioning=True)
    table = clean.select(dataset.row_key, dataset.event_time)
    for (entity, available_at), specs in _groups(window_specs(config)).items():
        frame = _events(pl, clean, entity, available_at, specs, config)
        table = table.join(frame, on=dataset.row_key, how="left")
    path = output / "polars.parquet"
    output.mkdir(parents=True, exist_ok=True)
    table.collect().write_parquet(path)
    seconds, cpu = time.perf_counter() - started, _own_cpu() - cpu
    return {"seconds": seconds, "rows": pl.scan_parquet(path).select(pl.len()).collect().item(),
            "peak_bytes": hwm_bytes(os.getpid()), "cpu_seconds": cpu, "output": str(path)}


def _events(pl, clean, entity: tuple[str, ...], available_at: str, specs: list[WindowSpec],
            config: PipelineConfig):
    """One (entity, available-at) group's features: rolling windows over source + query events."""
    key, t = config.dataset.row_key, config.dataset.event_time
    values = list(dict.fromkeys(s.column for s in specs if s.column))
    sources = clean.select(*entity, pl.col(available_at).alias("_ts"), *values,
                           pl.lit(None, pl.Int64).alias(key), pl.lit(1).alias("_source"))
    if available_at == t:  # each row is both a source and a query
        events = clean.select(*entity, pl.col(t).alias("_ts"), *values, key,
                              pl.lit(1).alias("_source"))
    else:
        queries = clean.select(*entity, pl.col(t).alias("_ts"),
                               *(pl.lit(None, pl.Float64).alias(v) for v in values), key,
                               pl.lit(0).alias("_source"))
        events = pl.concat([sources, queries])
    events = events.filter(pl.all_horizontal(pl.col(e).is_not_null() for e in entity))
    events = events.sort(*entity, "_ts")
    columns = [_polars_feature(pl, spec, entity).alias(spec.name) for spec in specs]
    return events.with_columns(columns).filter(pl.col(key).is_not_null()).select(
        key, *(spec.name for spec in specs))


def _polars_feature(pl, spec: WindowSpec, entity: tuple[str, ...]):
    def rolling(expr, how: str):
        return getattr(expr, f"rolling_{how}_by")("_ts", window_size=f"{spec.window_us}us",
                                                 closed="left").over(list(entity))

    present = pl.col(spec.column).is_not_null() if spec.column else pl.col("_source") == 1
    count = rolling(present.cast(pl.Int64), "sum")
    if spec.agg == "count":
        return count
    if spec.agg == "sum":  # polars sums an empty window to 0; the contract says null
        return pl.when(count > 0).then(rolling(pl.col(spec.column), "sum"))
    if spec.agg == "time_since_last":
        latest = rolling(pl.when(present).then(pl.col("_ts").dt.epoch("us")), "max")
        return (pl.col("_ts").dt.epoch("us") - latest) / 1e6
    if spec.agg in ("mean", "std", "min", "max"):
        return rolling(pl.col(spec.column), spec.agg)
    raise NotImplementedError(f"no polars peer for {spec.agg}")


def run_duckdb(config: PipelineConfig, data: Path, output: Path) -> dict:
    import duckdb

    dataset = config.dataset
    key, t = dataset.row_key, dataset.event_time
    started, cpu = time.perf_counter(), _own_cpu()
    connection = duckdb.connect()
    connection.execute("SET threads = 2")
    connection.execute(f"""CREATE VIEW clean AS SELECT * FROM read_parquet(
        '{data / "clean" / "**" / "*.parquet"}', hive_partitioning = true)""")
    groups = _groups(window_specs(config))
    ctes, joins, selected = [], [], []
    for i, ((entity, available_at), specs) in enumerate(groups.items()):
        ctes.append(f"g{i} AS ({_duckdb_group(entity, available_at, specs, config)})")
        joins.append(f'LEFT JOIN g{i} USING ("{key}")')
        selected += [f'g{i}."{spec.name}"' for spec in specs]
    path = output / "duckdb.parquet"
    output.mkdir(parents=True, exist_ok=True)
    connection.execute(f"""
        COPY (WITH {", ".join(ctes)}
              SELECT clean."{key}", clean."{t}", {", ".join(selected)}
              FROM clean {" ".join(joins)})
        TO '{path}' (FORMAT parquet)""")
    seconds, cpu = time.perf_counter() - started, _own_cpu() - cpu
    rows = connection.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    return {"seconds": seconds, "rows": rows, "peak_bytes": hwm_bytes(os.getpid()),
            "cpu_seconds": cpu, "output": str(path)}


def _duckdb_group(entity: tuple[str, ...], available_at: str, specs: list[WindowSpec],
                  config: PipelineConfig) -> str:
    """SQL for one (entity, available-at) group: window frames over source + query events."""
    key, t = config.dataset.row_key, config.dataset.event_time
    values = list(dict.fromkeys(s.column for s in specs if s.column))
    names = ", ".join(f'"{name}"' for name in entity)
    not_null = " AND ".join(f'"{name}" IS NOT NULL' for name in entity)
    if available_at == t:
        events = (f'SELECT {names}, "{t}" AS _ts, {"".join(f"{v}, " for v in values)}"{key}", '
                  f"1 AS _source FROM clean WHERE {not_null}")
    else:
        events = (f'SELECT {names}, "{available_at}" AS _ts, {"".join(f"{v}, " for v in values)}'
                  f'NULL AS "{key}", 1 AS _source FROM clean WHERE {not_null} UNION ALL '
                  f'SELECT {names}, "{t}" AS _ts, '
                  f'{"".join(f"NULL::DOUBLE AS {v}, " for v in values)}"{key}", 0 AS _source '
                  "FROM clean")
    columns = []
    for spec in specs:
        frame = (f"OVER (PARTITION BY {names} ORDER BY _ts RANGE BETWEEN INTERVAL "
                 f"'{spec.window_us} microseconds' PRECEDING AND CURRENT ROW EXCLUDE GROUP)")
        value = f'"{spec.column}"' if spec.column else "NULLIF(_source, 0)"
        columns.append({
            "count": f"count({value}) {frame}",
            "sum": f"sum({value}) {frame}",
            "mean": f"avg({value}) {frame}",
            "std": f"stddev_samp({value}) {frame}",
            "min": f"min({value}) {frame}",
            "max": f"max({value}) {frame}",
            "time_since_last": f"(epoch_us(_ts) - max(CASE WHEN {value} IS NOT NULL THEN "
                               f"epoch_us(_ts) END) {frame}) / 1e6",
        }[spec.agg] + f' AS "{spec.name}"')
    return (f'SELECT "{key}", {", ".join(columns)} FROM ({events}) '
            f'QUALIFY "{key}" IS NOT NULL')


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _groups(specs: list[WindowSpec]) -> dict[tuple[tuple[str, ...], str], list[WindowSpec]]:
    groups: dict[tuple[tuple[str, ...], str], list[WindowSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.entity, spec.available_at), []).append(spec)
    return groups


RUNNERS: dict[str, Callable[[PipelineConfig, Path, Path], dict]] = {
    "stage": run_stage, "polars": run_polars, "duckdb": run_duckdb}


# -- comparison and report -------------------------------------------------------------------
def compare(config: PipelineConfig, outputs: dict[str, str]) -> dict:
    """Per feature and engine, how many rows differ from the stage (rtol = atol = 1e-9)."""
    key = config.dataset.row_key
    names = [spec.name for spec in window_specs(config)]
    tables = {engine: pads.dataset(path, format="parquet").to_table(columns=[key, *names])
              .sort_by(key) for engine, path in outputs.items()}
    stage = tables["stage"]
    report = {}
    for engine, table in tables.items():
        if engine == "stage":
            continue
        assert table[key].equals(stage[key]), f"{engine} has other rows than the stage"
        report[engine] = {name: _differences(stage[name], table[name]) for name in names}
    return report


def _differences(left: pa.ChunkedArray, right: pa.ChunkedArray) -> int:
    a = pc.cast(left, pa.float64()).to_numpy(zero_copy_only=False)
    b = pc.cast(right, pa.float64()).to_numpy(zero_copy_only=False)
    missing = np.isnan(a) != np.isnan(b)
    close = np.isclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True)
    return int((missing | ~close).sum())


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(results["engines"])
    speed = [results["engines"][e]["rows_per_s"] for e in engines]
    memory = [results["engines"][e]["peak_mb"] for e in engines]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(engines, speed, color=["#3b7dd8", "#999999", "#bbbbbb"])
    left.set_title(f"rows/s, {results['rows']:,} rows ({results['cpus']} CPUs)")
    for i, value in enumerate(speed):
        left.text(i, value, f"{value:,.0f}", ha="center", va="bottom")
    right.bar(engines, memory, color=["#3b7dd8", "#999999", "#bbbbbb"])
    right.set_title("peak memory, MB")
    for i, value in enumerate(memory):
        right.text(i, value, f"{value:,.0f}", ha="center", va="bottom")
    figure.suptitle(f"featurize: default feature set of configs/local.yaml, chunk "
                    f"{results['chunk']}, {results['days']} days")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def spawn(engine: str, rows: int, args: argparse.Namespace, data: Path, output: Path) -> dict:
    """Run one engine in a fresh interpreter, so its memory peak is its own."""
    command = [sys.executable, __file__, "--engine", engine, "--rows", str(rows),
               "--rows-per-day", str(args.rows_per_day), "--seed", str(args.seed),
               *(["--chunk", args.chunk] if args.chunk else []),
               "--data", str(data),
               "--work", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{engine} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["seconds"]
    result["rows_per_cpu_s"] = result["rows"] / result["cpu_seconds"]
    result["peak_mb"] = result.pop("peak_bytes") / 2**20
    if "peak_worker_bytes" in result:
        result["peak_worker_mb"] = result.pop("peak_worker_bytes") / 2**20
    print(f"{engine:>7}: {result['rows']:,} rows in {result['seconds']:.1f}s = "
          f"{result['rows_per_s']:,.0f} rows/s ({result['cpu_seconds']:.0f} CPU s), "
          f"peak {result['peak_mb']:,.0f} MB", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rows-per-day", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk", default="7d",
                        help="features.chunk for the stage (7d: no longer than the halo)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "benchmarks")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--scaling", action="store_true", help="stage peak memory, 1M vs 10M")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)

    if args.engine:  # a child process: one engine, result as the last line of stdout
        config = benchmark_config(args.rows, args.rows_per_day, args.work, args.chunk)
        data = prepare(config, args.rows, args.seed, args.data)
        print(json.dumps(RUNNERS[args.engine](config, data, args.work)))
        return

    args.results.mkdir(parents=True, exist_ok=True)
    if args.scaling:
        scaling(args)
        return
    work = Path(tempfile.mkdtemp(prefix="featurize-bench-"))
    config = benchmark_config(args.rows, args.rows_per_day, work, args.chunk)
    data = prepare(config, args.rows, args.seed, args.data)
    engines = {engine: spawn(engine, args.rows, args, data, work / engine) for engine in ENGINES}
    disagreements = compare(config, {e: r.pop("output") for e, r in engines.items()})
    results = {
        "rows": engines["stage"]["rows"],
        "rows_generated": args.rows,
        "days": (config.dataset.end - config.dataset.start).days,
        "cpus": os.cpu_count(),
        "chunk": format_duration(config.features.chunk),
        "features": [spec.name for spec in window_specs(config)],
        "engines": engines,
        "speedup_vs_polars": engines["stage"]["rows_per_s"] / engines["polars"]["rows_per_s"],
        "speedup_vs_duckdb": engines["stage"]["rows_per_s"] / engines["duckdb"]["rows_per_s"],
        "cpu_efficiency_vs_polars": engines["stage"]["rows_per_cpu_s"]
        / engines["polars"]["rows_per_cpu_s"],
        "memory_vs_polars": engines["stage"]["peak_mb"] / engines["polars"]["peak_mb"],
        "memory_vs_duckdb": engines["stage"]["peak_mb"] / engines["duckdb"]["peak_mb"],
        "values_differing_from_stage": disagreements,
        "agree": all(n == 0 for engine in disagreements.values() for n in engine.values()),
        "peak_memory_method": "stage: max over time of summed PSS of driver + all Ray processes "
                              "(100 ms samples); peak_worker_mb: largest VmHWM of one Ray worker; "
                              "polars/duckdb: VmHWM of their process",
    }
    (args.results / "featurize.json").write_text(json.dumps(results, indent=2, default=str))
    chart(results, args.results / "featurize.png")
    shutil.rmtree(work)
    print(json.dumps({k: v for k, v in results.items() if k != "engines"}, indent=2))


def scaling(args: argparse.Namespace) -> None:
    """Stage peak memory at 1M and 10M rows, same density (so 10x the time span)."""
    runs = {}
    for rows in (1_000_000, 10_000_000):
        work = Path(tempfile.mkdtemp(prefix="featurize-scaling-"))
        prepare(benchmark_config(rows, args.rows_per_day, work), rows, args.seed, args.data)
        runs[rows] = spawn("stage", rows, args, args.data, work / "stage")
        runs[rows].pop("output")
        shutil.rmtree(work)
    small, large = runs[1_000_000], runs[10_000_000]
    results = {"chunk": args.chunk, "rows_per_day": args.rows_per_day,
               "runs": {str(k): v for k, v in runs.items()},
               "peak_growth": large["peak_mb"] / small["peak_mb"],
               "peak_worker_growth": large["peak_worker_mb"] / small["peak_worker_mb"],
               "acceptance": "peak_growth <= 1.3"}
    (args.results / "featurize-scaling.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
