"""What does instrumentation cost? The featurize stage with telemetry off vs on, in one run.

    python benchmarks/telemetry_overhead.py             # 1M trips, 5 runs of each arm
    python benchmarks/telemetry_overhead.py --smoke     # 50k trips, one run each

Both arms are `pipeline stage featurize --json` (see benchmarks/featurize.py: Ray Data chunk
tasks, the audit) on the same validated rows, each on a fresh artifact root; only the telemetry
differs: `telemetry.exporter=none` (no provider at all) against `jsonl` (every chunk, audit and
driver span exported and flushed to files, plus metrics). Arms alternate; the median per arm of
the stage's own seconds is reported, and overhead = 1 - on/off throughput.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from featurize import stage_arm_arguments, stage_arms
from measure import Measurement, Summary, spread

ARMS = {"none": ["telemetry.exporter=none"], "jsonl": ["telemetry.exporter=jsonl"]}
BUDGET = 0.03


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    values = [arms[a]["rows_per_second"] for a in ARMS]
    bars = axis.bar([f"telemetry {a}" for a in ARMS], values, color=["#999999", "#3b75af"])
    axis.bar_label(bars, labels=[f"{v:,.0f} rows/s" for v in values])
    axis.set_ylabel("featurize rows/s (median)")
    axis.set_title(f"instrumentation overhead: {results['overhead_percent']:+.1f}% "
                   f"({results['rows']:,} rows, {results['repeats']} runs each)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = stage_arm_arguments(__doc__, argv, rows=1_000_000, repeats=5)
    measurement = Measurement()
    runs = stage_arms(args.rows, args.rows_per_day, args.repeats, ARMS, args.data)
    rows = runs["none"][0]["rows"]
    arms = {arm: {"seconds": spread([r["seconds"] for r in found]),
                  "rows_per_second": rows / statistics.median(r["seconds"] for r in found)}
            for arm, found in runs.items()}
    ratio = arms["jsonl"]["rows_per_second"] / arms["none"]["rows_per_second"]
    results = {"rows": rows, "repeats": args.repeats, "arms": arms,
               "throughput_ratio_on_vs_off": ratio, "overhead_percent": (1 - ratio) * 100,
               "runs": runs}
    measurement.save(results, args.results / "telemetry_overhead.json", chart, Summary(
        benchmark=f"telemetry overhead on featurize, {rows:,} trips",
        peer="the same stage with telemetry.exporter=none",
        result=f"telemetry on at {ratio:.3f}x the throughput of telemetry off (median of "
               f"{args.repeats} alternating runs)",
        target=f"overhead <= {BUDGET:.0%}", met=1 - ratio <= BUDGET))


if __name__ == "__main__":
    main()
