"""Telemetry: one trace across the driver and Ray worker processes, for every exporter that keeps
data (memory, jsonl files, OTLP over a real loopback HTTP receiver), plus redaction and the profile
report. Ray work runs on the session's shared local Ray (conftest `ray_session`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray

from pipeline.commands.profile import (
    build_profile,
    load_run_spans,
    profile_run,
    render_table,
)
from pipeline.commands.timeline import render_timeline_png
from pipeline.telemetry import (
    REDACTED,
    Telemetry,
    TelemetrySpec,
    redact,
    redact_text,
    worker_meter,
    worker_span,
)

try:
    from tests.otlp_receiver import otlp_receiver
except ImportError:  # tests/ on sys.path instead of the repo root
    from otlp_receiver import otlp_receiver

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRET"
SECRET_URL = f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@minio.local/bucket/events"


@ray.remote
def traced_chunk(carrier: dict, chunk: int, fail: bool = False) -> int:
    """What a stage's Ray task does: a span from the carrier, a nested span, a worker metric."""
    with worker_span(carrier, "featurize.chunk", {"chunk": chunk, "source": SECRET_URL}):
        with worker_span(carrier, "featurize.halo"):
            pass
        worker_meter(carrier).create_counter("worker.rows").add(10, {"stage": "featurize"})
        if fail:
            raise ValueError(f"chunk {chunk} failed reading {SECRET_URL}")
    return os.getpid()


def run_tree(tel: Telemetry, chunks: int = 2) -> list[int]:
    """run → stage.featurize → 2 Ray tasks (featurize.chunk → featurize.halo); returns task pids."""
    stage_attributes = {"stage.name": "featurize", "storage_options": {"key": SECRET}}
    with tel.span("run", {"run.id": "r-test"}), tel.span("stage.featurize", stage_attributes):
        carrier = tel.carrier()
        pids = ray.get([traced_chunk.remote(carrier, i) for i in range(chunks)])
        tel.counter("pipeline.rows", "rows", "rows per stage").add(100, {"stage": "featurize"})
    return pids


def assert_tree(spans: list[dict], pids: list[int] | None = None) -> None:
    by_name: dict[str, list[dict]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)
    (run,) = by_name["run"]
    (stage,) = by_name["stage.featurize"]
    chunks, halos = by_name["featurize.chunk"], by_name["featurize.halo"]
    assert len(chunks) == 2 and len(halos) == 2
    assert {s["trace_id"] for s in spans} == {run["trace_id"]}, "one trace for the whole run"
    assert run["parent_span_id"] is None
    assert stage["parent_span_id"] == run["span_id"]
    assert all(c["parent_span_id"] == stage["span_id"] for c in chunks)
    assert {h["parent_span_id"] for h in halos} == {c["span_id"] for c in chunks}
    if pids is not None:
        assert run["pid"] == stage["pid"] == os.getpid()
        assert {c["pid"] for c in chunks} == set(pids)
        assert os.getpid() not in pids, "tasks ran in other processes"


def test_memory_exporter_joins_worker_spans_into_one_trace(ray_session):
    spec = TelemetrySpec(exporter="memory", resource_attributes={"run.id": "r-test"})
    tel = Telemetry.start(spec)
    pids = run_tree(tel)
    tel.shutdown()
    spans = tel.spans()
    assert_tree(spans, pids)
    worker = next(s for s in spans if s["name"] == "featurize.chunk")
    assert worker["resource"]["run.id"] == "r-test"
    assert worker["resource"]["raypipe.process.role"] == "worker"
    assert worker["end_ns"] >= worker["start_ns"] > 0
    assert any(m["name"] == "pipeline.rows" and m["value"] == 100 for m in tel.metrics())


