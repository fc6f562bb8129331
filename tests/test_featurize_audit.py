"""The featurize stage end to end on Ray, and the time-travel audit that guards it.

The stage's chunked output must equal one pass of the kernel over all rows (and the brute-force
loop on a sample); the audit must pass on honest features and fail, naming feature, row and both
values, when a leaky feature path or a too-short lookback is planted. The perturbation check must
catch, with the config's leakage rule bypassed, a label-time entity, a window that includes the row
itself and a label column mislabelled as known at the event.
"""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from pipeline.core.config import load_config, parse_config
from pipeline.core.schema import Roles
from pipeline.datasets import write_partitioned
from pipeline.datasets.rideshare import generate_rideshare
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.keys import published_outputs
from pipeline.engine.runner import Runner
from pipeline.engine.stage import Output, StageContext
from pipeline.features.audit import (
    AuditFailed,
    SampledFile,
    agree,
    audit_batch,
    plan_sample,
    read_sample,
)
from pipeline.features.history import _in_window
from pipeline.features.partitions import DayPartitions
from pipeline.features.reference import reference_windows
from pipeline.features.windows import WindowSpec, compute_windows, window_specs
from pipeline.stages import featurize
from pipeline.stages.dag import STAGES
from pipeline.stages.featurize import spec as featurize_spec
from pipeline.telemetry import Telemetry, TelemetrySpec
from tests.conftest import SMOKE

ROWS = 5000


def clean_rows(config) -> pa.Table:
    """Synthetic trips without the dirt validate would quarantine, in its output's shape."""
    raw = generate_rideshare(ROWS, config.dataset.start, config.dataset.end, seed=3)
    end = pa.scalar(config.dataset.end, pa.timestamp("us", tz="UTC"))
    raw = raw.filter(pc.field("driver_id").is_valid() & pc.field("pickup_zone").is_valid()
                     & pc.field("distance_km").is_valid() & (pc.field("distance_km") > 0)
                     & (pc.field("completed_at") >= pc.field("requested_at"))
                     & (pc.field("requested_at") < end))
    _, first = np.unique(raw["trip_id"].to_numpy(), return_index=True)
    return raw.take(pa.array(np.sort(first))).drop_columns(["day"])


EXTRA_FEATURES = [  # beyond the smoke config's: every path of the kernel through the stage
    {"entity": "driver_id", "column": "fare", "agg": "last", "window": "2d"},
    {"entity": ["pickup_zone", "dropoff_zone"], "column": "distance_km", "agg": "max",
     "window": "6h"},
    {"entity": "rider_id", "column": "duration_min", "agg": "min", "window": "3d"},
]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("featurize")
    smoke = load_config(SMOKE, [f"artifact_root={root / 'artifacts'}", "features.chunk=6h",
                                "features.audit_sample=60"])
    data = smoke.model_dump(mode="json", by_alias=True)
    data["features"]["windows"] += EXTRA_FEATURES
    return parse_config(data)


@pytest.fixture(scope="module")
def clean(ray_session, config, tmp_path_factory) -> tuple[pa.Table, Output]:
    """The clean rows as validate published them (ingest and validate run by the runner on a
    source of synthetic trips), and validate's typed output, featurize's input."""
    source = str(tmp_path_factory.mktemp("source") / "trips")
    rows = clean_rows(config)
    write_partitioned(rows.append_column("day", pc.strftime(rows["requested_at"],
                                                            format="%Y-%m-%d")), source)
    config = config.model_copy(update={"dataset": config.dataset.model_copy(
        update={"source": source, "generate": None})})
    runner = Runner(config, STAGES)
    runner.run(only="ingest")
    runner.run(only="validate")
    validate = published_outputs(config, runner.store, STAGES)["validate"]
    published = pads.dataset(validate.files.clean, format="parquet", partitioning="hive")
    return published.to_table().drop_columns(["day"]), validate


