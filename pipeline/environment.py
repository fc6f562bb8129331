"""What a run records about where it ran, and how it joins a Ray cluster."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.telemetry import TelemetrySpec

ARROW_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
_PACKAGES = ("raypipe", "ray", "pyarrow", "torch", "numpy", "fsspec", "opentelemetry-sdk")


@cache
def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@cache
def git_commit() -> str | None:
    """The commit of the code that ran, with "+dirty" when the tree had uncommitted changes.

    Images have no .git: cluster/Dockerfile bakes the commit into RAYPIPE_GIT_COMMIT instead.
    """
    if os.environ.get("RAYPIPE_GIT_COMMIT"):
        return os.environ["RAYPIPE_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def ensure_ray(config: PipelineConfig) -> None:
    """Join the configured Ray cluster, or start a local one; only called when a stage really runs."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = dict(config.cluster.runtime_env)
    # pyarrow's default allocator keeps freed memory per worker; the system one returns it
    # (measured: featurize's per-worker peak 807 -> 512 MB on 10M rows)
    runtime_env["env_vars"] = {**ARROW_ENV, **runtime_env.get("env_vars", {})}
    ray.init(
        address=config.cluster.address,
        num_cpus=config.cluster.num_cpus if not config.cluster.address else None,
        runtime_env=runtime_env,
        include_dashboard=False,
        log_to_driver=True,
    )


def telemetry_spec(config: PipelineConfig, run_id: str, run_dir: Path) -> TelemetrySpec:
    from pipeline.dag import STAGES

    attributes = {
        "run.id": run_id,
        "config.name": config.name,
        "config.digest": config.digest(),
        **{f"stage.{s.name}.version": s.code_version for s in STAGES},
        **config.telemetry.resource_attributes,
    }
    return TelemetrySpec(
        exporter=config.telemetry.exporter,
        endpoint=config.telemetry.endpoint,
        service_name=config.telemetry.service_name,
        resource_attributes=attributes,
        run_dir=str(run_dir),
    )