def test_jsonl_exporter_writes_driver_worker_and_metric_files(ray_session, tmp_path):
    spec = TelemetrySpec(
        exporter="jsonl",
        run_dir=str(tmp_path),
        resource_attributes={"aws_secret_access_key": SECRET},
    )
    tel = Telemetry.start(spec)
    pids = run_tree(tel)
    tel.shutdown()

    span_files = sorted(p.name for p in (tmp_path / "spans").iterdir())
    assert "driver.jsonl" in span_files
    assert len([f for f in span_files if f.startswith("worker-")]) == len(set(pids))
    assert_tree(load_run_spans(str(tmp_path)), pids)
    assert sorted(s["span_id"] for s in tel.spans()) == sorted(
        s["span_id"] for s in load_run_spans(str(tmp_path))
    )

    metric_lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    driver_metrics = [json.loads(line) for line in metric_lines]
    (rows,) = [m for m in driver_metrics if m["name"] == "pipeline.rows"]
    assert rows["value"] == 100 and rows["attributes"] == {"stage": "featurize"}
    worker_rows = [m for m in tel.metrics() if m["name"] == "worker.rows"]
    assert sum(m["value"] for m in worker_rows) == 20  # 2 tasks x 10, summed over processes

    everything = "".join(p.read_text() for p in tmp_path.rglob("*.jsonl"))
    assert SECRET not in everything and "AKIAIOSFODNN7EXAMPLE" not in everything
    assert REDACTED in everything


def test_otlp_exporter_sends_driver_and_worker_spans_over_http(ray_session):
    with otlp_receiver() as receiver:
        spec = TelemetrySpec(
            exporter="otlp", endpoint=receiver.endpoint, resource_attributes={"run.id": "r-otlp"}
        )
        tel = Telemetry.start(spec)
        pids = run_tree(tel)
        tel.shutdown()  # synchronous: everything has arrived when it returns

        assert_tree(receiver.spans)
        assert {
            s["resource"]["process.pid"] for s in receiver.spans if s["name"] == "featurize.chunk"
        } == set(pids)
        assert {s["resource"]["run.id"] for s in receiver.spans} == {"r-otlp"}
        stage = next(s for s in receiver.spans if s["name"] == "stage.featurize")
        assert stage["attributes"]["storage_options"] == REDACTED
        chunk = next(s for s in receiver.spans if s["name"] == "featurize.chunk")
        assert SECRET not in chunk["attributes"]["source"]

        assert receiver.metric_value("pipeline.rows", stage="featurize") == 100
        latest = {}
        for m in receiver.metrics:
            if m["name"] == "worker.rows":
                latest[m["resource"]["process.pid"]] = m["value"]
        assert sum(latest.values()) == 20
        assert "/v1/traces" in receiver.requests and "/v1/metrics" in receiver.requests


def test_worker_span_is_exported_when_it_closes_even_inside_a_driver_span():
    """Ray may reuse or kill a worker after the task returns: its spans must already be out."""
    with otlp_receiver() as receiver:
        tel = Telemetry.start(TelemetrySpec(exporter="otlp", endpoint=receiver.endpoint))
        with tel.span("stage.train") as stage:
            carrier = tel.carrier()
            with worker_span(carrier, "train.epoch"), worker_span(carrier, "train.step"):
                pass
            arrived = {s["name"]: s for s in receiver.spans}  # before any driver flush
        tel.shutdown()
    assert set(arrived) == {"train.epoch", "train.step"}
    assert arrived["train.epoch"]["parent_span_id"] == f"{stage.get_span_context().span_id:016x}"
    assert arrived["train.step"]["parent_span_id"] == arrived["train.epoch"]["span_id"]


def test_exception_marks_driver_and_worker_spans_as_errors(ray_session):
    tel = Telemetry.start(TelemetrySpec(exporter="memory"))
    with (
        pytest.raises(RuntimeError, match="stage broke"),
        tel.span("run"),
        tel.span("stage.validate", {"stage.name": "validate"}),
    ):
        carrier = tel.carrier()
        with pytest.raises(ray.exceptions.RayTaskError):
            ray.get(traced_chunk.remote(carrier, 7, fail=True))
        raise RuntimeError("stage broke")
    tel.shutdown()
    spans = {s["name"]: s for s in tel.spans()}
    for name in ("run", "stage.validate", "featurize.chunk"):
        assert spans[name]["status"] == "ERROR", name
        (event,) = [e for e in spans[name]["events"] if e["name"] == "exception"]
        assert event["attributes"]["exception.type"] in ("RuntimeError", "ValueError")
    assert spans["featurize.halo"]["status"] == "UNSET"
    chunk = spans["featurize.chunk"]
    assert SECRET not in json.dumps(chunk), "exception message and status are redacted too"
    assert chunk["parent_span_id"] == spans["stage.validate"]["span_id"]


