"""The whole DAG through the CLI on the smoke config: idempotence, caching, crash safety, accounting."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, SMOKE, run_cli

STAGE_NAMES = ["ingest", "validate", "featurize", "train", "evaluate", "register"]


def _manifest(root: Path, stage: str, key: str) -> dict:
    return json.loads((root / "stages" / stage / key / "manifest.json").read_text())


def test_run_executes_every_stage_and_registers_a_model_that_beats_the_baseline(smoke_run):
    root, output, summary = smoke_run.root, smoke_run.output, smoke_run.summary
    assert [s["name"] for s in summary["stages"]] == STAGE_NAMES
    assert all(s["status"] == "ran" for s in summary["stages"])
    assert summary["model_version"] == "v1" and summary["promoted"] is True
    entry = json.loads((root / "registry" / "trip-duration" / "v1" / "entry.json").read_text())
    assert entry["metrics"]["mae"] < entry["baseline"]["mae"]
    assert set(entry["lineage"]) == set(STAGE_NAMES) - {"evaluate", "register"}
    for line in STAGE_NAMES:
        assert any(row.startswith(line) and " ran " in row for row in output.splitlines())


def test_every_manifest_accounts_for_every_row(smoke_run):
    root, summary = smoke_run.root, smoke_run.summary
    for stage in summary["stages"]:
        manifest = _manifest(root, stage["name"], stage["cache_key"])
        rows = manifest["rows"]
        assert rows["in"] == rows["out"] + rows["quarantined"], stage["name"]
        assert manifest["trace_id"] == summary["trace_id"]
        assert manifest["cache_key"] == stage["cache_key"]
        assert {"ray", "pyarrow", "torch", "raypipe"} <= set(manifest["versions"])
        assert manifest["fingerprint"] and manifest["timings"]["seconds"] >= 0
    validate = next(s for s in summary["stages"] if s["name"] == "validate")
    reasons = _manifest(root, "validate", validate["cache_key"])["details"]["quarantine_reasons"]
    # the synthetic source carries each kind of dirt; validate must find every kind
    assert {"null_required", "duplicate_row_key", "label_before_event",
            "event_time_outside_range", "out_of_range"} <= set(reasons)
    assert sum(reasons.values()) == validate["rows_quarantined"] > 0


def test_quarantined_rows_are_kept_with_their_reason(smoke_run):
    import pyarrow.parquet as pq

    root, summary = smoke_run.root, smoke_run.summary
    validate = next(s for s in summary["stages"] if s["name"] == "validate")
    quarantine = pq.read_table(root / "stages" / "validate" / validate["cache_key"] / "quarantine")
    assert quarantine.num_rows == validate["rows_quarantined"]
    assert quarantine["_reason"].null_count == 0 and quarantine["_detail"].null_count == 0
    ingest = next(s for s in summary["stages"] if s["name"] == "ingest")
    for source_file in set(quarantine["_source_file"].to_pylist()):  # the snapshot's file
        assert source_file.startswith(f"stages/ingest/{ingest['cache_key']}/data/")
        assert (root / source_file).is_file()


def test_validate_recomputed_in_a_copied_root_keeps_its_fingerprint(smoke_run, smoke_copy):
    """Nothing validate writes depends on where the artifact root is: recomputed in a copy of the
    root, its output has the same fingerprint, so featurize and what follows stay cached."""
    root, overrides = smoke_copy
    validate = next(s for s in smoke_run.summary["stages"] if s["name"] == "validate")
    moved = root / "stages" / "validate" / validate["cache_key"]
    moved.rename(moved.with_name("moved-away"))

    code, output, summary = run_cli("run", "-c", str(SMOKE), *overrides, "--json")

    assert code == 0, output
    assert [s["status"] for s in summary["stages"]] == ["cached", "ran"] + ["cached"] * 4
    assert (_manifest(root, "validate", validate["cache_key"])["fingerprint"]
            == _manifest(smoke_run.root, "validate", validate["cache_key"])["fingerprint"])


def test_a_snapshot_does_not_depend_on_how_many_cpus_were_free(smoke_run, tmp_path):
    """Ingest on a one-CPU Ray (a process of its own) writes the snapshot the shared two-CPU run
    wrote, byte for byte: the same fingerprint, so validate's key and everything after match."""
    overrides = list(smoke_run.overrides)
    overrides[overrides.index(f"artifact_root={smoke_run.root}")] = f"artifact_root={tmp_path}"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "stage", "ingest", "-c", str(SMOKE), *overrides,
         "--set", "cluster.num_cpus=1", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (ingest,) = json.loads(done.stdout.splitlines()[-1])["stages"]
    shared = next(s for s in smoke_run.summary["stages"] if s["name"] == "ingest")
    assert ingest["cache_key"] == shared["cache_key"]
    assert (_manifest(tmp_path, "ingest", ingest["cache_key"])["fingerprint"]
            == _manifest(smoke_run.root, "ingest", shared["cache_key"])["fingerprint"])


