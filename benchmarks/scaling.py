"""Per-stage cost per million rows and peak memory of `pipeline run`, from 1M to 30M rows.

    python benchmarks/scaling.py                             # 1M, 10M, 30M → benchmarks/results/scaling.{json,png}
    python benchmarks/scaling.py --sizes 1M,10M
    python benchmarks/scaling.py --sizes 10M,30M --layout longer  # → scaling-longer.{json,png}
    python benchmarks/scaling.py --smoke                     # 20k, 40k, one run each: does it still run

Each size is configs/local.yaml's ride-share table (`ensure_dataset`, the generator `pipeline
run` uses) at that many rows. With `--layout denser` (the default) it spans the config's 60 days,
so more rows means denser days: more trips per driver and zone in every window, and more rows in
every featurize chunk (a week of events plus its lookback). With `--layout longer` the smallest
size spans the 60 days and larger ones span proportionally more days (the split dates stretched
with them), so every day, and every chunk, is as dense as the smallest size's: the growth of a
retrain that keeps more history. Each table is generated once per size before any timing, under
--data (a fresh folder in /var/tmp unless given, deleted afterwards; a given one is reused, and the
JSON records generation seconds and the source's bytes on disk).

Each run is a first `python -m pipeline run -c configs/local.yaml --set dataset.source=... --set
dataset.generate.rows=N --set artifact_root=<fresh> --set train.patience=<train.epochs> --json`
as a child process: every run trains all its epochs, as early stopping would make train's work
per row depend on where one shuffle stopped improving. Every size but the largest runs --repeats
times (default 3; min/median/max quoted, so that the largest size's
one run is compared with the noise of the smaller ones), the largest once. Per run: each
stage's seconds (the JSON summary), ray.start (the run's spans, apart from every stage), the wall,
and per stage seconds per million source rows.

Memory, sampled every --interval seconds by a thread of this process over the child's process
tree (/proc; psutil is not a dependency): the driver's peak RSS (its VmHWM at the last sample,
or the largest VmRSS seen) and its peak private memory (RssAnon: in local mode the training
loop runs in the driver, and RSS then counts every object-store page of the training split it
read, which are shared, not the driver's), also per stage (its peak while the stage's span was
open, from the run's trace: which stage holds the driver's peak); the peak over time of the
summed RSS of all Ray processes it started (workers, raylet, GCS; shared object-store pages count
once per process that maps them, so this overstates); the same sum over the workers only (`ray::`
processes); and the largest VmHWM of one worker, and its largest RssAnon (a worker that reads
blocks from the object store maps them, and VmHWM counts those shared pages).

The largest size against the next smaller one (`largest_vs_previous`): per part, the ratio of
their median seconds per million rows, and the ratios of the driver's median peak RSS and peak
private memory (1.0 = flat). The target: every stage's seconds per million rows at the largest
size at or below its median at the next smaller size (a ratio of at most 1.0); the driver's
private peak growth is reported beside the growth in rows, not judged. --smoke runs the same
measurement at 20k and 40k rows, once each, and writes to a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import (
    REPO,
    Measurement,
    Summary,
    benchmark_parser,
    child_env,
    generate_source,
    parse_sizes,
    results_folder,
    span_seconds,
    spread,
)
from processes import Sampler, cmdline, descendants, status_bytes

from pipeline.core.config import load_config
from pipeline.stages.dag import STAGES as DAG

CONFIG = REPO / "configs" / "local.yaml"
STAGES = tuple(stage.name for stage in DAG)
PARTS = ("ray.start", *STAGES)
LAYOUTS = ("denser", "longer")
ALL_EPOCHS = [f"train.patience={load_config(CONFIG).train.epochs}"]
"""Every run trains every epoch: early stopping would make train's work per row depend on when a
given shuffle stopped improving (3 to 5 epochs), not on the number of rows."""


# -- memory ----------------------------------------------------------------------------------
class TreeSampler(Sampler):
    """Peak memory of a driver process and the Ray processes below it."""

    def __init__(self, driver: int, interval: float):
        self.driver = driver
        self.driver_peak = self.ray_sum_peak = self.workers_sum_peak = self.worker_hwm = 0
        self.worker_private_peak = 0
        self.driver_private_peak = self.samples = 0
        self.driver_private: list[tuple[int, int]] = []  # (time.time_ns(), RssAnon) per sample
        super().__init__(interval)

    def result(self) -> dict[str, float]:
        mb = 2**20
        return {"driver_peak_mb": self.driver_peak / mb,
                "driver_private_peak_mb": self.driver_private_peak / mb,
                "ray_sum_rss_peak_mb": self.ray_sum_peak / mb,
                "workers_sum_rss_peak_mb": self.workers_sum_peak / mb,
                "largest_worker_hwm_mb": self.worker_hwm / mb,
                "largest_worker_private_peak_mb": self.worker_private_peak / mb,
                "samples": self.samples}

    def _sample(self) -> None:
        ray_sum = workers_sum = 0
        for pid in descendants(self.driver):
            rss, hwm, private = status_bytes(pid)
            if pid == self.driver:
                self.driver_peak = max(self.driver_peak, rss, hwm)
                self.driver_private_peak = max(self.driver_private_peak, private)
                self.driver_private.append((time.time_ns(), private))
                continue
            ray_sum += rss
            if cmdline(pid).startswith("ray::"):
                workers_sum += rss
                self.worker_hwm = max(self.worker_hwm, hwm)
                self.worker_private_peak = max(self.worker_private_peak, private)
        self.ray_sum_peak = max(self.ray_sum_peak, ray_sum)
        self.workers_sum_peak = max(self.workers_sum_peak, workers_sum)
        self.samples += 1


def private_peaks_by_part(run_dir: Path, samples: list[tuple[int, int]]) -> dict[str, float]:
    """The driver's peak private memory (MB) while each part of the run was open (its
    `stage.<name>` or `ray.start` span in the run's trace): which stage holds the driver's peak."""
    from pipeline.commands.profile import load_run_spans

    peaks = {}
    for span in load_run_spans(str(run_dir)):
        part = span["name"].removeprefix("stage.")
        if part in PARTS and span["end_ns"]:
            inside = [private for at, private in samples
                      if span["start_ns"] <= at <= span["end_ns"]]
            peaks[part] = max([peaks.get(part, 0.0), *(b / 2**20 for b in inside)])
    return peaks


# -- one run ---------------------------------------------------------------------------------
def run_once(source: Path, rows: int, artifact_root: Path, interval: float,
             sets: list[str]) -> dict:
    """A first `pipeline run` as a child process, with its process tree's memory sampled."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "-c", str(CONFIG),
         "--set", f"dataset.source={source}", "--set", f"dataset.generate.rows={rows}",
         "--set", f"artifact_root={artifact_root}",
         *(arg for value in sets for arg in ("--set", value)), "--json"],
        cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(child.pid, interval)
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - started
    memory = sampler.stop()
    if child.returncode not in (0, 3):
        raise RuntimeError(f"pipeline run failed:\n{stderr[-4000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    if any(s["status"] != "ran" for s in summary["stages"]):
        raise RuntimeError(f"not a first run: {summary['stages']}")
    seconds = {s["name"]: s["seconds"] for s in summary["stages"]}
    run_dir = artifact_root / "runs" / summary["run_id"]
    seconds["ray.start"] = span_seconds(run_dir, "ray.start")
    memory["driver_private_peak_by_part_mb"] = private_peaks_by_part(
        run_dir, sampler.driver_private)
    train = next(s for s in summary["stages"] if s["name"] == "train")
    manifest = artifact_root / "stages" / "train" / train["cache_key"] / "manifest.json"
    return {"wall_s": wall, "seconds": seconds,
            "epochs_run": json.loads(manifest.read_text())["details"]["epochs_run"],
            "s_per_m_rows": {part: seconds[part] / (rows / 1e6) for part in PARTS},
            "memory": memory,
            "rows": {s["name"]: {"in": s["rows_in"], "out": s["rows_out"]}
                     for s in summary["stages"]},
            "test_rmse": summary["test_metrics"]["rmse"], "load_average": os.getloadavg()}


def stretched(rows: int, base_rows: int) -> list[str]:
    """--layout longer: config overrides that stretch the config's days, and its split dates
    with them, by rows / base_rows (whole days), keeping the rows per day; none for the base."""
    config = load_config(CONFIG)
    start, scale = config.dataset.start, rows / base_rows
    if rows == base_rows:
        return []

    def at(moment: datetime) -> str:
        return (start + timedelta(days=round((moment - start).days * scale))).isoformat()

    return [f"dataset.end={at(config.dataset.end)}",
            f"split.train_until={at(config.split.train_until)}",
            f"split.validation_until={at(config.split.validation_until)}"]


def days(sets: list[str]) -> int:
    """The days a stretched table spans (the name of its source folder)."""
    config = load_config(CONFIG, sets)
    return (config.dataset.end - config.dataset.start).days


def summarise(rows: int, runs: list[dict], generation_s: float, source_bytes: int,
              sets: list[str]) -> dict:
    return {
        "rows": rows, "config_sets": sets, "runs_count": len(runs), "generation_s": generation_s,
        "source_mb": source_bytes / 2**20,
        "wall_s": spread([r["wall_s"] for r in runs]),
        "s_per_m_rows": {part: spread([r["s_per_m_rows"][part] for r in runs]) for part in PARTS},
        "memory_mb": {name: spread([r["memory"][name] for r in runs])
                      for name in ("driver_peak_mb", "driver_private_peak_mb",
                                   "ray_sum_rss_peak_mb", "workers_sum_rss_peak_mb",
                                   "largest_worker_hwm_mb", "largest_worker_private_peak_mb")},
        "driver_private_peak_by_part_mb": {
            part: spread([r["memory"]["driver_private_peak_by_part_mb"].get(part, 0.0)
                          for r in runs]) for part in PARTS},
        "epochs_run": [r["epochs_run"] for r in runs],
        "runs": runs,
    }


def trend(sizes: list[dict]) -> dict:
    """Largest size over the one before it: per-stage s/M rows and driver peak (1.0 = flat)."""
    if len(sizes) < 2:
        return {}
    before, last = sizes[-2], sizes[-1]
    return {"compared": [before["rows"], last["rows"]],
            "s_per_m_rows_ratio": {part: last["s_per_m_rows"][part]["median"]
                                   / before["s_per_m_rows"][part]["median"] for part in PARTS},
            "driver_peak_ratio": last["memory_mb"]["driver_peak_mb"]["median"]
            / before["memory_mb"]["driver_peak_mb"]["median"],
            "driver_private_peak_ratio": last["memory_mb"]["driver_private_peak_mb"]["median"]
            / before["memory_mb"]["driver_private_peak_mb"]["median"]}


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    rows = [size["rows"] for size in sizes]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for part in PARTS:
        values = [size["s_per_m_rows"][part] for size in sizes]
        median = [v["median"] for v in values]
        error = [[m - v["min"] for m, v in zip(median, values)],
                 [v["max"] - m for m, v in zip(median, values)]]
        left.errorbar(rows, median, yerr=error, marker="o", capsize=3, label=part)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("rows")
    left.set_ylabel("seconds per million rows (median; bars: min-max)")
    left.set_title("per-stage cost per row: flat or falling is linear or better", fontsize=9)
    left.legend(fontsize=8)
    for name, label in (("driver_peak_mb", "driver peak RSS"),
                        ("driver_private_peak_mb", "driver peak private (RssAnon)"),
                        ("ray_sum_rss_peak_mb", "all Ray processes, summed RSS peak"),
                        ("workers_sum_rss_peak_mb", "Ray workers, summed RSS peak"),
                        ("largest_worker_hwm_mb", "largest single worker peak"),
                        ("largest_worker_private_peak_mb",
                         "largest single worker peak private (RssAnon)")):
        right.plot(rows, [size["memory_mb"][name]["median"] for size in sizes], marker="o",
                   label=label)
    right.set_xscale("log")
    right.set_xlabel("rows")
    right.set_ylabel("MB")
    right.set_title("peak memory", fontsize=9)
    right.legend(fontsize=8)
    layout = ("60 days, denser with rows" if results["layout"] == "denser"
              else "rows per day fixed, more days with rows")
    figure.suptitle(f"scaling: first `pipeline run -c configs/local.yaml`, {layout} "
                    f"({results['provenance']['cpus']} CPUs, load "
                    f"{results['provenance']['load_average_before'][0]:.0f} at start)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def stages_within_target(trend: dict) -> bool | None:
    """Every stage's s/M rows at the largest size at or below its median at the next smaller
    size; None with a single size."""
    if not trend:
        return None
    return all(trend["s_per_m_rows_ratio"][stage] <= 1.0 for stage in STAGES)


def summary(results: dict) -> Summary:
    trend = results["largest_vs_previous"]
    rows = ", ".join(f"{size['rows']:,}" for size in results["sizes"])
    benchmark = f"scaling, first `pipeline run` at {rows} rows ({results['layout']} layout)"
    if trend:
        before, last = trend["compared"]
        ratios = ", ".join(f"{stage} {trend['s_per_m_rows_ratio'][stage]:.2f}x"
                           for stage in STAGES)
        result = (f"s/M rows at {last:,} over {before:,} rows: {ratios}; driver private peak "
                  f"{trend['driver_private_peak_ratio']:.2f}x (peak RSS "
                  f"{trend['driver_peak_ratio']:.2f}x) for {last / before:.1f}x the rows")
    else:
        result = "one size: nothing to compare"
    return Summary(
        benchmark=benchmark,
        peer="the same pipeline at the next smaller size, in the same run",
        result=result,
        target="every stage's s/M rows at the largest size <= its median at the next smaller "
               "size (driver private peak growth reported, not judged)",
        met=stages_within_target(trend))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, repeats=3, smoke="20k and 40k rows, one run each")
    parser.add_argument("--sizes", default="1M,10M,30M",
                        help="comma-separated row counts (k and M suffixes)")
    parser.add_argument("--interval", type=float, default=0.25, help="memory sampling seconds")
    parser.add_argument("--data", type=Path, help="where sources are generated (and reused); "
                        "default: a temporary folder under /var/tmp, deleted afterwards")
    parser.add_argument("--layout", choices=LAYOUTS, default="denser",
                        help="denser: every size over the config's 60 days; longer: the "
                             "smallest size's rows per day, over more days")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats = "20k,40k", 1
    results_dir = results_folder(args.results, args.smoke)
    sizes_rows = parse_sizes(args.sizes)
    measurement = Measurement()
    data = args.data or Path(tempfile.mkdtemp(prefix="scaling-", dir="/var/tmp"))
    work = Path(tempfile.mkdtemp(prefix="scaling-runs-", dir="/var/tmp"))
    sizes = []
    try:
        for rows in sizes_rows:
            sets = stretched(rows, sizes_rows[0]) if args.layout == "longer" else []
            source = data / (f"rideshare-{rows}" + (f"-{days(sets)}d" if sets else ""))
            generation_s = generate_source(CONFIG, source,
                                           [f"dataset.generate.rows={rows}", *sets])
            run_sets, runs = [*sets, *ALL_EPOCHS], []
            for repeat in range(args.repeats if rows < sizes_rows[-1] else 1):
                root = work / f"artifacts-{rows}-{repeat}"
                runs.append(run_once(source, rows, root, args.interval, run_sets))
                shutil.rmtree(root)
                run = runs[-1]
                print(f"{rows:,} rows, run {repeat + 1}: {run['wall_s']:.1f}s wall, "
                      f"{run['epochs_run']} epochs, "
                      + ", ".join(f"{part} {run['s_per_m_rows'][part]:.1f}" for part in PARTS)
                      + f" s/M rows; driver peak {run['memory']['driver_peak_mb']:,.0f} MB "
                      f"({run['memory']['driver_private_peak_mb']:,.0f} private; by part "
                      + ", ".join(f"{part} {mb:,.0f}" for part, mb in
                                  run['memory']['driver_private_peak_by_part_mb'].items())
                      + "), "
                      f"Ray sum peak {run['memory']['ray_sum_rss_peak_mb']:,.0f} MB; load "
                      f"{run['load_average'][0]:.1f}", flush=True)
            sizes.append(summarise(rows, runs, generation_s, folder_bytes(source), run_sets))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.data is None:
            shutil.rmtree(data, ignore_errors=True)

    results = {"config": "configs/local.yaml", "layout": args.layout, "sizes": sizes,
               "largest_vs_previous": trend(sizes),
               "memory_method": "thread sampling /proc/<pid>/status of the driver and every "
                                "process below it; RSS counts shared object-store pages once "
                                "per process that maps them"}
    name = "scaling.json" if args.layout == "denser" else f"scaling-{args.layout}.json"
    measurement.save(results, results_dir / name, chart, summary(results))


if __name__ == "__main__":
    main()