def test_none_exporter_is_a_cheap_no_op(ray_session):
    tel = Telemetry.start(TelemetrySpec(exporter="none"))
    with tel.span("run") as span:
        assert not span.is_recording()
        carrier = tel.carrier()
        assert "traceparent" not in carrier
        ray.get(traced_chunk.remote(carrier, 0))
        tel.counter("pipeline.rows").add(1)
    tel.shutdown()
    assert tel.spans() == [] and tel.metrics() == []


def test_telemetry_runs_are_independent_in_one_process(tmp_path):
    first = Telemetry.start(TelemetrySpec(exporter="memory"))
    second = Telemetry.start(TelemetrySpec(exporter="jsonl", run_dir=str(tmp_path)))
    with first.span("run") as span:
        trace_id = span.get_span_context().trace_id
    with second.span("run") as span:
        assert span.get_span_context().trace_id != trace_id
    first.shutdown()
    second.shutdown()
    second.shutdown()  # idempotent
    assert [s["name"] for s in first.spans()] == ["run"]
    assert [s["name"] for s in second.spans()] == ["run"]


def test_redact_masks_secret_keys_and_urls_but_keeps_ordinary_keys():
    config = {
        "storage_options": {"key": "AKIA", "secret": SECRET},
        "aws_session_token": "tok",
        "api_key": "k1",
        "Authorization": "Bearer abcdefghijklmnop",
        "nested": [{"password": "p"}, {"clientSecret": "s"}],
        "source": SECRET_URL,
        "mirror": "https://alice:pw@example.com/data?X-Amz-Signature=abc123&part=1",
        "cache_key": "c0ffee",
        "row_key": "trip-1",
        "rows.in": 10,
        "plain": "s3://bucket/events/2024@v2.parquet",
    }
    out = redact(config)
    assert out["storage_options"] == REDACTED
    assert out["aws_session_token"] == out["api_key"] == out["Authorization"] == REDACTED
    assert out["nested"] == [{"password": REDACTED}, {"clientSecret": REDACTED}]
    assert out["source"] == f"s3://{REDACTED}@minio.local/bucket/events"
    assert out["mirror"].startswith(
        f"https://{REDACTED}@example.com/data?X-Amz-Signature={REDACTED}"
    )
    assert out["mirror"].endswith("&part=1")
    assert out["cache_key"] == "c0ffee" and out["row_key"] == "trip-1" and out["rows.in"] == 10
    assert out["plain"] == config["plain"]
    assert config["storage_options"]["secret"] == SECRET, "input is not modified"
    assert redact_text("token AKIAIOSFODNN7EXAMPLE used") == f"token {REDACTED} used"
    assert SECRET not in repr(TelemetrySpec(resource_attributes={"aws_secret_access_key": SECRET}))


def test_span_attributes_are_flattened_into_types_otel_keeps():
    tel = Telemetry.start(TelemetrySpec(exporter="memory"))
    attributes = {
        "cfg": {"window": "7d", "path": Path("/data/x")},
        "unset": None,
        "mixed": [1, "a"],
        "ids": (1, 2),
        "cfg_token": {"nested": "x"},
    }
    with tel.span("run", attributes) as span:
        span.set_attribute("late.url", "https://bob:hunter2@example.com/x")
    tel.shutdown()
    (run,) = tel.spans()
    assert run["attributes"] == {
        "cfg.window": "7d",
        "cfg.path": "/data/x",
        "mixed": ["1", "a"],
        "ids": [1, 2],
        "cfg_token": REDACTED,
        "late.url": f"https://{REDACTED}@example.com/x",
    }


