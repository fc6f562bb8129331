"""What the benchmarks share: row counts as typed, the spread of repetitions, the pipeline's CLI
as a timed child process, copies of published stage outputs, and saving a result as JSON plus PNG
with its provenance and the one-line summary that `benchmarks/table.py` puts in the table."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SUFFIXES = {"k": 1_000, "m": 1_000_000}


def parse_rows(text: str) -> int:
    """"1M" → 1000000, "200k" → 200000, "5000" → 5000."""
    text = text.strip().lower()
    if text[-1:] in SUFFIXES:
        return round(float(text[:-1]) * SUFFIXES[text[-1]])
    return int(text)


def parse_sizes(text: str) -> list[int]:
    """"1M,10M" → [1000000, 10000000], ascending."""
    return sorted(parse_rows(size) for size in text.split(","))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def spread_bars(axis: Any, spreads: dict[str, dict[str, float]], colors: Sequence[str],
                label: str) -> None:
    """One bar per arm at its median, whiskers from min to max, each bar labelled (`label`)."""
    names = list(spreads)
    values = [spreads[name]["median"] for name in names]
    errors = [[v - spreads[name]["min"] for name, v in zip(names, values)],
              [spreads[name]["max"] - v for name, v in zip(names, values)]]
    bars = axis.bar(names, values, yerr=errors, capsize=6, color=list(colors))
    axis.bar_label(bars, fmt=label)


def alternated(arms: Sequence[str], repeat: int) -> Sequence[str]:
    """The arms in the order repetition `repeat` runs them: rotated by one each repetition (two
    arms swap), so that no arm always runs first on a warm (or a loaded) machine."""
    shift = repeat % len(arms)
    return [*arms[shift:], *arms[:shift]]


def benchmark_parser(doc: str, repeats: int, smoke: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes: --repeats, --results, and --smoke (`smoke` says
    what the tiny run does); a benchmark adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--results", type=Path, help="default: benchmarks/results")
    parser.add_argument("--smoke", action="store_true",
                        help=f"{smoke}; writes to a temporary folder")
    return parser


def results_folder(requested: Path | None, smoke: bool) -> Path:
    """Where a benchmark writes: benchmarks/results, or for a smoke run (whose numbers mean
    nothing) a temporary folder, so that CI never overwrites a measured result."""
    folder = requested or (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if smoke else RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def generate_source(config: Path, target: Path, sets: Sequence[str] = ()) -> float:
    """The synthetic table `config` (with `sets`) generates, written at `target` once, outside
    any artifact root (a later benchmark on the same table reuses it); the seconds it took."""
    from pipeline.core.config import load_config
    from pipeline.datasets import prepare_source

    started = time.perf_counter()
    prepare_source(load_config(config, [*sets, f"dataset.source={target}"]), lambda line: None)
    return time.perf_counter() - started


# -- the pipeline as its users run it -------------------------------------------------------
def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def timed(command: Sequence[str], accept: Sequence[int] = (0,)) -> tuple[float, str]:
    """Wall seconds of one child process run from the repository root, and its stdout."""
    started = time.perf_counter()
    done = subprocess.run(list(command), cwd=REPO, env=child_env(), capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in accept:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return seconds, done.stdout


def pipeline_cli(args: Sequence[str], config: Path, sets: Sequence[str]) -> tuple[float, dict]:
    """`python -m pipeline ARGS -c CONFIG --set ... --json` as a child process, as a user types
    it: its wall seconds (spawn to exit) and its JSON summary. Exit 3 (a model the gate
    rejected) is a finished run."""
    command = [sys.executable, "-m", "pipeline", *args, "-c", str(config),
               *(part for value in sets for part in ("--set", value)), "--json"]
    seconds, stdout = timed(command, accept=(0, 3))
    return seconds, json.loads(stdout.strip().splitlines()[-1])


def stage_outcome(summary: dict, stage: str) -> dict:
    """One stage's line of a run's JSON summary."""
    return next(s for s in summary["stages"] if s["name"] == stage)


def stage_manifest(summary: dict, stage: str) -> dict:
    """The manifest a run's stage published (or found cached), read from its artifact."""
    return json.loads((Path(stage_outcome(summary, stage)["artifact"]) / "manifest.json")
                      .read_text())


def span_seconds(run_dir: Path, name: str) -> float:
    """The wall seconds of a run's spans called `name`, summed."""
    from pipeline.commands.profile import load_run_spans, wall_seconds

    return sum(wall_seconds(s) for s in load_run_spans(str(run_dir)) if s["name"] == name)


def copy_published(source_root: Path, target_root: Path, stages: Sequence[str]) -> None:
    """`stages`' published outputs of one artifact root in a fresh one, as hard links: the next
    stage finds them cached (a copied root keeps their fingerprints) and computes its own output
    anew, without redoing the stages before it."""
    for stage in stages:
        for output in (source_root / "stages" / stage).iterdir():
            if (output / "manifest.json").exists():
                _link_tree(output, target_root / "stages" / stage / output.name)


def _link_tree(source: Path, target: Path) -> None:
    for folder, _, files in os.walk(source):
        destination = target / Path(folder).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.link(Path(folder) / name, destination / name)


# -- results --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """A result's row in the benchmark table (docs/benchmarks.md)."""

    benchmark: str
    """What is measured, e.g. "featurize, 10M trips, stage-only clock"."""
    peer: str
    """Against what, in the same run."""
    result: str
    """The measured ratio in one sentence, e.g. "1.8x polars, 3.9x DuckDB (rows/s)"."""
    target: str | None = None
    met: bool | None = None


def provenance(load_before: tuple[float, float, float], started: float) -> dict:
    """Where and when a result was measured, and the command that reproduces it."""
    from pipeline.engine.provenance import git_commit

    return {
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "commit": git_commit(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


class Measurement:
    """One benchmark run: started when created, saved once with its summary and provenance."""

    def __init__(self) -> None:
        self.started, self.load_before = time.time(), os.getloadavg()

    def save(self, results: dict, path: Path, chart: Callable[[dict, Path], None] | None,
             summary: Summary) -> None:
        """`results` as `path` (JSON) and, drawn by `chart`, the PNG beside it."""
        results = {"summary": asdict(summary),
                   "provenance": provenance(self.load_before, self.started), **results}
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        if chart is not None:
            chart(results, path.with_suffix(".png"))
        verdict = {True: "met", False: "not met", None: "not judged at this size"}[summary.met]
        print(f"{summary.benchmark}: {summary.result}"
              + (f" (target {summary.target}: {verdict})" if summary.target else "")
              + f"\n→ {path}", flush=True)
