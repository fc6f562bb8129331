"""Refuse a local artifact root (or source) that the Ray work of a run could not share.

On a cluster, every node writes its part of a stage's output under the artifact root and reads
the source itself. A local path there is a different disk on each node: the outputs scatter and
look complete on none. Under `ray job submit --working-dir`, a relative path lands in Ray's
throwaway copy of the working dir, deleted with the job. Both fail late or silently, so they are
refused when Ray starts, unless `cluster.shared_filesystem` says the path is mounted everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec

from pipeline.core.config import PipelineConfig

ADVICE = ("use object storage (s3://..., gs://...), or set cluster.shared_filesystem: true if "
          "every node mounts this path")


class UnsharedStorage(ValueError):
    """A local path that the cluster's nodes, or the run after this job, would not see."""


def check_storage_is_shared(config: PipelineConfig) -> None:
    """Raise UnsharedStorage for a local artifact_root or dataset.source on a Ray cluster of
    several live nodes, or a local artifact_root inside a Ray job's working-dir copy. Ray must be
    initialized."""
    if config.cluster.shared_filesystem:
        return
    local = {key: uri for key, uri in (("artifact_root", config.artifact_root),
                                       ("dataset.source", config.dataset.source))
             if fsspec.utils.get_protocol(uri) in ("file", "local")}
    if not local:
        return
    copy = _job_working_dir()
    root = local.get("artifact_root")
    if copy is not None and root is not None and _inside(root, copy):
        raise UnsharedStorage(f"artifact_root {root} is inside this Ray job's copy of its "
                              f"working dir ({copy}), which Ray deletes after the job; {ADVICE}")
    nodes = _alive_nodes()
    if nodes > 1:
        key, uri = next(iter(local.items()))
        raise UnsharedStorage(f"{key} {uri} is a local path, but the Ray cluster has {nodes} "
                              f"nodes, each with its own disk; {ADVICE}")


def _alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"])


def _job_working_dir() -> Path | None:
    """The working-dir copy a `ray job submit --working-dir` driver runs in (its cwd), if any:
    the job server hands the driver its runtime_env in RAY_JOB_CONFIG_JSON_ENV_VAR."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    if not (job.get("runtime_env") or {}).get("working_dir"):
        return None
    return Path.cwd().resolve()


def _inside(uri: str, folder: Path) -> bool:
    return Path(fsspec.core.strip_protocol(uri)).expanduser().resolve().is_relative_to(folder)