def test_span_ids_stay_unique_when_the_global_random_module_is_reseeded():
    """The training loop seeds `random` for reproducible weights, in the driver in local mode;
    span ids drawn after each reseed must not repeat (they did: parents were lost in a trace)."""
    import random

    tel = Telemetry.start(TelemetrySpec(exporter="memory"))
    for _ in range(2):
        random.seed(0)
        with tel.span("train.epoch"):
            pass
    spans = tel.spans()
    tel.shutdown()
    assert len({s["span_id"] for s in spans}) == 2


# -- profile -------------------------------------------------------------------------------------
def _span(name, span_id, parent, start_s, end_s, pid=100, attributes=None, role="worker"):
    return {
        "name": name,
        "trace_id": "ab" * 16,
        "span_id": span_id,
        "parent_span_id": parent,
        "start_ns": int(start_s * 1e9),
        "end_ns": int(end_s * 1e9),
        "attributes": attributes or {},
        "status": "UNSET",
        "events": [],
        "pid": pid,
        "host": "node-1",
        "resource": {"process.pid": pid, "host.name": "node-1", "raypipe.process.role": role},
    }


def fake_run() -> list[dict]:
    def stage(name, sid, start, end, status, rows=0, read=0, written=0):
        return _span(
            f"stage.{name}",
            sid,
            "r",
            start,
            end,
            pid=1,
            role="driver",
            attributes={
                "stage.name": name,
                "stage.status": status,
                "rows.in": rows,
                "rows.out": rows,
                "rows.quarantined": 0,
                "bytes.read": read,
                "bytes.written": written,
            },
        )

    return [
        _span("run", "r", None, 0.0, 10.0, pid=1, role="driver"),
        stage("ingest", "s1", 0.0, 0.002, "cached", 1000),
        stage("validate", "s2", 0.002, 0.004, "cached", 1000),
        stage("featurize", "s3", 0.01, 6.01, "ran", 1000, read=4_000_000, written=2_000_000),
        _span("featurize.chunk", "c1", "s3", 0.1, 3.1, pid=200),
        _span("featurize.chunk", "c2", "s3", 0.1, 5.1, pid=201),
        stage("train", "s4", 6.02, 9.0, "ran", 900),
        _span("train.epoch", "e1", "s4", 6.1, 8.9, pid=300),
        stage("evaluate", "s5", 9.0, 9.9, "ran", 100),
    ]


def test_profile_table_shares_rates_and_slowest_spans():
    profile = build_profile(fake_run(), top=2)
    assert profile.run_wall_s == pytest.approx(10.0)
    stages = {s.name: s for s in profile.stages}
    assert list(stages) == ["ingest", "validate", "featurize", "train", "evaluate"]
    assert stages["ingest"].cached and stages["ingest"].rows_per_s is None
    assert stages["featurize"].share == pytest.approx(0.6)
    assert stages["featurize"].rows_per_s == pytest.approx(1000 / 6)
    assert stages["featurize"].bytes_per_s == pytest.approx(1_000_000)
    assert [(t.name, t.stage) for t in profile.slowest] == [
        ("featurize.chunk", "featurize"),
        ("featurize.chunk", "featurize"),
    ]
    table = render_table(profile)
    for name in stages:
        assert name in table
    assert "cached" in table and "60.0%" in table and "4.0MB" in table


def test_profile_timeline_png_and_cli_helper(tmp_path):
    png = tmp_path / "timeline.png"
    render_timeline_png(fake_run(), str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000

    (tmp_path / "run" / "spans").mkdir(parents=True)
    with open(tmp_path / "run" / "spans" / "driver.jsonl", "w") as fh:
        fh.writelines(json.dumps(s) + "\n" for s in fake_run())
    text = profile_run(str(tmp_path / "run"), png_path=str(tmp_path / "run" / "timeline.png"))
    assert "featurize" in text and Path(tmp_path / "run" / "timeline.png").exists()
    with pytest.raises(LookupError, match="no spans"):
        profile_run(str(tmp_path / "empty"))