def run_stage(config, validate: Output, run_id: str):
    """The stage's run() as the runner calls it: typed parameters and input, a staging folder."""
    store = ArtifactStore(config.artifact_root)
    staging = store.begin("featurize", "key", run_id)
    context = StageContext(featurize.FeaturizeParams.from_config(config), store,
                           {"validate": validate}, featurize.STAGE.files(staging),
                           Telemetry.start(TelemetrySpec(exporter="none")), run_id, "c0ffee42")
    return featurize.STAGE.run(context), f"{staging}/data"


@pytest.fixture(scope="module")
def honest(ray_session, config, clean):
    result, output = run_stage(config, clean[1], "honest")
    return result, pads.dataset(output, format="parquet").to_table()


def test_stage_output_equals_one_pass_over_all_rows(honest, config, clean):
    result, output = honest
    rows = clean[0]
    assert result.rows_in == result.rows_out == rows.num_rows == output.num_rows
    assert result.facts.chunks > 50  # 6h chunks over two weeks: windows cross many
    specs = window_specs(config)
    key, t = config.dataset.row_key, config.dataset.event_time
    expected = compute_windows(rows, rows, specs, event_time=t, row_key=key)
    order = pc.sort_indices(rows[key]).to_numpy()
    output = output.sort_by(key)
    assert output[key].to_pylist() == rows[key].take(pa.array(order)).to_pylist()
    for spec in specs:
        want = expected.columns[spec.name].take(pa.array(order)).to_pylist()
        got = output[spec.name].to_pylist()
        bad = [(k, g, w) for k, g, w in zip(output[key].to_pylist(), got, want) if not agree(g, w)]
        assert not bad, f"{spec.name}: {bad[:5]}"
    assert result.facts.null_values_skipped == expected.nulls_skipped


def test_stage_agrees_with_the_brute_force_loop_on_a_sample(honest, config, clean):
    output = honest[1]
    rows = clean[0]
    specs = window_specs(config)
    picked = output.take(pa.array(np.random.default_rng(0).choice(output.num_rows, 25, False)))
    loop = reference_windows(rows, picked, specs, event_time=config.dataset.event_time,
                             row_key=config.dataset.row_key)
    for spec in specs:
        for got, want in zip(picked[spec.name].to_pylist(), loop[spec.name]):
            assert agree(got, want), (spec.name, got, want)


def test_training_table_columns_and_packed_tensor(honest, config):
    result, output = honest
    details = result.facts
    numeric = list(config.features.numeric)
    names = [spec.name for spec in window_specs(config)]
    assert details.feature_columns == numeric + names
    assert details.categorical_columns == list(config.features.categorical)
    dataset = config.dataset
    for column in (dataset.row_key, dataset.event_time, dataset.label, dataset.label_available_at,
                   *config.features.categorical, *names, "features"):
        assert column in output.column_names
    assert output.schema.field("features").type == pa.list_(pa.float32(), len(numeric + names))
    packed = np.stack(output["features"].to_numpy(zero_copy_only=False))
    for j, name in enumerate(details.feature_columns):
        column = pc.fill_null(pc.cast(output[name], pa.float32()), math.nan).to_numpy()
        np.testing.assert_array_equal(packed[:, j], column)
    assert output.schema.field(names[1]).type == pa.int64()  # a count
    assert set(result.statistics) == set(details.feature_columns)
    assert set(result.statistics[names[0]]) == {"null_share", "mean", "min", "max"}
    assert details.null_values_skipped.keys() == {s.name for s in window_specs(config)
                                                      if s.column}


def test_audit_runs_on_the_configured_sample_and_passes(honest, config):
    audit = honest[0].facts.audit
    assert audit["sampled"] == config.features.audit_sample
    assert audit["mismatches"] == 0
    assert audit["compared"] == audit["sampled"] * len(config.features.windows)
    assert audit["perturbed"] == audit["compared"]  # every sampled row gets both checks


