"""The smoke run's wall time against the floor no Ray pipeline can beat, in one run.

    python benchmarks/smoke.py                 # 3 smoke runs → benchmarks/results/smoke.{json,png}
    python benchmarks/smoke.py --repeats 5

The smoke source (configs/smoke.yaml, 20k trips) is generated once into a temp folder; then each
repetition is a first run on a fresh artifact root, as its own process, exactly as a user types it:

    python -m pipeline run -c configs/smoke.yaml --set artifact_root=... \\
        --set dataset.source=... --json

Reported per run: the process's wall time, each stage's seconds (from the JSON summary), and
`ray.start` (from the run's spans, which time it apart from every stage); "other" is the rest of
the wall time (interpreter start, imports, config, run record, shutdown). Each first run is
followed by the same command again, which finds every stage cached and starts no Ray: its wall
time is the fixed cost of a no-op run (imports, cache keys, source listing, run record).

The peer is the floor, what no pipeline on Ray can skip, in one process timed the same way:
start the local Ray exactly as the pipeline starts it (`pipeline.engine.ray_cluster.ensure_ray` with the
smoke config's cluster settings: no dashboard, the same CPUs and environment) while a thread
imports torch and pyarrow, as the pipeline imports its stages' modules during Ray's start; then
stop Ray as the pipeline stops it (`disconnect_ray`). The smoke run is quoted as a ratio to it:
of the medians, and per repetition (each run over the floor measured right after it, which shares
its moment's load). `pipeline --help` is timed too (an import-cost check: it must stay under
1 s). Medians, min and max of the repetitions, arms in alternating order.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import (
    REPO,
    Measurement,
    Summary,
    alternated,
    benchmark_parser,
    generate_source,
    pipeline_cli,
    results_folder,
    spread,
    timed,
)

from pipeline.stages.dag import STAGES as DAG

CONFIG = REPO / "configs" / "smoke.yaml"
STAGES = tuple(stage.name for stage in DAG)
FLOOR = f"""
import importlib, threading
from pipeline.core.config import load_config
from pipeline.engine.ray_cluster import disconnect_ray, ensure_ray
imports = threading.Thread(target=lambda: [importlib.import_module(m) for m in ("torch", "pyarrow")])
imports.start()
ensure_ray(load_config({str(CONFIG)!r}).cluster)
imports.join()
disconnect_ray()
"""
HELP_LIMIT_S = 1.0
ARMS = ("smoke", "floor")


def smoke_run(source: Path, artifact_root: Path) -> dict:
    """One first run of the smoke config as a CLI process: wall, stage seconds, ray.start; then
    the same command again, which finds every stage cached (`cached_rerun_s`)."""
    sets = [f"artifact_root={artifact_root}", f"dataset.source={source}"]
    seconds, summary = pipeline_cli(["run"], CONFIG, sets)
    rerun_seconds, rerun = pipeline_cli(["run"], CONFIG, sets)
    if any(s["status"] != "cached" for s in rerun["stages"]):
        raise RuntimeError(f"the rerun computed: {rerun['stages']}")
    stages = {s["name"]: s["seconds"] for s in summary["stages"]}
    if any(s["status"] != "ran" for s in summary["stages"]):
        raise RuntimeError(f"not a first run: {summary['stages']}")
    ray_start = summary["ray_start_seconds"] or 0.0
    other = seconds - ray_start - sum(stages.values())
    return {"wall_s": seconds, "ray_start_s": ray_start, "stages_s": stages, "other_s": other,
            "cached_rerun_s": rerun_seconds, "test_metrics": summary["test_metrics"]}


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smoke, floor = results["smoke_run"], results["floor_s"]["median"]
    parts = [("ray.start", smoke["ray_start_s"]["median"])]
    parts += [(name, smoke["stages_s"][name]["median"]) for name in STAGES]
    parts.append(("other (imports, record, exit)", smoke["other_s"]["median"]))
    floor_parts = [("Ray's start and stop, imports meanwhile", floor)]
    figure, axis = plt.subplots(figsize=(10, 3.6))
    colors = plt.get_cmap("tab10").colors
    labelled = 0.05 * sum(value for _, value in parts)  # narrower segments stay unlabelled
    for row, bars in ((1, parts), (0, floor_parts)):
        left = 0.0
        for i, (name, value) in enumerate(bars):
            axis.barh(row, value, left=left, color=colors[i % 10] if row else "#999999",
                      edgecolor="white")
            if value > labelled:
                axis.text(left + value / 2, row, f"{name}\n{value:.1f}s", ha="center",
                          va="center", fontsize=7)
            left += value
    axis.set_yticks([0, 1], [f"floor {floor:.1f}s", "smoke run (first run)"])
    axis.set_xlabel("seconds, medians of the repetitions")
    axis.set_title(f"smoke run {smoke['wall_s']['median']:.1f}s = "
                   f"{results['ratio_to_floor']:.1f}x the floor "
                   f"({floor:.1f}s); all-cached rerun "
                   f"{smoke['cached_rerun_s']['median']:.1f}s; pipeline --help "
                   f"{results['help_s']['median']:.2f}s")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__, repeats=5, smoke="one repetition")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    results_dir = results_folder(args.results, args.smoke)
    measurement = Measurement()
    with tempfile.TemporaryDirectory(prefix="smoke-bench-") as tmp:
        workdir = Path(tmp)
        source = workdir / "source"
        generate_source(CONFIG, source)
        runs, floors, helps = [], [], []
        for repeat in range(args.repeats):
            for arm in alternated(ARMS, repeat):
                if arm == "smoke":
                    runs.append(smoke_run(source, workdir / f"artifacts-{repeat}"))
                else:
                    floors.append(timed([sys.executable, "-c", FLOOR])[0])
            helps.append(timed([sys.executable, "-m", "pipeline", "--help"])[0])
            print(f"run {repeat + 1}: smoke {runs[-1]['wall_s']:.1f}s (ray.start "
                  f"{runs[-1]['ray_start_s']:.1f}s), cached rerun "
                  f"{runs[-1]['cached_rerun_s']:.1f}s, floor {floors[-1]:.1f}s, --help "
                  f"{helps[-1]:.2f}s", flush=True)

    floor = spread(floors)
    smoke = {"wall_s": spread([r["wall_s"] for r in runs]),
             "ray_start_s": spread([r["ray_start_s"] for r in runs]),
             "stages_s": {name: spread([r["stages_s"][name] for r in runs]) for name in STAGES},
             "other_s": spread([r["other_s"] for r in runs]),
             "cached_rerun_s": spread([r["cached_rerun_s"] for r in runs])}
    ratio = smoke["wall_s"]["median"] / floor["median"]
    results = {
        "config": "configs/smoke.yaml",
        "repeats": args.repeats,
        "smoke_run": smoke,
        "floor_s": floor,
        "floor": "ensure_ray + disconnect_ray with the smoke config, torch and pyarrow imported "
                 "in a thread meanwhile, one process",
        "ratio_to_floor": ratio,
        "ratio_to_floor_per_repeat": [run["wall_s"] / f for run, f in zip(runs, floors)],
        "help_s": spread(helps),
        "help_under_1s": statistics.median(helps) < HELP_LIMIT_S,
        "runs": runs,
    }
    measurement.save(results, results_dir / "smoke.json", chart, Summary(
        benchmark="smoke run (configs/smoke.yaml, 20k trips), first run as a CLI process",
        peer="the floor: the pipeline's own Ray start and stop with torch and pyarrow imported "
             "meanwhile",
        result=f"{ratio:.2f}x the floor (median of {args.repeats}); every stage cached: "
               f"{smoke['cached_rerun_s']['median'] / floor['median']:.2f}x the floor, with no "
               f"Ray; `pipeline --help` {statistics.median(helps):.2f} s",
        target="`pipeline --help` under 1 s", met=results["help_under_1s"]))


if __name__ == "__main__":
    main()
