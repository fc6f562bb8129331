"""Events that never get a label (cancelled trips) kept as history, through the CLI.

With `dataset.unlabeled: history`, validate keeps a row whose label and label-available time are
both null; featurize counts it in every window and, its label-time values never being available,
leaves it out of value windows over them; train gives it no split (reason `unlabeled`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from pipeline.core.config import load_config
from pipeline.datasets import write_partitioned
from pipeline.datasets.rideshare import generate_rideshare
from tests.conftest import SMOKE, run_cli

CANCELLED_SHARE = 0.04


@pytest.fixture(scope="module")
def history_run(ray_session, tmp_path_factory):
    """Every stage on a table with cancelled trips; the artifact root and the --set
    arguments."""
    tmp = tmp_path_factory.mktemp("unlabeled")
    smoke = load_config(SMOKE)
    source = tmp / "trips"
    write_partitioned(generate_rideshare(8000, smoke.dataset.start, smoke.dataset.end, seed=5,
                                         cancelled_share=CANCELLED_SHARE), str(source))
    overrides = [arg for assignment in (
        f"dataset.source={source}", f"artifact_root={tmp / 'artifacts'}", "dataset.generate=null",
        "dataset.unlabeled=history", "dataset.columns.fare.required=false",
        "dataset.columns.pace_min_per_km.required=false", "telemetry.exporter=none")
        for arg in ("--set", assignment)]
    lines = {}
    for stage in ("ingest", "validate", "featurize", "train", "evaluate", "register"):
        code, output, _ = run_cli("stage", stage, "-c", str(SMOKE), *overrides)
        assert code == 0, output
        lines[stage] = [line for line in output.splitlines() if line.startswith(stage)][-1]
    return tmp / "artifacts", overrides, lines


def _output(root: Path, stage: str) -> tuple[dict, Path]:
    manifest = next((root / "stages" / stage).glob("*/manifest.json"))
    return json.loads(manifest.read_text()), manifest.parent


def _table(path: Path) -> pa.Table:
    return pads.dataset(path, format="parquet", partitioning="hive").to_table()


def test_unlabeled_rows_pass_validation_as_history(history_run):
    manifest, folder = _output(history_run[0], "validate")
    clean = _table(folder / "clean")
    unlabeled = clean.filter(pc.is_null(clean["duration_min"]))
    assert manifest["details"]["rows_unlabeled"] == unlabeled.num_rows
    assert unlabeled.num_rows > 0.9 * CANCELLED_SHARE * 8000  # a few are dirty in other ways
    assert unlabeled["completed_at"].null_count == unlabeled.num_rows
    rows = manifest["rows"]
    assert rows["in"] == rows["out"] + rows["quarantined"]
    details = set(_table(folder / "quarantine")["_detail"].to_pylist())
    assert not details & {"duration_min is null", "completed_at is null"}
    assert f"; {unlabeled.num_rows:,} unlabeled kept as history)" in history_run[2]["validate"]


def test_count_windows_count_every_event_and_value_windows_only_labeled_ones(history_run):
    root = history_run[0]
    clean = _table(_output(root, "validate")[1] / "clean")
    features = _table(_output(root, "featurize")[1] / "data")
    assert features.num_rows == clean.num_rows
    driver = clean["driver_id"].to_numpy()
    requested = clean["requested_at"].cast(pa.int64()).to_numpy()
    unlabeled = clean["completed_at"].is_null().to_numpy(zero_copy_only=False)
    completed = clean["completed_at"].cast(pa.int64()).fill_null(0).to_numpy()
    pace = clean["pace_min_per_km"].to_numpy(zero_copy_only=False).astype(float)
    week = int(timedelta(days=7).total_seconds() * 1e6)
    picked = features.filter(pc.is_in(features["driver_id"],
                                      pa.array(np.unique(driver[unlabeled]))))
    picked = picked.take(np.random.default_rng(0).choice(picked.num_rows, 60, replace=False))
    counted_an_unlabeled_row = False
    for row in picked.to_pylist():
        t = int(row["requested_at"].timestamp() * 1e6)
        same = driver == row["driver_id"]
        events = same & (requested >= t - week) & (requested < t)
        assert row["driver_id__rows__count__7d"] == events.sum()
        counted_an_unlabeled_row |= bool((events & unlabeled).any())
        labeled = same & ~unlabeled & (completed >= t - week) & (completed < t)
        mean = row["driver_id__pace_min_per_km__mean__7d"]
        if labeled.any():
            assert mean == pytest.approx(float(pace[labeled].mean()), rel=1e-9)
        else:
            assert mean is None
    assert counted_an_unlabeled_row


def test_train_gives_unlabeled_rows_no_split(history_run):
    root = history_run[0]
    validate = _output(root, "validate")[0]
    manifest, folder = _output(root, "train")
    splits = _table(folder / "splits")
    clean = _table(_output(root, "validate")[1] / "clean")
    unlabeled = set(clean.filter(pc.is_null(clean["duration_min"]))["trip_id"].to_pylist())
    for row in splits.to_pylist():
        if row["trip_id"] in unlabeled:
            assert row["split"] is None and row["reason"] == "unlabeled", row
        else:
            assert row["reason"] != "unlabeled", row
    assert manifest["details"]["excluded"]["unlabeled"] == validate["details"]["rows_unlabeled"]


def test_trace_of_an_unlabeled_row_says_history_only(history_run):
    root, overrides, _ = history_run
    clean = _table(_output(root, "validate")[1] / "clean")
    key = clean.filter(pc.is_null(clean["duration_min"]))["trip_id"][0].as_py()
    code, output, _ = run_cli("trace", str(key), "-c", str(SMOKE), *overrides)
    assert code == 0, output
    assert "[validate" in output and "unlabeled: history only" in output
    assert any(line.startswith("[train") and "excluded: unlabeled: history only" in line
               for line in output.splitlines())
    assert "null (unlabeled: history only)" in output


def test_only_a_row_missing_both_its_label_and_its_time_is_history():
    from pipeline.core.schema import TableSchema
    from pipeline.quality.rules import row_reasons

    config = load_config(SMOKE, ["dataset.unlabeled=history"])
    trips = generate_rideshare(200, config.dataset.start, config.dataset.end, seed=1).slice(0, 3)
    trips = trips.filter(pc.is_valid(trips["distance_km"]))  # clean except what is nulled below
    label, done = trips["duration_min"].to_pylist(), trips["completed_at"].to_pylist()
    label[0], done[0] = None, None  # history
    label[1] = None                 # a label time but no label
    done[2] = None                  # a label but no label time
    trips = trips.set_column(trips.schema.get_field_index("duration_min"), "duration_min",
                             pa.array(label, pa.float64()))
    trips = trips.set_column(trips.schema.get_field_index("completed_at"), "completed_at",
                             pa.array(done, trips["completed_at"].type))
    schema = TableSchema.of(config.dataset)
    reasons, details = row_reasons(trips, schema, timedelta(days=1), np.zeros(3, bool))
    assert list(reasons) == [None, "null_required", "null_required"]
    assert list(details[1:]) == ["duration_min is null", "completed_at is null"]
    quarantine = TableSchema.of(load_config(SMOKE).dataset)
    assert row_reasons(trips, quarantine, timedelta(days=1), np.zeros(3, bool))[0][0] \
        == "null_required"


def test_evaluate_scores_only_the_labeled_test_rows(history_run):
    root = history_run[0]
    train = _output(root, "train")[0]
    manifest, folder = _output(root, "evaluate")
    scored = pads.dataset(folder / "predictions.parquet", format="parquet").to_table()
    assert manifest["rows"]["in"] == scored.num_rows == train["details"]["splits"]["test"]
    assert scored["duration_min"].null_count == 0