def test_sample_is_seeded_and_batched_by_time(honest, config):
    output_dir = _output_dir(config, "honest")
    fs = pafs.LocalFileSystem()

    def picks(seed: int, span: timedelta = timedelta(days=2)) -> list[list[SampledFile]]:
        return plan_sample(fs, output_dir, 30, seed, "requested_at", span, most=100)

    def keys(batches: list[list[SampledFile]]) -> list[int]:
        return [k for batch in batches
                for k in read_sample(fs, batch, ["trip_id"])["trip_id"].to_pylist()]

    assert keys(picks(5)) == keys(picks(5)) != keys(picks(6))
    assert len(set(keys(picks(5)))) == 30
    for batch in picks(5):
        times = read_sample(fs, batch, ["requested_at"])["requested_at"].to_pylist()
        assert max(times) - min(times) < timedelta(days=2)
    assert len(picks(5, timedelta(days=30))) == 1


@pytest.mark.parametrize("spread", [10**6, 2**61], ids=["microsecond keys", "rank keys"])
def test_audit_selects_each_samples_window_like_a_loop(spread):
    """The audit's vectorised selection of what each sample could see equals a plain loop, also
    when the times span too much for microsecond keys and it falls back to ranks."""
    rng = np.random.default_rng(4)
    source_code, query_code = rng.integers(-1, 5, 400), rng.integers(-1, 6, 50)
    available = rng.integers(0, spread, 400)
    start = rng.integers(0, spread, 50)
    end = start + rng.integers(0, spread // 3, 50)
    owner, source = _in_window(source_code, available, query_code, start, end)
    want = {(q, s) for q in range(50) for s in range(400)
            if query_code[q] >= 0 and source_code[s] == query_code[q]
            and start[q] <= available[s] < end[q]}
    assert sorted(zip(owner.tolist(), source.tolist())) == sorted(want) and want


def test_audit_catches_a_leaky_feature_path(ray_session, config, clean, monkeypatch):
    """Plant the leak: label-time values used as if available at the event time."""
    def leaky(config):
        return [dataclasses.replace(spec, available_at=config.dataset.event_time)
                for spec in window_specs(config)]

    monkeypatch.setattr(featurize_spec, "window_specs", leaky)
    with pytest.raises(AuditFailed) as failure:
        run_stage(config, clean[1], "leaky")
    message = str(failure.value)
    assert "pace_min_per_km" in message and "stage value" in message
    assert "audit value" in message and "row " in message


def test_audit_catches_a_lookback_that_is_too_short(ray_session, config, clean, monkeypatch):
    monkeypatch.setattr(featurize, "halo_us", lambda *args: 0)
    with pytest.raises(AuditFailed, match=r"feature driver_id__\w+__7d, row \d+"):
        run_stage(config, clean[1], "short-halo")


def test_audit_does_not_trust_the_declared_available_at(config, clean):
    """Even given the leaky specs, the audit blanks label-time values not yet known: caught."""
    rows, validate = clean
    dataset = config.dataset
    leaky = [dataclasses.replace(spec, available_at=dataset.event_time)
             for spec in window_specs(config)]
    leaked = compute_windows(rows, rows, leaky, event_time=dataset.event_time,
                             row_key=dataset.row_key).columns
    picked = pa.array(np.random.default_rng(1).choice(rows.num_rows, 40, replace=False))
    sample = pa.table({dataset.row_key: rows[dataset.row_key],
                       dataset.event_time: rows[dataset.event_time], **leaked}).take(picked)
    days = DayPartitions.discover(pafs.LocalFileSystem(), validate.files.clean)
    label_time = {n for n, spec in dataset.columns.items() if spec.known_at == "label"}
    audit = audit_batch(days, sample, leaky, Roles.of(dataset), label_time,
                        config.validate_.max_label_delay, compute_windows)
    assert audit.time_travel == 40 * len(leaky)
    assert audit.perturbation == 40 * len(leaky)
    assert {m.feature for m in audit.mismatches} >= {s.name for s in leaky
                                                      if s.column == "pace_min_per_km"
                                                      and s.entity == ("pickup_zone",)}
    assert all(m.row_key in set(sample[dataset.row_key].to_pylist()) for m in audit.mismatches)


LABEL_ENTITY = WindowSpec(name="rows_with_my_duration", entity=("duration_min",), column=None,
                          agg="count", window_us=7 * 86_400 * 1_000_000,
                          available_at="completed_at")
"""Planted: earlier trips with the same duration as this one. It groups by the row's own label,
so it tells the model the label; the config refuses it (features.windows.N.entity)."""


def _caught_by_perturbation(failure: pytest.ExceptionInfo, time_travel: str = r"\d+") -> None:
    message = str(failure.value)
    assert re.search(rf"failed: {time_travel} of \d+ feature values .* and [1-9]\d* of \d+ "
                     r"changed when the row's own label-time values were nulled", message), message
    assert "perturbation: feature " in message


def test_perturbation_catches_a_label_time_entity(ray_session, config, clean, monkeypatch):
    """Available at label time, the feature recomputes to itself from the past: only perturbing
    the row's own label shows that it depends on it."""
    honest = window_specs(config)
    monkeypatch.setattr(featurize_spec, "window_specs", lambda _: [*honest, LABEL_ENTITY])
    with pytest.raises(AuditFailed) as failure:
        run_stage(config, clean[1], "label-entity")
    _caught_by_perturbation(failure, time_travel="0")
    assert "feature rows_with_my_duration" in str(failure.value)


def closed_kernel(sources, queries, specs, *, event_time, row_key, aggregations=None):
    """Planted: the production kernel with every window ending at t inclusive, (t - W, t]: a row
    sees itself. Module level, so that Ray workers import it by name."""
    shifted = pc.add(queries[event_time], pa.scalar(timedelta(microseconds=1)))
    queries = queries.set_column(queries.schema.get_field_index(event_time), event_time, shifted)
    return compute_windows(sources, queries, specs, event_time=event_time, row_key=row_key,
                           aggregations=aggregations)


def test_perturbation_catches_a_window_that_includes_the_row(ray_session, config, clean,
                                                             monkeypatch):
    monkeypatch.setattr(featurize, "compute_windows", closed_kernel)
    with pytest.raises(AuditFailed) as failure:
        run_stage(config, clean[1], "closed-window")
    _caught_by_perturbation(failure)
    assert "perturbation: feature driver_id__rows__count__7d" in str(failure.value)


def test_perturbation_catches_a_label_mislabelled_as_known_at_the_event(ray_session, config, clean,
                                                                       monkeypatch):
    """The schema says the label is known at the event (the config rule would refuse that), and a
    window groups by it: the label and its available-at are perturbed whatever the schema says."""
    dataset = config.dataset
    columns = {**dataset.columns,
               "duration_min": dataset.columns["duration_min"].model_copy(
                   update={"known_at": "event"})}
    mislabelled = config.model_copy(update={"dataset": dataset.model_copy(
        update={"columns": columns})})
    honest = window_specs(config)
    planted = dataclasses.replace(LABEL_ENTITY, available_at=dataset.event_time)
    monkeypatch.setattr(featurize_spec, "window_specs", lambda _: [*honest, planted])
    assert "duration_min" not in featurize.FeaturizeParams.from_config(
        mislabelled).label_time_columns
    with pytest.raises(AuditFailed) as failure:
        run_stage(mislabelled, clean[1], "mislabelled")
    _caught_by_perturbation(failure)


def _output_dir(config, run_id: str) -> str:
    store = ArtifactStore(config.artifact_root)
    return store.path("stages", "featurize", "_staging", f"key-{run_id}", "data")
