"""One local Ray for the whole test session, and helpers to run the pipeline through its CLI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from pipeline.engine.ray_cluster import shutdown_ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    shutdown_ray()


@pytest.fixture(scope="session")
def ray_address(ray_session) -> str:
    """The session's Ray over loopback, for `pipeline` processes to join as separate jobs, as
    jobs share a cluster (each would otherwise start its own Ray: 5 to 7 s on 2 cores)."""
    port = ray_session.get_runtime_context().gcs_address.rpartition(":")[2]
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def smoke_source(tmp_path_factory) -> Path:
    """The smoke dataset, generated once per session and shared read-only by every test."""
    from pipeline.core.config import load_config
    from pipeline.datasets import ensure_dataset

    config = load_config(SMOKE)
    source = tmp_path_factory.mktemp("source") / "rideshare-smoke"
    generate = config.dataset.generate
    ensure_dataset(str(source), generate.kind, generate.rows, config.dataset.start,
                   config.dataset.end, generate.seed)
    return source


@pytest.fixture
def smoke_overrides(tmp_path, smoke_source) -> list[str]:
    """--set arguments that point the smoke config at the shared source and a fresh artifact root."""
    return [f"dataset.source={smoke_source}", f"artifact_root={tmp_path / 'artifacts'}"]


@dataclass
class SmokeRun:
    root: Path
    overrides: list[str]
    output: str
    summary: dict
    spans: list[dict]


@pytest.fixture(scope="session")
def smoke_run(ray_session, smoke_source, tmp_path_factory) -> SmokeRun:
    """One full smoke run (jsonl telemetry), shared by every test that only reads what it left."""
    import contextlib
    import io

    from pipeline.commands.display import PlainDisplay
    from pipeline.core.config import load_config
    from pipeline.engine.runner import Runner
    from pipeline.stages.dag import STAGES

    root = tmp_path_factory.mktemp("smoke-run") / "artifacts"
    overrides = ["--set", f"dataset.source={smoke_source}", "--set", f"artifact_root={root}"]
    runner = Runner(load_config(SMOKE, overrides[1::2]), STAGES, display=PlainDisplay())
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        summary = runner.run()
    return SmokeRun(root, overrides, buffer.getvalue(), summary.as_json(),
                    runner.telemetry.spans())


def run_cli(*args: str) -> tuple[int, str, dict | None]:
    """Run `pipeline ...` in-process (sharing the session's Ray); return code, output, JSON summary."""
    import contextlib
    import io

    from pipeline.commands.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(list(args))
    output = buffer.getvalue()
    lines = [line for line in output.splitlines() if line.strip()]
    summary = None
    if "--json" in args and lines:
        with contextlib.suppress(json.JSONDecodeError):
            summary = json.loads(lines[-1])
    return code, output, summary


def copy_of_smoke_run(smoke_run, folder: Path) -> tuple[Path, list[str]]:
    """A private copy of the shared smoke run's artifacts (every stage published) under `folder`,
    to run more on without changing what other tests read; returns its root and the `--set`
    arguments that point the smoke config at it."""
    import shutil

    root = folder / "artifacts"
    shutil.copytree(smoke_run.root, root)
    overrides = list(smoke_run.overrides)
    overrides[overrides.index(f"artifact_root={smoke_run.root}")] = f"artifact_root={root}"
    return root, overrides


@pytest.fixture
def smoke_copy(smoke_run, tmp_path) -> tuple[Path, list[str]]:
    """`copy_of_smoke_run` for one test."""
    return copy_of_smoke_run(smoke_run, tmp_path)
