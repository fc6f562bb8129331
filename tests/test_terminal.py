"""What a person sees: the pipeline's own lines (Ray's output in the run's ray.log), `pipeline runs`,
and `pipeline profile` with its Perfetto timeline."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from pipeline.commands.display import PlainDisplay
from pipeline.commands.timeline import chrome_trace
from tests.conftest import REPO, SMOKE, copy_of_smoke_run, run_cli

STAGES = ("ingest", "validate", "featurize", "train", "evaluate", "register")
# what Ray's own lines look like: log records, forwarded worker lines, C++ core logs
RAY_LINE = re.compile(r"\b(INFO|WARNING|ERROR)\b|\(\w+ pid=\d+\)|core_worker|Ray instance|Traceback")


@pytest.fixture(scope="module")
def evaluate_rerun(ray_address, smoke_run, tmp_path_factory):
    """A piped `pipeline run` (a separate process, joined to the session's Ray) on a copy of the
    smoke run, where a new promotion margin reruns evaluate (and register) alone, scoring in Ray tasks (in the
    driver it would not start Ray); then an all-cached run."""
    root, overrides = copy_of_smoke_run(smoke_run, tmp_path_factory.mktemp("terminal"))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "-c", str(SMOKE), *overrides,
         "--set", f"cluster.address={ray_address}", "--set", "evaluate.min_improvement=0.01",
         "--set", "evaluate.score_in_driver_max_rows=0", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    code, cached_output, cached = run_cli("run", "-c", str(SMOKE), *overrides, "--json")
    assert code == 0, cached_output
    return root, overrides, result, summary, cached


def test_a_piped_run_prints_plain_lines_and_no_ray_output(evaluate_rerun):
    root, _, result, summary, _ = evaluate_rerun
    assert [s["status"] for s in summary["stages"]] == ["cached"] * 4 + ["ran"] * 2
    assert result.stderr == ""
    lines = result.stdout.splitlines()[:-1]  # the last is the JSON summary
    assert not [line for line in lines if RAY_LINE.search(line)], lines
    for stage in STAGES:  # `running`, at most a progress line or two, the result line
        assert 1 <= sum(line.startswith(f"{stage} ") for line in lines) <= 4, lines
    assert "\x1b[" not in result.stdout  # no terminal escapes into a pipe
    assert lines[-1].startswith(f"run {summary['run_id']}: 6 stages, 2 ran, 4 cached")
    assert summary["ray_start_seconds"] > 0  # joining Ray, apart from evaluate's seconds
    assert f"(and {summary['ray_start_seconds']:.1f}s starting Ray)" in lines[-1]
    assert any(line.startswith(f"model trip-duration {summary['model_version']}: ")
               for line in lines[-6:-1])  # then the gate's reasons, indented
    ray_log = root / "runs" / summary["run_id"] / "ray.log"
    assert f"Ray's log: {ray_log}" in lines[-1]
    assert "Connecting to existing Ray cluster" in ray_log.read_text()


def test_validate_line_names_the_top_quarantine_reasons(smoke_run):
    (line,) = [line for line in smoke_run.output.splitlines() if line.startswith("validate   ran")]
    validate = next(s for s in smoke_run.summary["stages"] if s["name"] == "validate")
    manifest = json.loads((smoke_run.root / "stages" / "validate" / validate["cache_key"] /
                           "manifest.json").read_text())
    reasons = sorted(manifest["details"]["quarantine_reasons"].items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{reason} {count:,}" for reason, count in reasons[:3])
    assert f"{validate['rows_quarantined']:,} quarantined ({top}" in line


def test_runs_lists_every_run_with_its_status_stages_and_model(evaluate_rerun, smoke_run):
    _, overrides, _, rerun, cached = evaluate_rerun
    code, output, _ = run_cli("runs", "-c", str(SMOKE), *overrides)
    assert code == 0, output
    rows = {line.split()[0]: line for line in output.splitlines()[2:]}
    assert list(rows)[:2] == [cached["run_id"], rerun["run_id"]]  # newest first
    first = rows[smoke_run.summary["run_id"]]
    assert "rideshare-smoke" in first and " ok " in first
    assert "6 ran, 0 cached" in first and "v1 promoted" in first
    assert "2 ran, 4 cached" in rows[rerun["run_id"]]
    assert "0 ran, 6 cached" in rows[cached["run_id"]]
    code, output, _ = run_cli("runs", "-c", str(SMOKE), *overrides, "--limit", "1")
    assert len(output.splitlines()) == 3 and cached["run_id"] in output


def test_profile_picks_the_latest_run_that_computed_and_writes_a_perfetto_timeline(
        evaluate_rerun, ray_session):
    root, overrides, _, rerun, _ = evaluate_rerun
    code, output, _ = run_cli("profile", "-c", str(SMOKE), *overrides)
    assert code == 0, output
    assert output.splitlines()[0].startswith(f"run {rerun['run_id']} ")  # not the all-cached one
    trace = json.loads((root / "runs" / rerun["run_id"] / "timeline.json").read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert slices and all({"name", "ts", "dur", "pid", "tid"} <= set(e) for e in slices)
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in slices)
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    nodes = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    batches = [e for e in slices if e["args"]["span"] == "evaluate.score_file"]
    assert batches, "the evaluate work has slices"
    node_id = ray_session.get_runtime_context().get_node_id()
    for event in batches:
        assert nodes[event["pid"]].startswith(f"node {node_id[:8]}")
        assert names[(event["pid"], event["tid"])].startswith("worker ")
    labels = {e["name"] for e in slices}
    assert {"run", "evaluate", "ingest (cached)"} <= labels


def _span(name, span_id, parent, start, end, pid, node, role="worker", **attributes):
    return {"name": name, "trace_id": "t", "span_id": span_id, "parent_span_id": parent,
            "start_ns": int(start * 1e9), "end_ns": int(end * 1e9), "attributes": attributes,
            "status": "UNSET", "pid": pid, "host": "h", "node": node,
            "resource": {"raypipe.process.role": role}}


def test_perfetto_lanes_group_processes_by_node_and_label_child_spans():
    spans = [
        _span("run", "r", None, 0, 10, 1, None, role="driver", **{"run.id": "R1"}),
        _span("stage.featurize", "s", "r", 0, 9, 1, None, role="driver",
              **{"stage.name": "featurize", "stage.status": "ran"}),
        _span("featurize.chunk", "a", "s", 1, 4, 20, "aaaaaaaa11", **{"chunk.index": 0}),
        _span("featurize.chunk", "b", "s", 1, 5, 30, "bbbbbbbb22", **{"chunk.index": 1}),
    ]
    spans[2]["host"] = spans[3]["host"] = "other"  # two nodes on one host: told apart by id
    trace = chrome_trace(spans)
    assert trace["otherData"]["run_id"] == "R1"
    nodes = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e["name"] == "process_name"}
    chunks = {e["name"]: e for e in trace["traceEvents"] if e["ph"] == "X"}
    assert set(chunks) == {"run", "featurize", "chunk 0", "chunk 1"}
    assert nodes[chunks["chunk 0"]["pid"]] == "node aaaaaaaa (other)"
    assert nodes[chunks["chunk 1"]["pid"]] == "node bbbbbbbb (other)"
    assert nodes[chunks["run"]["pid"]] == "host h"  # a driver with no Ray node on its host
    assert chunks["chunk 1"]["dur"] == pytest.approx(4e6) and chunks["chunk 1"]["ts"] == 1e6


class _RecordingDisplay(PlainDisplay):
    """Plain lines, and every worker progress event that reached the driver."""

    def __init__(self) -> None:
        super().__init__(echo=lambda line: None, progress=True)
        self.events: list[dict] = []

    def progress(self, event: dict) -> None:
        self.events.append(event)
        super().progress(event)


@pytest.mark.parametrize("joined", [False, True], ids=["loopback", "actor"])
def test_worker_spans_reach_the_progress_display(smoke_copy, ray_address, joined):
    """Featurize's chunk tasks report to the driver as they finish: over loopback UDP with the
    session's local Ray, through an actor when joined by address (as to a cluster)."""
    import io

    from pipeline.core.config import load_config
    from pipeline.engine.runner import Runner
    from pipeline.stages.dag import STAGES as DAG

    _, overrides = smoke_copy
    address = [f"cluster.address={ray_address}"] if joined else []
    config = load_config(SMOKE, [*overrides[1::2], "features.windows.0.window=3d", *address])
    display = _RecordingDisplay()
    with display.showing(io.StringIO()):
        Runner(config, DAG, display=display).run(only="featurize")
    chunks = [e for e in display.events if e["name"] == "featurize.chunk"]
    assert len(chunks) == 2 and all(e["attributes"]["rows"] > 0 for e in chunks), display.events


def test_the_loopback_inbox_drops_datagrams_without_its_token():
    import socket

    from pipeline.engine.progress import LoopbackOutbox, progress_inbox

    inbox = progress_inbox(local=True)
    inbox.drain()
    port = inbox.outbox.port
    LoopbackOutbox(port, "not-the-token").push({"name": "featurize.chunk", "attributes": {}})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for payload in (b"not json", b"[]", b'{"token": null}'):
            sender.sendto(payload, ("127.0.0.1", port))
    inbox.outbox.push({"name": "validate.file", "attributes": {"rows": 3}})
    assert inbox.drain() == [{"name": "validate.file", "attributes": {"rows": 3}}]
