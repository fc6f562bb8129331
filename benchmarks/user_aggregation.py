"""What does a team's own window aggregation cost? The built-in `mean` against the same arithmetic
written as a user aggregation in the documented vectorised form, in one run.

    python benchmarks/user_aggregation.py             # 10M trips, 3 runs of each arm
    python benchmarks/user_aggregation.py --smoke     # 50k trips, one run each

Both arms are `pipeline stage featurize --json` (see benchmarks/featurize.py) on the same
validated rows, each on a fresh artifact root, arms alternated: the config's windows as they are
(three of them `agg: mean`), against those three as `agg: rideshare_features:plain_mean`
(`examples/rideshare_features.py`: `window.sum(window.values) / window.count()`). The stage's
audit recomputes both. Reported: the stage's rows per second per arm (medians) and their ratio,
user over built-in.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from featurize import CONFIG, stage_arm_arguments, stage_arms
from measure import REPO, Measurement, Summary, spread, spread_bars

from pipeline.core.config import load_config

MODULE = REPO / "examples" / "rideshare_features.py"
TARGET = 0.5  # the user arm's rows/s at least this share of the built-in's


def user_arm() -> list[str]:
    """The `--set`s that turn every built-in mean window into the user aggregation."""
    windows = load_config(CONFIG).features.windows
    return [f"features.module={MODULE}",
            *(f"features.windows.{i}.agg=rideshare_features:plain_mean"
              for i, window in enumerate(windows) if window.agg == "mean")]


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    spread_bars(axis, {arm: found["rows_per_second"] for arm, found in results["arms"].items()},
                ["#999999", "#3b7dd8"], "%.0f")
    axis.set_ylabel("featurize rows / s (stage clock)")
    figure.suptitle(f"user mean vs built-in mean, {results['rows']:,} trips: "
                    f"{results['ratio']:.2f}x (median of {results['repeats']})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = stage_arm_arguments(__doc__, argv, rows=10_000_000, repeats=3)
    measurement = Measurement()
    runs = stage_arms(args.rows, args.rows_per_day, args.repeats,
                      {"built-in mean": [], "user mean": user_arm()}, args.data)
    rates = {arm: {"rows_per_second": spread([r["rows"] / r["seconds"] for r in found]),
                   "seconds": spread([r["seconds"] for r in found])}
             for arm, found in runs.items()}
    ratio = (rates["user mean"]["rows_per_second"]["median"]
             / rates["built-in mean"]["rows_per_second"]["median"])
    met = "met" if ratio >= TARGET else "not met"
    results = {"rows": runs["built-in mean"][0]["rows"], "rows_generated": args.rows,
               "repeats": args.repeats, "arms": rates, "ratio": ratio, "target": TARGET,
               "runs": runs}
    measurement.save(results, args.results / "user_aggregation.json", chart, Summary(
        benchmark=f"user window aggregation, {results['rows']:,} trips, three mean windows",
        peer="the built-in mean",
        result=f"the user aggregation's featurize at {ratio:.2f}x the built-in's rows/s (median "
               f"of {args.repeats} alternating runs) (target >= {TARGET}x at 10M rows: "
               f"{met if not args.smoke else 'not judged at this size'})"))


if __name__ == "__main__":
    main()
