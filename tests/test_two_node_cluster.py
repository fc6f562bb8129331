"""The cluster story for real: a two-node Ray cluster on this machine (two `ray start` processes,
one CPU each, token auth on), the smoke pipeline with its source and artifacts on a moto S3
server, and `ray job submit` against the same cluster.

The pipeline runs as a subprocess (a driver of its own, as on a cluster), never in the test
process, whose session Ray is another cluster. The nodes hold the S3 credentials in their
environment; the driver gets the cluster's token the documented way (RAY_AUTH_MODE, RAY_AUTH_TOKEN).
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SMOKE
from tests.loopback_ray import RAY, LoopbackRayCluster, free_ports, without_ray_or_aws
from tests.test_object_storage import BUCKET, s3  # noqa: F401  (the moto server fixture)

pytest.importorskip("aiohttp_cors", reason="the job server needs ray[default] (the cluster extra)")
# Minutes of work (two Ray nodes, full pipeline runs as subprocesses): `make test-cluster` runs
# this file, `make test` leaves it out, `.ci/run` runs both.
pytestmark = pytest.mark.cluster

PREFIX = f"s3://{BUCKET}/two-node"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # no instance-role lookup on a laptop
_RUN_S = 240


@pytest.fixture(scope="module")
def cluster(s3):  # noqa: F811
    env = {**without_ray_or_aws(os.environ), **CREDENTIALS, "PYTHONPATH": str(REPO)}
    try:
        with LoopbackRayCluster(env) as running:
            yield running
    finally:
        # a run on a remote root keeps its span files under ~/.cache; these runs' ids are the
        # run folders they uploaded to this module's bucket
        _, fs = s3
        for folder in fs.glob(f"{PREFIX.removeprefix('s3://')}/*/runs/*"):
            shutil.rmtree(Path.home() / ".cache" / "raypipe" / "runs" / posixpath.basename(folder),
                          ignore_errors=True)


def _driver_env(cluster: LoopbackRayCluster | None) -> dict[str, str]:
    """A driver's environment: the S3 credentials, and the cluster's token when given one."""
    return {**without_ray_or_aws(os.environ), **CREDENTIALS, "PYTHONPATH": str(REPO),
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **(cluster.client_env if cluster else {})}


def _s3_args(endpoint: str, artifacts: str = f"{PREFIX}/artifacts") -> list[str]:
    options = json.dumps({"client_kwargs": {"endpoint_url": endpoint}})  # no keys: the env's
    return ["-c", str(SMOKE), "--set", f"dataset.source={PREFIX}/source",
            "--set", f"artifact_root={artifacts}", "--set", f"dataset.storage_options={options}",
            "--set", f"storage_options={options}"]


def _pipeline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], check=False, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=_RUN_S)


def _summary(stdout: str) -> dict:
    return json.loads(next(line for line in reversed(stdout.splitlines())
                           if line.startswith("{")))


def _error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def two_node_run(cluster, s3):  # noqa: F811
    """The whole smoke pipeline on the cluster: train with one worker per node."""
    endpoint, _ = s3
    done = _pipeline(_driver_env(cluster), "run", *_s3_args(endpoint),
                     "--set", f"cluster.address={cluster.address}",
                     "--set", "train.num_workers=2", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return _summary(done.stdout)


def _spans(fs, run_id: str) -> list[dict]:
    folder = f"{PREFIX.removeprefix('s3://')}/artifacts/runs/{run_id}/spans"
    return [json.loads(line) for path in fs.find(folder) if path.endswith(".jsonl")
            for line in fs.cat_file(path).decode().splitlines() if line.strip()]


def test_featurize_and_train_ran_on_both_nodes(two_node_run, s3):  # noqa: F811
    _, fs = s3
    assert [s["status"] for s in two_node_run["stages"]] == ["ran"] * 6
    assert all(s["artifact"].startswith(f"{PREFIX}/artifacts/") for s in two_node_run["stages"])
    spans = _spans(fs, two_node_run["run_id"])
    nodes = {prefix: {s["node"] for s in spans if s["name"].startswith(prefix) and s["node"]}
             for prefix in ("featurize.", "train.epoch")}
    assert len(nodes["featurize."]) == 2, nodes
    assert len(nodes["train.epoch"]) == 2, nodes


def test_job_submit_computes_on_the_cluster_into_s3(cluster, two_node_run, s3):  # noqa: F811
    """The documented command: `ray job submit --working-dir . -- pipeline ...` with
    `cluster.address: auto`; validate recomputes (a changed rule) inside the job."""
    endpoint, fs = s3
    job = [RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO),
           "--", sys.executable, "-m", "pipeline", "stage", "validate", *_s3_args(endpoint),
           "--set", "cluster.address=auto", "--set", "validate.max_quarantined_fraction=0.06",
           "--json"]
    job[job.index(str(SMOKE))] = "configs/smoke.yaml"  # resolved in the job's working dir
    done = subprocess.run(job, check=False, env=_driver_env(cluster), capture_output=True,
                          text=True, timeout=_RUN_S)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "succeeded" in done.stdout
    (validate,) = _summary(done.stdout)["stages"]
    assert validate["status"] == "ran"
    assert validate["artifact"].startswith(f"{PREFIX}/artifacts/stages/validate/")
    manifest = json.loads(fs.cat_file(posixpath.join(
        validate["artifact"].removeprefix("s3://"), "manifest.json")))
    assert manifest["cache_key"] == validate["cache_key"]
    assert manifest["params"]["max_quarantined_fraction"] == 0.06


def test_local_artifact_root_is_refused_on_two_nodes(cluster, s3, tmp_path):  # noqa: F811
    endpoint, _ = s3
    local = tmp_path / "artifacts"
    args = [*_s3_args(endpoint, str(local)), "--set", f"cluster.address={cluster.address}"]
    refused = _pipeline(_driver_env(cluster), "stage", "ingest", *args)
    assert refused.returncode == 1
    line = _error_line(refused)
    assert f"artifact_root {local} is a local path" in line
    assert "2 nodes" in line and "s3://" in line and "cluster.shared_filesystem" in line
    assert not (local / "stages" / "ingest").exists() or not any(
        (local / "stages" / "ingest").glob("*/manifest.json"))

    # the opt-in: this machine's disk is one filesystem for both nodes
    shared = _pipeline(_driver_env(cluster), "stage", "ingest", *args,
                       "--set", "cluster.shared_filesystem=true", "--json")
    assert shared.returncode == 0, shared.stderr[-3000:]
    (ingest,) = _summary(shared.stdout)["stages"]
    assert (local / "stages" / "ingest" / ingest["cache_key"] / "manifest.json").exists()


def test_worker_without_credentials_is_named_in_one_line(cluster, two_node_run, s3):  # noqa: F811
    """Credentials only in the driver's environment: the job's workers have them blanked."""
    endpoint, _ = s3
    blank = json.dumps({"env_vars": {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}})
    done = _pipeline(_driver_env(cluster), "stage", "ingest",
                     *_s3_args(endpoint, f"{PREFIX}/no-credentials"),
                     "--set", f"cluster.address={cluster.address}",
                     "--set", f"cluster.runtime_env={blank}")
    assert done.returncode == 1
    line = _error_line(done)
    assert line.startswith("error: stage ingest failed: Ray node "), line
    assert "found no credentials" in line and "runtime_env" in line, line


def _ingest_without_token(address: str, smoke_source, tmp_path) -> subprocess.CompletedProcess:
    return _pipeline(_driver_env(None), "stage", "ingest", "-c", str(SMOKE),
                     "--set", f"dataset.source={smoke_source}",
                     "--set", f"artifact_root={tmp_path / 'artifacts'}",
                     "--set", f"cluster.address={address}")


def test_missing_token_is_one_line(cluster, smoke_source, tmp_path):
    done = _ingest_without_token(cluster.address, smoke_source, tmp_path)
    assert done.returncode == 1
    line = _error_line(done)
    assert cluster.address in line and "sends none" in line and "RAY_AUTH_MODE=token" in line, line


def test_nothing_listening_is_one_quick_line(smoke_source, tmp_path):
    address = f"127.0.0.1:{free_ports(1)[0]}"
    done = _ingest_without_token(address, smoke_source, tmp_path)
    assert done.returncode == 1
    line = _error_line(done)
    assert address in line and "nothing answers" in line and "token auth" in line, line


def test_a_team_module_reaches_every_node_with_the_keys_of_one_machine(cluster, two_node_run,
                                                                        s3, tmp_path):  # noqa: F811
    """The example's user code from a folder of its own, shipped with the job (runtime_env
    py_modules) to both nodes; the same config on one machine gets the same cache keys."""
    endpoint, fs = s3
    folder = tmp_path / "teamcode"
    folder.mkdir()
    shutil.copy(REPO / "examples" / "rideshare_features.py", folder)
    team = ["--set", f"features.module={folder / 'rideshare_features.py'}"]

    def run(artifacts: str, *extra: str) -> dict:
        args = _s3_args(endpoint, artifacts)
        args[args.index(str(SMOKE))] = str(REPO / "examples" / "rideshare.yaml")
        done = _pipeline(_driver_env(cluster if extra else None), "run", *args, *team, *extra,
                         "--json")
        assert done.returncode == 0, done.stderr[-3000:]
        return _summary(done.stdout)

    on_cluster = run(f"{PREFIX}/artifacts", "--set", f"cluster.address={cluster.address}")
    spans = _spans(fs, on_cluster["run_id"])
    assert len({s["node"] for s in spans if s["name"] == "featurize.chunk" and s["node"]}) == 2
    one_machine = run(f"{PREFIX}/one-machine")
    data_stages = ("ingest", "validate", "featurize", "train")  # evaluate's key names a champion
    assert {s["name"]: s["cache_key"] for s in on_cluster["stages"] if s["name"] in data_stages} \
        == {s["name"]: s["cache_key"] for s in one_machine["stages"] if s["name"] in data_stages}
