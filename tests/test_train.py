"""Train stage: time splits with a reason per row, preprocessing fit on the training split only,
Ray Train on 2 workers and in local mode, reproducible weights, a real worker death (and a real
driver death in local mode) resumed from a checkpoint, and the saved model's predictor.

The input is the featurize output the shared smoke run published, read back typed as the runner
hands it to train; the stage's `run(ctx)` is called with a StageContext built here (other worker
counts, a planted worker kill), on the session's shared Ray.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.core.config import SplitConfig, load_config
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import StageContext
from pipeline.model.loop import KILL_ENV
from pipeline.model.metrics import auc, compute_metrics
from pipeline.model.predictor import load_predictor
from pipeline.model.preprocessing import fit_preprocessor
from pipeline.model.splits import assign_splits, with_splits
from pipeline.telemetry import Telemetry, TelemetrySpec
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"
UTC = timezone.utc


# -- splits (pure) ---------------------------------------------------------------------------
def _t(day: int, hour: float = 0.0) -> datetime:
    return datetime(2026, 1, day, tzinfo=UTC) + timedelta(hours=hour)


SPLIT = SplitConfig(train_until=_t(9), validation_until=_t(12), embargo=timedelta(hours=1))


def test_every_row_gets_a_split_or_a_reason():
    cases = [  # (event time, label-available time, split, reason)
        (_t(5), _t(5, 1), "train", None),
        (_t(8, 23.5), _t(9), None, "label_after_cutoff"),  # label exactly at the cutoff: too late
        (_t(8, 23.5), _t(8, 23.9), "train", None),
        (_t(9), _t(9, 0.2), None, "embargo"),
        (_t(9, 0.99), _t(9, 1.5), None, "embargo"),
        (_t(9, 1), _t(9, 1.5), "validation", None),           # first moment after the embargo
        (_t(11, 23.9), _t(12, 0.5), None, "label_after_cutoff"),
        (_t(12), _t(12, 0.1), None, "embargo"),
        (_t(12, 1), _t(12, 2), "test", None),
        (_t(14), None, "test", None),                          # test labels are evaluate's business
        (None, _t(3), None, "missing_time"),
    ]
    timestamp = pa.timestamp("us", tz="UTC")
    events = pa.array([c[0] for c in cases], timestamp)
    labels = pa.array([c[1] for c in cases], timestamp)
    splits, reasons = assign_splits(events, labels, SPLIT)
    assert list(splits) == [c[2] for c in cases]
    assert list(reasons) == [c[3] for c in cases]
    assert all((s is None) != (r is None) for s, r in zip(splits, reasons)), "exactly one of both"

    table = pa.table({"trip_id": pa.array(range(len(cases))), "at": events, "done": labels})
    written = with_splits(table, "at", "done", SPLIT)
    assert written.column_names == ["trip_id", "at", "done", "split", "reason"]
    assert written["split"].to_pylist() == [c[2] for c in cases]


def test_splits_match_a_brute_force_loop():
    rng = np.random.default_rng(3)
    start = int(_t(1).timestamp() * 1e6)
    event = start + rng.integers(0, 14 * 86_400 * 10**6, 5_000)
    label = event + rng.integers(0, 3 * 3_600 * 10**6, 5_000)
    splits, reasons = assign_splits(event.astype("datetime64[us]"),
                                    label.astype("datetime64[us]"), SPLIT)
    train_until, validation_until = _t(9), _t(12)
    embargo = timedelta(hours=1)
    for e, lab, s, r in zip(event, label, splits, reasons):
        t = datetime.fromtimestamp(e / 1e6, UTC)
        available = datetime.fromtimestamp(lab / 1e6, UTC)
        if t < train_until:
            expected = ("train", None) if available < train_until else (None, "label_after_cutoff")
        elif t < train_until + embargo:
            expected = (None, "embargo")
        elif t < validation_until:
            expected = (("validation", None) if available < validation_until
                        else (None, "label_after_cutoff"))
        elif t < validation_until + embargo:
            expected = (None, "embargo")
        else:
            expected = ("test", None)
        assert (s, r) == expected


def test_metrics_match_definitions():
    truth = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.2])
    pairs = [(p, n) for p in score[truth == 1] for n in score[truth == 0]]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert auc(truth, score) == pytest.approx(brute)
    regression = compute_metrics("regression", np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0]))
    assert regression["mae"] == pytest.approx(1.0)
    assert regression["rmse"] == pytest.approx(np.sqrt(5 / 3))


# -- the train stage's input: the shared smoke run's published featurize output --------------
@pytest.fixture(scope="module")
def featurized(smoke_run):
    """The featurize output the smoke run published, typed as train reads it, and its rows."""
    from pipeline.engine.keys import published_outputs
    from pipeline.stages.dag import STAGES as DAG

    config = load_config(SMOKE, smoke_run.overrides[1::2])
    featurize = published_outputs(config, ArtifactStore(str(smoke_run.root)), DAG)["featurize"]
    return featurize, pads.dataset(featurize.files.data, format="parquet").to_table()


def _config(*overrides: str):
    return load_config(SMOKE, ["train.epochs=2", *overrides])


def run_train(root: Path, featurize, key: str, *overrides: str, telemetry=None):
    """Call the stage's run() the way the runner does: typed parameters and inputs, a fresh
    staging directory per key (under `root`, apart from the smoke run's artifacts)."""
    from pipeline.stages.train import STAGE, TrainParams

    store = ArtifactStore(str(root))
    telemetry = telemetry or Telemetry.start(TelemetrySpec(exporter="none"))
    staging = store.begin("train", key, "test-run")
    ctx = StageContext(TrainParams.from_config(_config(*overrides)), store,
                       {"featurize": featurize}, STAGE.files(staging), telemetry, "test-run", key)
    result = STAGE.run(ctx)
    assert result.rows_in == result.rows_out + result.rows_quarantined
    return result, Path(staging), store


def _traced_train(root: Path, featurize, key: str, *overrides: str):
    telemetry = Telemetry.start(TelemetrySpec(exporter="memory"))
    with telemetry.span("stage.train"):
        result, output, store = run_train(root, featurize, key, *overrides, telemetry=telemetry)
    spans = telemetry.spans()
    telemetry.shutdown()
    return result, output, store, spans


@pytest.fixture(scope="module")
def local_mode(ray_session, featurized, tmp_path_factory):
    """Ray Train's local mode (the one-machine configs): the loop runs in this process."""
    return _traced_train(tmp_path_factory.mktemp("train"), featurized[0], "local-mode",
                         "train.num_workers=0")


@pytest.fixture(scope="module")
def two_workers(ray_session, featurized, tmp_path_factory):
    """Ray Train with two worker actors (the cluster path), its spans kept."""
    return _traced_train(tmp_path_factory.mktemp("train"), featurized[0], "two-workers",
                         "train.num_workers=2")


# -- preprocessing -----------------------------------------------------------------------------
def test_preprocessing_is_fit_on_the_training_split_only(local_mode, featurized, tmp_path):
    from pipeline.stages.train import TrainParams, fit_preprocessing, split_rows

    featurize, table = featurized
    _, output, store, _ = local_mode
    config = _config()
    categorical = featurize.facts.categorical_columns
    feature_columns = featurize.facts.feature_columns
    width = len(feature_columns)
    saved = json.loads((output / "model" / "preprocessing.json").read_text())

    # Rewrite every test-period row (absurd features, unseen zones, extreme labels) and refit.
    splits, _ = assign_splits(table["requested_at"], table["completed_at"], config.split)
    test = pa.array(splits == "test")
    n = table.num_rows
    features = pa.FixedSizeListArray.from_arrays(pa.array(np.full(n * width, 1e6, np.float32)),
                                                 width)
    changed = table.set_column(table.schema.get_field_index("features"), "features",
                               pc.if_else(test, features, table["features"]))
    for name, value in (("pickup_zone", 999), ("dropoff_zone", 998)):
        changed = changed.set_column(changed.schema.get_field_index(name), name,
                                     pc.if_else(test, pa.scalar(value, pa.int32()), changed[name]))
    changed = changed.set_column(changed.schema.get_field_index("duration_min"), "duration_min",
                                 pc.if_else(test, 1e9, changed["duration_min"]))
    for i, part in enumerate(np.array_split(np.arange(n), 4)):
        pq.write_table(changed.take(pa.array(part)), tmp_path / f"part-{i}.parquet")
    telemetry = Telemetry.start(TelemetrySpec(exporter="memory"))
    ctx = StageContext(params=TrainParams.from_config(config), store=store, inputs={},
                       files=None, telemetry=telemetry, run_id="refit", cache_key="refit")
    refit, _ = fit_preprocessing(ctx, split_rows(ctx, str(tmp_path), featurize.facts),
                                 featurize.facts)
    telemetry.shutdown()
    refit = refit.to_json()  # equal up to the order of float sums (four files here, not two)
    sums = ("mean", "std", "label_mean", "label_std")
    assert {k: v for k, v in refit.items() if k not in sums} == \
        {k: v for k, v in saved.items() if k not in sums}
    for name in sums:
        np.testing.assert_allclose(refit[name], saved[name], rtol=1e-12,
                                   err_msg="test-period rows leaked into the preprocessing")

    # ... and the saved preprocessing is exactly the brute-force fit on the training rows alone.
    train_rows = table.filter(pa.array(splits == "train"))
    brute = fit_preprocessor(train_rows, feature_columns, categorical, "duration_min", "regression")
    assert brute.fit_rows == saved["fit_rows"] == train_rows.num_rows
    np.testing.assert_allclose(saved["mean"], brute.mean, rtol=1e-9)
    np.testing.assert_allclose(saved["std"], brute.std, rtol=1e-9)
    first = feature_columns[0]
    assert saved["mean"][0] == pytest.approx(np.nanmean(train_rows[first].to_numpy()))
    assert saved["categorical"] == brute.categorical
    assert saved["label_mean"] == pytest.approx(np.mean(train_rows["duration_min"].to_numpy()))
    json.dumps(saved, allow_nan=False)  # plain JSON


def test_vocabulary_codes_and_missing_values():
    table = pa.table({
        "features": pa.FixedSizeListArray.from_arrays(
            pa.array([1.0, np.nan, 3.0, 4.0, 5.0, np.nan], pa.float32()), 2),
        "zone": pa.array(["b", "a", None]),
        "y": pa.array([1.0, 2.0, 3.0]),
    })
    prep = fit_preprocessor(table, ["f0", "f1"], ["zone"], "y", "regression")
    assert prep.categorical == [{"column": "zone", "kind": "string", "values": ["a", "b"]}]
    later = table.set_column(1, "zone", pa.array(["a", "zz", "b"]))
    assert prep.codes(later).tolist() == [[1], [0], [2]]  # unseen and null → 0
    features = prep.features(table)
    assert features[0, 1] == 0.0 and features[2, 1] == 0.0  # NaN → the training mean → 0
    assert features[:, 0].mean() == pytest.approx(0.0, abs=1e-6)


# -- training through Ray Train ----------------------------------------------------------------
def test_train_writes_model_splits_and_spans(local_mode, featurized):
    result, output, _, spans = local_mode
    featurize, table = featurized
    details = result.facts
    assert details.worker_count == 0 and details.device == "cpu"
    assert details.epochs_run == 2 and details.restarts == 0
    assert 1 <= details.best_epoch <= 2
    assert details.splits["train"] > 0 and details.splits["validation"] > 0
    assert result.rows_in == table.num_rows
    assert set(details.excluded) <= {"label_after_cutoff", "embargo"}
    assert details.excluded["embargo"] > 0 and details.excluded["label_after_cutoff"] > 0
    assert details.samples_per_second > 0
    assert {"mae", "rmse", "loss"} <= set(details.metrics)

    splits = pq.read_table(output / "splits")
    assert splits.num_rows == table.num_rows
    assert sorted(splits["trip_id"].to_pylist()) == sorted(table["trip_id"].to_pylist())
    counted = pc.value_counts(pc.coalesce(splits["split"], splits["reason"])).to_pylist()
    assert {c["values"]: c["counts"] for c in counted} == {**details.splits,
                                                          **details.excluded}

    model = output / "model"
    assert {p.name for p in model.iterdir()} == {"weights.pt", "model.json", "preprocessing.json",
                                                 "history.json"}
    meta = json.loads((model / "model.json").read_text())
    assert meta["feature_columns"] == featurize.facts.feature_columns and meta["task"] == "regression"
    assert meta["best_epoch"] == details.best_epoch
    history = json.loads((model / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]

    names = [s["name"] for s in spans]
    assert names.count("train.epoch") == 2 and names.count("train.checkpoint") == 2
    _assert_epochs_are_children_of_the_fit(spans)
    assert {s["pid"] for s in spans if s["name"] == "train.epoch"} == {os.getpid()}, \
        "local mode trains in the driver"


def _assert_epochs_are_children_of_the_fit(spans: list[dict]) -> None:
    epochs = [s for s in spans if s["name"] == "train.epoch"]
    fit_span = next(s for s in spans if s["name"] == "train.fit")
    assert {e["trace_id"] for e in epochs} == {fit_span["trace_id"]}
    assert {e["parent_span_id"] for e in epochs} == {fit_span["span_id"]}


def test_predictor_round_trip(local_mode, featurized):
    result, output, store, _ = local_mode
    _, table = featurized
    predictor = load_predictor(store.fs, str(output / "model"))
    config = _config()
    splits, _ = assign_splits(table["requested_at"], table["completed_at"], config.split)
    validation = table.filter(pa.array(splits == "validation"))
    predicted = predictor.predict(validation)
    assert predicted.shape == (validation.num_rows,) and np.isfinite(predicted).all()
    metrics = compute_metrics("regression", validation["duration_min"].to_numpy(), predicted)
    assert metrics["rmse"] == pytest.approx(result.facts.metrics["rmse"], rel=1e-4)
    baseline = compute_metrics("regression", validation["duration_min"].to_numpy(),
                               np.full(validation.num_rows, predictor.preprocessor.label_mean))
    assert metrics["rmse"] < baseline["rmse"], "the model beats the training mean"
    # only the features column and raw categoricals are needed, and row order is kept
    narrow = validation.select(["features", "pickup_zone", "dropoff_zone"]).slice(0, 10)
    np.testing.assert_allclose(predictor.predict(narrow), predicted[:10], rtol=1e-6)


@pytest.fixture(scope="module")
def two_workers_one_killed(ray_session, featurized, tmp_path_factory):
    """The same run as `two_workers`, but rank 1 SIGKILLs itself after epoch 1's checkpoint."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KILL_ENV, "1")
        return run_train(tmp_path_factory.mktemp("train"), featurized[0], "two-workers-killed", "train.num_workers=2",
                         "train.max_failures=1")


# Ray Train worker groups start six or more processes each (13-15 s on 2 cores, more for a
# restart): these run with the two-node tests, in `make test-cluster`.
@pytest.mark.cluster
def test_two_workers_train_on_equal_shards(two_workers):
    result, output, _, spans = two_workers
    details = result.facts
    assert details.worker_count == 2 and details.restarts == 0
    history = json.loads((output / "model" / "history.json").read_text())
    assert [h["world_size"] for h in history] == [2, 2]
    epochs = [s for s in spans if s["name"] == "train.epoch"]  # per epoch and rank
    assert len(epochs) == 4 and len({e["pid"] for e in epochs} - {os.getpid()}) == 2, \
        "each rank is a worker process"
    _assert_epochs_are_children_of_the_fit(spans)
    # equal shards: at most one row dropped so that both ranks take the same number of steps
    assert details.splits["train"] - 1 <= details.train_rows_consumed <= details.splits["train"]
    assert np.isfinite(details.metrics["rmse"])


@pytest.mark.cluster
def test_killed_worker_resumes_from_its_checkpoint(two_workers_one_killed):
    result, output, _ = two_workers_one_killed
    details = result.facts
    assert details.restarts >= 1
    assert details.epochs_run == 2
    history = json.loads((output / "model" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["attempt"] for h in history] == [0, 1], "epoch 2 ran in the restarted worker group"


@pytest.mark.cluster
def test_same_inputs_seed_and_workers_give_identical_weights(two_workers, two_workers_one_killed):
    """Two runs, same inputs, seed and worker count → the same weights, bit for bit. The second
    run even lost a worker after epoch 1: seeds per (epoch, rank) and an order-preserving shard
    split make a resumed epoch draw exactly what an uninterrupted one would."""
    (first, first_dir, _, _), (second, second_dir, _) = two_workers, two_workers_one_killed
    assert first.facts.weights_sha256 == second.facts.weights_sha256
    a = torch.load(first_dir / "model" / "weights.pt", weights_only=True)
    b = torch.load(second_dir / "model" / "weights.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training(ray_session, featurized, tmp_path):
    featurize, table = featurized
    gpu = load_config(REPO / "configs" / "gpu.yaml").train  # its train section on the smoke data
    overrides = [f"train.{k}={json.dumps(v)}" for k, v in gpu.model_dump(mode="json").items()]
    result, output, _ = run_train(tmp_path, featurize, "gpu", *overrides)
    assert result.facts.device == "cuda"
    assert result.facts.epochs_run >= 1 and np.isfinite(result.facts.metrics["rmse"])
    history = json.loads((output / "model" / "history.json").read_text())
    assert {h["device"] for h in history} == {"cuda"}
    # the saved model loads and predicts on a machine without a GPU (weights saved on the CPU)
    predictor = load_predictor(ArtifactStore(str(tmp_path)).fs, str(output / "model"))
    assert np.isfinite(predictor.predict(table.slice(0, 100))).all()


def test_local_mode_resumes_a_killed_run_from_its_kept_checkpoint(smoke_copy, local_mode,
                                                                  ray_address):
    """`num_workers: 0` trains in the driver: the test hook SIGKILLs the `pipeline` process itself
    after epoch 1's checkpoint. The rerun resumes from it and ends with the weights of a run
    that was never killed."""
    root, overrides = smoke_copy
    settings = [*overrides, "--set", "train.epochs=2", "--set", "train.num_workers=0"]
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", "stage", "train", "-c", str(SMOKE), *settings,
         "--set", f"cluster.address={ray_address}"],
        cwd=REPO, env={**os.environ, KILL_ENV: "1"}, capture_output=True, text=True,
        timeout=240, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    key = re.search(r"cache key ([0-9a-f]+)", killed.stdout).group(1)
    kept = root / "train_runs" / key / "local-mode"
    assert sorted(p.name for p in kept.iterdir()) == ["epoch-0001"]
    assert not (root / "stages" / "train" / key).exists(), "nothing published for the key"

    code, _, summary = run_cli("stage", "train", "-c", str(SMOKE), *settings, "--json")
    assert code == 0 and summary["stages"][0]["cache_key"] == key
    manifest = json.loads((root / "stages" / "train" / key / "manifest.json").read_text())
    assert manifest["details"]["restarts"] == 1 and manifest["details"]["epochs_run"] == 2
    history = json.loads((root / "stages" / "train" / key / "model" / "history.json").read_text())
    assert [h["attempt"] for h in history] == [0, 1], "epoch 2 ran in the rerun"

    uninterrupted = local_mode[0]  # the same config and inputs, never killed
    assert manifest["details"]["weights_sha256"] == uninterrupted.facts.weights_sha256
