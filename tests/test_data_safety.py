"""What the pipeline guarantees against the real world: concurrent runs on one artifact root,
retrains that change nothing, credentials handed to workers, and requests a local Ray can never meet.

Each test starts from a private copy of the shared smoke run's artifacts, so only the stages the
test changes run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, SMOKE, run_cli

RIVAL = "trip-duration-rival"


def _manifest(root: Path, stage: str, key: str) -> dict:
    return json.loads((root / "stages" / stage / key / "manifest.json").read_text())


def _stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["name"] == name)


def _entries(root: Path, model: str = "trip-duration") -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text())
            for path in (root / "registry" / model).glob("v*/entry.json")}


def test_concurrent_runs_share_stages_and_never_overwrite_a_version(smoke_copy, ray_address):
    """Three runs at once: two of the same config (one evaluation), one of another. Each new
    evaluation gets its own version, the same evaluation is registered once, and every register
    manifest points at the registry entry of its own evaluation."""
    root, overrides = smoke_copy  # each run is its own process
    # a model name without a champion, since the champion's own model is not registered twice,
    # and a gate none can pass (+100% over the baseline), so that no run moves a champion that
    # the others judged against (the run that loses that race fails by design)
    overrides = [*overrides, "--set", f"cluster.address={ray_address}",
                 "--set", f"evaluate.model_name={RIVAL}"]
    configs = [["--set", "evaluate.min_improvement=1.0"]] * 2 + \
              [["--set", "evaluate.min_improvement=2.0"]]
    processes = [subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "-c", str(SMOKE), *overrides, *extra, "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}) for extra in configs]
    results = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [3, 3, 3], [err[-2000:] for _, err in results]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert [s["ray_start_seconds"] for s in summaries] == [None] * 3, \
        "an evaluate that scores in the driver neither starts nor joins Ray"

    same, other = summaries[:2], summaries[2]
    assert _stage(same[0], "evaluate")["cache_key"] == _stage(same[1], "evaluate")["cache_key"]
    assert sorted(_stage(s, "evaluate")["status"] for s in same) == ["cached", "ran"], \
        "one run computed the evaluation, the other waited for it and reused it"
    assert sorted(_stage(s, "register")["status"] for s in same) == ["cached", "ran"]
    assert same[0]["model_version"] == same[1]["model_version"] != other["model_version"]

    entries = _entries(root, RIVAL)
    assert sorted(entries) == ["v1", "v2"]
    for summary in summaries:
        evaluate = _stage(summary, "evaluate")
        registration = _manifest(root, "register", _stage(summary, "register")["cache_key"])[
            "details"]
        entry = entries[registration["version"]]
        assert entry["evaluate_cache_key"] == evaluate["cache_key"]
        assert entry["version"] == registration["version"] == summary["model_version"]
    claims = {json.loads((root / "registry" / RIVAL / v / "claim.json").read_text())[
        "evaluate_cache_key"] for v in ("v1", "v2")}
    assert claims == {entries["v1"]["evaluate_cache_key"], entries["v2"]["evaluate_cache_key"]}


def test_a_retrain_with_identical_weights_keeps_the_fingerprint_and_evaluate_caches(smoke_copy):
    root, overrides = smoke_copy
    before = next((root / "stages" / "train").glob("*/manifest.json"))
    first = json.loads(before.read_text())
    # max_failures changes train's key (a new train stage output) but not what it learns
    code, output, summary = run_cli("run", "-c", str(SMOKE), *overrides,
                                    "--set", "train.max_failures=3", "--json")
    assert code == 0, output
    train = _stage(summary, "train")
    assert train["status"] == "ran" and train["cache_key"] != first["cache_key"]
    assert _manifest(root, "train", train["cache_key"])["fingerprint"] == first["fingerprint"]
    assert _stage(summary, "evaluate")["status"] == "cached"


def test_no_runtime_env_value_is_written_anywhere(smoke_copy):
    root, overrides = smoke_copy
    secret = "ghp_0123456789abcdefTESTSECRET"
    code, output, summary = run_cli(
        "run", "-c", str(SMOKE), *overrides,
        "--set", f"cluster.runtime_env={{env_vars: {{GH_PAT: {secret}, PLAIN: {secret}x}}}}",
        "--set", "evaluate.min_improvement=0.001", "--json")  # evaluate runs with the env
    assert code == 0, output
    assert _stage(summary, "evaluate")["status"] == "ran"
    assert secret not in output
    leaked = [path for path in root.rglob("*") if path.is_file()
              and secret.encode() in path.read_bytes()]
    assert not leaked, leaked
    record = json.loads((root / "runs" / summary["run_id"] / "run.json").read_text())
    assert set(record["config"]["cluster"]["runtime_env"]["env_vars"]) == {"GH_PAT", "PLAIN"}


def test_a_worker_group_larger_than_the_local_ray_fails_fast_with_the_numbers(smoke_copy, capsys):
    root, overrides = smoke_copy
    code, _, _ = run_cli("run", "-c", str(SMOKE), *overrides, "--set", "train.num_workers=4")
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "stage train" in err and "4 CPU" in err and "has 2 CPU" in err
    assert len(list((root / "stages" / "train").glob("*/manifest.json"))) == 1, "nothing new"
