"""What does featurize's proof cost? The stage with its time-travel audit against without, in one run.

    python benchmarks/audit_cost.py             # 2M trips, 3 runs of each arm
    python benchmarks/audit_cost.py --smoke     # 50k trips, one run each

Both arms are `pipeline stage featurize --json` (see benchmarks/featurize.py) on the same
validated rows, each on a fresh artifact root: `features.audit_sample` as configured (the audit
recomputes that many sampled rows from only the data that existed at their time, and perturbs
their label-time values) against `features.audit_sample=0` (no audit). Arms alternate. Reported:
the stage's wall and CPU seconds per arm (medians), the audit's own seconds from the manifest,
and the ratio of the audited stage's seconds to the unaudited one's.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from featurize import CONFIG, stage_arm_arguments, stage_arms
from measure import Measurement, Summary, spread, spread_bars

from pipeline.core.config import load_config


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    names = list(arms)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, measure, title in zip(axes, ("seconds", "cpu_seconds"),
                                    ("stage wall seconds", "CPU seconds, every process")):
        spread_bars(axis, {a: arms[a][measure] for a in names}, ["#3b7dd8", "#999999"], "%.1f")
        axis.set_title(title, fontsize=9)
    figure.suptitle(f"featurize audit, {results['rows']:,} trips, {results['audit_sample']} "
                    f"sampled rows: {results['stage_seconds_ratio']:.2f}x the wall "
                    f"(median, min to max of {results['repeats']})", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = stage_arm_arguments(__doc__, argv, rows=2_000_000, repeats=3)
    measurement = Measurement()
    sample = load_config(CONFIG).features.audit_sample
    runs = stage_arms(args.rows, args.rows_per_day, args.repeats,
                      {"audited": [], "unaudited": ["features.audit_sample=0"]}, args.data)
    medians = {arm: {"seconds": spread([r["seconds"] for r in found]),
                     "cpu_seconds": spread([r["cpu_seconds"] for r in found])}
               for arm, found in runs.items()}
    audit_seconds = statistics.median(r["audit"]["seconds"] for r in runs["audited"])
    ratio = medians["audited"]["seconds"]["median"] / medians["unaudited"]["seconds"]["median"]
    cpu_ratio = (medians["audited"]["cpu_seconds"]["median"]
                 / medians["unaudited"]["cpu_seconds"]["median"])
    results = {"rows": runs["audited"][0]["rows"], "rows_generated": args.rows,
               "audit_sample": sample, "repeats": args.repeats, "arms": medians,
               "audit_seconds": audit_seconds, "stage_seconds_ratio": ratio,
               "stage_cpu_seconds_ratio": cpu_ratio, "runs": runs}
    measurement.save(results, args.results / "featurize_audit_cost.json", chart, Summary(
        benchmark=f"featurize audit cost, {results['rows']:,} trips, {sample} sampled rows",
        peer="the same stage with features.audit_sample=0",
        result=f"the audited stage takes {ratio:.2f}x the wall and {cpu_ratio:.2f}x the CPU "
               f"seconds of the unaudited one (audit {audit_seconds:.1f} s, median of "
               f"{args.repeats} alternating runs)"))


if __name__ == "__main__":
    main()
