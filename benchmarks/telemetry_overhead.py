"""What does instrumentation cost? The featurize stage with telemetry off vs on, in one run.

Both arms run the real stage function (`pipeline.stages.featurize.run`, Ray Data chunk tasks, the
audit) on the same published clean rows; only the telemetry differs: exporter "none" (no provider
at all) against "jsonl" (every chunk, audit and driver span exported and flushed to files, plus
metrics). Arms alternate within each repetition so drift on a noisy machine hits both alike; the
median per arm is reported, and overhead = 1 - on/off throughput.

    python benchmarks/telemetry_overhead.py                 # 1M rows, 5 repetitions
    python benchmarks/telemetry_overhead.py --rows 200000 --repeats 3

Writes benchmarks/results/telemetry_overhead.json and telemetry_overhead.png.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("none", "jsonl")


def prepare(rows: int, workdir: Path):
    """Generate the source, then ingest and validate it once through the runner."""
    from pipeline.runner import Runner, published_outputs

    overrides = [f"dataset.source={workdir / 'source'}", f"artifact_root={workdir / 'artifacts'}",
                 f"dataset.generate.rows={rows}", "telemetry.exporter=none"]
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "local.yaml", overrides)
    runner = Runner(config, echo=lambda line: None)
    runner.run(only="ingest")
    Runner(config, echo=lambda line: None).run(only="validate")
    return config, runner.store, published_outputs(config, runner.store)["validate"]


def featurize_once(config, store, validate, arm: str, index: int, run_dir: Path) -> float:
    """Seconds for one featurize run with the given telemetry exporter."""
    from pipeline.stage import StageContext
    from pipeline.stages.featurize import STAGE, FeaturizeParams, run
    from pipeline.telemetry import Telemetry, TelemetrySpec

    spec = TelemetrySpec(exporter=arm, service_name="bench", run_dir=str(run_dir / f"{arm}-{index}"))
    telemetry = Telemetry.start(spec)
    key = f"{index + 1:08x}{'0' if arm == 'none' else '1'}"  # hex: the audit seeds from it
    output = store.begin("featurize", key, "bench")
    context = StageContext(FeaturizeParams.from_config(config), store, {"validate": validate},
                           STAGE.files(output), telemetry, "bench", key)
    started = time.perf_counter()
    with telemetry.span("stage.featurize"):
        run(context)
    telemetry.shutdown()
    seconds = time.perf_counter() - started
    store.abandon(output)
    return seconds


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = [arms[a]["rows_per_second"] for a in ARMS]
    bars = ax.bar([f"telemetry {a}" for a in ARMS], values, color=["#999999", "#3b75af"])
    ax.bar_label(bars, labels=[f"{v:,.0f} rows/s" for v in values])
    ax.set_ylabel("featurize rows/s (median)")
    ax.set_title(f"Instrumentation overhead: {result['overhead_percent']:+.1f}% "
                 f"({result['rows']:,} rows)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as tmp:
        workdir = Path(tmp)
        config, store, validate = prepare(args.rows, workdir)
        rows = validate.manifest["rows"]["out"]
        featurize_once(config, store, validate, "none", -1, workdir)  # warm workers and caches
        seconds = {arm: [] for arm in ARMS}
        for index in range(args.repeats):
            for arm in (ARMS if index % 2 == 0 else ARMS[::-1]):
                seconds[arm].append(featurize_once(config, store, validate, arm, index, workdir))
    arms = {arm: {"seconds": values, "median_seconds": statistics.median(values),
                  "rows_per_second": rows / statistics.median(values)} for arm, values in seconds.items()}
    ratio = arms["jsonl"]["rows_per_second"] / arms["none"]["rows_per_second"]
    result = {
        "benchmark": "telemetry_overhead", "rows": rows, "repeats": args.repeats, "arms": arms,
        "throughput_ratio_on_vs_off": round(ratio, 4),
        "overhead_percent": round((1 - ratio) * 100, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "telemetry_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "telemetry_overhead.png")
    print(json.dumps({k: result[k] for k in ("rows", "throughput_ratio_on_vs_off",
                                              "overhead_percent")}))


if __name__ == "__main__":
    main()
