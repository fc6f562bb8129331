"""One trace per run, across the driver, Ray tasks and Train workers; spans over real OTLP/HTTP."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from pipeline.core.config import load_config
from pipeline.engine.runner import Runner
from pipeline.stages.dag import STAGES as DAG
from tests.conftest import SMOKE, copy_of_smoke_run, run_cli
from tests.otlp_receiver import otlp_receiver

STAGES = ["ingest", "validate", "featurize", "train", "evaluate", "register"]


def _ancestors(span: dict, by_id: dict[str, dict]) -> list[str]:
    names = []
    while span.get("parent_span_id") in by_id:
        span = by_id[span["parent_span_id"]]
        names.append(span["name"])
    return names


@pytest.fixture(scope="module")
def window_change_over_otlp(smoke_run, tmp_path_factory):
    """The shared smoke run again with one window changed, its spans sent over OTLP/HTTP; on a
    copy, so the model version it registers stays out of the shared registry."""
    _, overrides = copy_of_smoke_run(smoke_run, tmp_path_factory.mktemp("window-change"))
    with otlp_receiver() as receiver:
        code, output, summary = run_cli(
            "run", "-c", str(SMOKE), *overrides,
            "--set", "features.windows.0.window=3d", "--set", "telemetry.exporter=otlp",
            "--set", f"telemetry.endpoint={receiver.endpoint}", "--json")
    assert code in (0, 3), output  # 3: ran fine, and the gate kept the champion
    return summary, receiver.spans, overrides


def test_one_trace_with_a_span_per_stage_under_the_root(smoke_run):
    spans = smoke_run.spans
    assert {s["trace_id"] for s in spans} == {smoke_run.summary["trace_id"]}
    roots = [s for s in spans if s["name"] == "run"]
    assert len(roots) == 1 and not roots[0]["parent_span_id"]
    stages = [s for s in spans if s["name"].startswith("stage.")]
    assert [s["name"] for s in sorted(stages, key=lambda s: s["start_ns"])] == \
        [f"stage.{name}" for name in STAGES]
    assert all(s["parent_span_id"] == roots[0]["span_id"] for s in stages)
    for stage in stages:
        attributes = stage["attributes"]
        assert attributes["stage.status"] == "ran"
        assert attributes["rows.in"] == attributes["rows.out"] + attributes["rows.quarantined"]


def test_ray_task_and_train_worker_spans_join_the_trace_from_other_processes(smoke_run):
    spans = smoke_run.spans
    by_id = {s["span_id"]: s for s in spans}
    driver_pid = os.getpid()
    expected = {"ingest.copy_files": "stage.ingest", "validate.file": "stage.validate",
                "featurize.chunk": "stage.featurize", "featurize.audit": "stage.featurize"}
    names = Counter(s["name"] for s in spans)
    for name, stage in expected.items():
        assert names[name] >= 1, f"no {name} span"
        for span in (s for s in spans if s["name"] == name):
            assert stage in _ancestors(span, by_id), f"{name} is not under {stage}"
            assert span["pid"] != driver_pid, f"{name} ran in the driver"
    # the smoke config trains in Ray Train's local mode, in the driver (test_train.py covers
    # the spans of a Ray Train worker process), and its test period is small enough to score
    # there too (test_champion_gate.py covers scoring in Ray tasks)
    in_driver = {"train.epoch": "stage.train", "train.checkpoint": "stage.train",
                 "evaluate.score_file": "stage.evaluate"}
    for name, stage in in_driver.items():
        assert names[name] >= 1, f"no {name} span"
        assert all(stage in _ancestors(s, by_id) for s in spans if s["name"] == name)
    epochs = [s for s in spans if s["name"] == "train.epoch"]
    assert all(s["attributes"]["rank"] == 0 for s in epochs)


def test_a_failing_stage_records_the_exception_on_its_span(ray_session, smoke_source, tmp_path):
    config = load_config(SMOKE, [f"dataset.source={smoke_source}", f"artifact_root={tmp_path}",
                                 "telemetry.exporter=memory",
                                 "validate.max_quarantined_fraction=0.001"])
    runner = Runner(config, DAG)
    with pytest.raises(Exception, match="over the limit"):
        runner.run()
    failed = next(s for s in runner.telemetry.spans() if s["name"] == "stage.validate")
    assert failed["status"] == "ERROR"
    assert any(event["name"] == "exception" for event in failed["events"])


def test_changing_one_window_reruns_only_featurize_and_what_follows(window_change_over_otlp):
    summary, _, _ = window_change_over_otlp
    assert [s["status"] for s in summary["stages"]] == ["cached", "cached"] + ["ran"] * 4
    assert summary["model_version"] == "v2"


def test_spans_arrive_over_otlp_http(window_change_over_otlp):
    summary, spans, _ = window_change_over_otlp
    assert {s["trace_id"] for s in spans} == {summary["trace_id"]}
    by_id = {s["span_id"]: s for s in spans}
    stages = {s["name"]: s for s in spans if s["name"].startswith("stage.")}
    assert set(stages) == {f"stage.{name}" for name in STAGES}
    assert stages["stage.ingest"]["attributes"]["stage.status"] == "cached"
    for name, stage in (("featurize.chunk", "stage.featurize"), ("train.epoch", "stage.train")):
        arrived = [s for s in spans if s["name"] == name]
        assert arrived and all(stage in _ancestors(s, by_id) for s in arrived)


def test_profile_reports_every_stage_and_draws_the_timeline(smoke_run):
    code, output, _ = run_cli("profile", "-c", str(SMOKE), *smoke_run.overrides,
                              smoke_run.summary["run_id"])
    assert code == 0, output
    assert output.startswith(f"run {smoke_run.summary['run_id']} ")
    for name in STAGES:
        assert name in output
    png = smoke_run.root / "runs" / smoke_run.summary["run_id"] / "timeline.png"
    assert png.stat().st_size > 10_000
    assert png.with_suffix(".json").stat().st_size > 1_000


def test_profile_attributes_each_computed_stage_to_named_child_spans(smoke_run):
    """Issue 11: a user sees where each stage's time went, so the named spans inside every
    stage that ran (listing, reading, computing, waiting for workers, publishing) cover at
    least 90% of it; the `named` column is that share."""
    code, output, _ = run_cli("profile", "-c", str(SMOKE), *smoke_run.overrides,
                              smoke_run.summary["run_id"])
    assert code == 0, output
    table = output.split("\n\n")[0]  # the stage table; the phases and slowest work follow
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.split() and line.split()[0] in STAGES}
    assert set(rows) == set(STAGES)
    for name, columns in rows.items():
        assert columns[1] == "ran", columns
        assert int(columns[-1].rstrip("%")) >= 90, f"{name}: {columns[-1]} named"


def test_an_otlp_run_keeps_a_local_copy_of_its_spans_to_profile(window_change_over_otlp):
    summary, _, overrides = window_change_over_otlp
    code, output, _ = run_cli("profile", "-c", str(SMOKE), *overrides,
                              summary["run_id"])
    assert code == 0, output
    assert output.startswith(f"run {summary['run_id']} ")
    assert "featurize.chunk" in output and "train.epoch" in output
