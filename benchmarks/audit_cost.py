"""What the featurize audit costs: this checkout's stage vs a baseline commit's, in one run.

    git worktree add /tmp/baseline 17a1bf6   # the commit before the perturbation check
    python benchmarks/audit_cost.py --baseline /tmp/baseline --rows 2000000 --repeats 3
    # → benchmarks/results/featurize_audit_cost.json

Each run is `benchmarks/featurize.py --engine stage` of one checkout (its own code and its own copy
of the benchmark, on the same clean rows) in a fresh process; runs alternate baseline, this
checkout, baseline, ... so that a machine shared with other work slows both alike. Reported: the
stage's wall and CPU seconds and the audit's seconds (from its manifest facts), medians, and the
ratio of this checkout's stage seconds to the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_stage(checkout: Path, args: argparse.Namespace) -> dict:
    """One stage run of `checkout` in a fresh interpreter; its benchmark's JSON line."""
    with tempfile.TemporaryDirectory(prefix="audit-cost-") as work:
        command = [sys.executable, str(checkout / "benchmarks" / "featurize.py"),
                   "--engine", "stage", "--rows", str(args.rows), "--data", str(args.data),
                   "--work", work]
        # Ray puts the driver's working directory first on its workers' path: the checkout's
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)})
    if done.returncode:
        raise RuntimeError(f"{checkout} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": result["seconds"], "cpu_seconds": result["cpu_seconds"],
            "audit_seconds": result["audit"]["seconds"], "rows": result["rows"],
            "audit": result["audit"]}


def summary(runs: list[dict]) -> dict:
    return {f"median_{name}": statistics.median(run[name] for run in runs)
            for name in ("seconds", "cpu_seconds", "audit_seconds")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="a checkout of the baseline commit (e.g. a git worktree)")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "benchmarks")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    checkouts = {"baseline": args.baseline.resolve(), "current": REPO}
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    for repeat in range(args.repeats):
        for name, checkout in checkouts.items():
            runs[name].append(run_stage(checkout, args))
            last = runs[name][-1]
            print(f"{repeat + 1}/{args.repeats} {name:>8}: stage {last['seconds']:.1f} s "
                  f"({last['cpu_seconds']:.0f} CPU s), audit {last['audit_seconds']:.1f} s",
                  flush=True)
    medians = {name: summary(found) for name, found in runs.items()}
    commit = subprocess.run(["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    results = {
        "rows": runs["current"][0]["rows"], "rows_generated": args.rows,
        "cpus": os.cpu_count(), "baseline_commit": commit, "repeats": args.repeats,
        "runs": runs, "medians": medians,
        "stage_seconds_ratio": medians["current"]["median_seconds"]
        / medians["baseline"]["median_seconds"],
        "stage_cpu_seconds_ratio": medians["current"]["median_cpu_seconds"]
        / medians["baseline"]["median_cpu_seconds"],
        "acceptance": "stage_seconds_ratio <= 1.05",
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "featurize_audit_cost.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