def test_second_run_is_fully_cached_and_starts_no_ray(smoke_run):
    overrides, first = smoke_run.overrides, smoke_run.summary
    # a separate process: if any stage launched Ray work, it would have to start a Ray instance
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "-c", str(SMOKE), *overrides, "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [s["status"] for s in summary["stages"]] == ["cached"] * 6
    assert [s["cache_key"] for s in summary["stages"]] == [s["cache_key"] for s in first["stages"]]
    assert summary["model_version"] == first["model_version"]
    assert "Ray instance" not in result.stderr + result.stdout
    assert summary["ray_start_seconds"] is None and "starting Ray" not in result.stdout


def test_stage_alone_runs_from_published_artifacts(ray_session, smoke_source, tmp_path, capsys):
    overrides = ["--set", f"dataset.source={smoke_source}", "--set",
                 f"artifact_root={tmp_path / 'artifacts'}"]
    code, _, _ = run_cli("stage", "train", "-c", str(SMOKE), *overrides)
    assert code == 1
    assert "needs the output of ingest" in capsys.readouterr().err
    assert run_cli("stage", "ingest", "-c", str(SMOKE), *overrides)[0] == 0
    code, output, summary = run_cli("stage", "validate", "-c", str(SMOKE), *overrides, "--json")
    assert code == 0, output
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [("validate", "ran")]


def test_sigkill_mid_stage_leaves_nothing_that_looks_complete(ray_address, smoke_copy):
    root, overrides = smoke_copy  # ingest and validate cached; a new audit sample: featurize runs
    overrides = [*overrides, "--set", "features.audit_sample=500"]
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "pipeline", "run", "-c", str(SMOKE), *overrides,
         "--set", f"cluster.address={ray_address}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
    )
    for line in process.stdout:  # block on the pipeline's own progress lines, no sleeps
        if line.startswith("featurize") and "running" in line:
            break
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    key = re.search(r"cache key ([0-9a-f]+)", line).group(1)

    featurize = root / "stages" / "featurize"
    assert not (featurize / key).exists(), "a killed stage must not look complete"
    assert list(featurize.glob("_staging/*")), "the killed attempt was mid-write"
    code, output, summary = run_cli("stage", "featurize", "-c", str(SMOKE), *overrides, "--json")
    assert code == 0, output
    assert [(s["name"], s["status"], s["cache_key"]) for s in summary["stages"]] == \
        [("featurize", "ran", key)]
    assert (featurize / key / "manifest.json").exists()


def _keys(smoke_run, stage: str, folder: str, column: str = "trip_id") -> list:
    import pyarrow.dataset as pads

    key = next(s["cache_key"] for s in smoke_run.summary["stages"] if s["name"] == stage)
    path = smoke_run.root / "stages" / stage / key / folder
    return pads.dataset(path, format="parquet", partitioning="hive").to_table(
        columns=[column]).column(column).to_pylist()


def test_trace_follows_a_test_row_through_every_stage(smoke_run):
    predictions = _keys(smoke_run, "evaluate", "predictions.parquet")
    code, output, _ = run_cli("trace", str(predictions[0]), "-c", str(SMOKE), *smoke_run.overrides)
    assert code == 0, output
    lines = output.splitlines()
    assert any(line.startswith("[ingest") and "source holds" in line for line in lines)
    assert any(line.startswith("[validate") and "passed it" in line for line in lines)
    windows = [line for line in lines if line.startswith("[featurize") and "window [" in line]
    assert len(windows) == 7 and all("source rows" in line for line in windows)
    assert any("split: test" in line and "training did not use it" in line for line in lines)
    assert any(line.startswith("[evaluate") and "predicts" in line for line in lines)


def test_trace_says_why_a_row_was_quarantined(smoke_run):
    quarantined = _keys(smoke_run, "validate", "quarantine")
    code, output, _ = run_cli("trace", str(quarantined[0]), "-c", str(SMOKE),
                              *smoke_run.overrides)
    assert code == 0, output
    assert "validate quarantined a copy" in output


def test_trace_of_an_unknown_row_names_it(smoke_run, capsys):
    code, _, _ = run_cli("trace", "999999999", "-c", str(SMOKE), *smoke_run.overrides)
    assert code == 1
    assert "trip_id=999999999 is not in the snapshot of" in capsys.readouterr().err


def test_as_of_with_relative_dates_is_the_same_run_and_says_its_dates(smoke_copy):
    """`--as-of` the smoke config's end with every date relative: the dates an absolute config
    gives, printed first and recorded in the run record; every stage cached."""
    root, overrides = smoke_copy
    relative = [arg for assignment in (
        "dataset.start=null", "dataset.lookback=14d", "split.train_until=null",
        "split.validation=3d", "split.validation_until=null", "split.test=3d")
        for arg in ("--set", assignment)]
    code, output, summary = run_cli("run", "-c", str(SMOKE), *overrides, *relative,
                                    "--as-of", "2026-01-15", "--json")
    assert code == 0, output
    assert output.splitlines()[0] == (
        "as of 2026-01-15T00:00:00+00:00: data from 2026-01-01T00:00:00+00:00, train until "
        "2026-01-09T00:00:00+00:00, validation until 2026-01-12T00:00:00+00:00, test from "
        "2026-01-12T01:00:00+00:00")
    assert all(s["status"] == "cached" for s in summary["stages"])
    record = json.loads((root / "runs" / summary["run_id"] / "run.json").read_text())
    assert record["config"]["dataset"]["start"].startswith("2026-01-01")
    assert record["config"]["split"]["train_until"].startswith("2026-01-09")
