"""The whole pipeline against a real S3-protocol server (moto, on loopback): the source and the
artifact root on `s3://`, credentials only in storage_options.

What this guards: the fsspec filesystem is pickled into Ray tasks and Train workers (which do not
inherit the driver's environment), publishing works on a store with no directories and no rename,
a rerun finds every output by its cache key, and the credentials end up in no manifest or record.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shutil
from pathlib import Path

import pytest

from tests.conftest import SMOKE, run_cli

pytest.importorskip("moto.server", reason="moto[server] is a dev extra")
s3fs = pytest.importorskip("s3fs", reason="s3fs is a dev extra")

BUCKET = "raypipe-test"
KEY = "testing"
SECRET = "raypipe-test-secret-7c1d9e"  # distinctive, so any leak into an artifact is unmistakable
STAGES = ["ingest", "validate", "featurize", "train", "evaluate", "register"]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; an s3fs view of it that shares no cache
    with the pipeline's own filesystem objects."""
    import boto3
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")  # one log line per request otherwise
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        # only for boto3 here: the pipeline gets its credentials from storage_options alone
        env.setenv("AWS_ACCESS_KEY_ID", KEY)
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=BUCKET)
        fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint},
                               skip_instance_cache=True)
        try:
            yield endpoint, fs
        finally:
            server.stop()
            werkzeug.setLevel(level)


def _args(endpoint: str) -> list[str]:
    options = json.dumps({"client_kwargs": {"endpoint_url": endpoint}, "key": KEY,
                          "secret": SECRET})  # JSON is a YAML flow mapping, as --set parses it
    return ["-c", str(SMOKE),
            "--set", f"dataset.source=s3://{BUCKET}/source",
            "--set", f"artifact_root=s3://{BUCKET}/artifacts",
            "--set", f"dataset.storage_options={options}",
            "--set", f"storage_options={options}",
            "--json"]


_RUN_IDS: list[str] = []


def _pipeline(*args: str) -> dict:
    """Run the CLI in-process; its JSON summary (the run is remembered, for the clean-up)."""
    code, output, summary = run_cli(*args)
    if summary:
        _RUN_IDS.append(summary["run_id"])
    assert code == 0, output
    return summary


@pytest.fixture(scope="module")
def runs(ray_session, s3):
    """`pipeline run` twice on S3: the first computes every stage, the second should reuse them."""
    endpoint, _ = s3
    try:
        yield _pipeline("run", *_args(endpoint)), _pipeline("run", *_args(endpoint))
    finally:
        # a run on a remote root keeps its span files under ~/.cache (they are uploaded at the end)
        for run_id in _RUN_IDS:
            shutil.rmtree(Path.home() / ".cache" / "raypipe" / "runs" / run_id, ignore_errors=True)


def _path(uri: str) -> str:
    return uri.removeprefix("s3://")


def _manifest(fs, summary: dict, stage: str) -> dict:
    outcome = next(s for s in summary["stages"] if s["name"] == stage)
    return json.loads(fs.cat_file(posixpath.join(_path(outcome["artifact"]), "manifest.json")))


def _parquet_rows(fs, directory: str) -> int:
    import pyarrow.parquet as pq

    rows = 0
    for path in fs.find(directory):
        if path.endswith(".parquet"):
            with fs.open(path, "rb") as handle:
                rows += pq.ParquetFile(handle).metadata.num_rows
    return rows


def test_source_was_generated_onto_s3(runs, s3):
    _, fs = s3
    assert fs.exists(f"{BUCKET}/source/_SUCCESS")
    marker = json.loads(fs.cat_file(f"{BUCKET}/source/_SUCCESS"))
    assert marker["generated"]["rows"] == 20_000
    partitions = [p for p in fs.ls(f"{BUCKET}/source", detail=False) if "/day=" in p]
    assert partitions, "the source is hive-partitioned by day"


def test_every_stage_ran_and_published_on_s3(runs, s3):
    first, _ = runs
    _, fs = s3
    assert [s["name"] for s in first["stages"]] == STAGES
    assert all(s["status"] == "ran" for s in first["stages"]), first["stages"]
    for outcome in first["stages"]:
        assert outcome["artifact"].startswith(f"s3://{BUCKET}/artifacts/stages/{outcome['name']}/")
        manifest = _manifest(fs, first, outcome["name"])
        assert manifest["cache_key"] == outcome["cache_key"]
        assert manifest["trace_id"] == first["trace_id"]
    published = fs.find(f"{BUCKET}/artifacts/stages")
    assert not [p for p in published if "/_staging/" in p], "staging leftovers after success"
    assert fs.exists(_path(first["run_record"]))
    assert first["model_version"] and fs.exists(
        f"{BUCKET}/artifacts/registry/trip-duration/{first['model_version']}/entry.json")


def test_row_accounting_holds_on_s3(runs, s3):
    from pipeline.core.config import load_config
    from pipeline.stages.ingest import partition_days

    first, _ = runs
    _, fs = s3
    manifests = {stage: _manifest(fs, first, stage) for stage in STAGES}
    for stage, manifest in manifests.items():
        rows = manifest["rows"]
        assert rows["in"] == rows["out"] + rows["quarantined"], (stage, rows)

    config = load_config(SMOKE)
    in_range = {f"day={d}" for d in partition_days(config.dataset.start, config.dataset.end)}
    source_rows = sum(_parquet_rows(fs, p) for p in fs.ls(f"{BUCKET}/source", detail=False)
                      if posixpath.basename(p) in in_range)
    ingest, validate = manifests["ingest"]["rows"], manifests["validate"]["rows"]
    assert ingest["in"] == source_rows
    validate_dir = _path(next(s["artifact"] for s in first["stages"] if s["name"] == "validate"))
    ingest_dir = _path(next(s["artifact"] for s in first["stages"] if s["name"] == "ingest"))
    assert _parquet_rows(fs, ingest_dir) == ingest["out"] == validate["in"]
    assert _parquet_rows(fs, posixpath.join(validate_dir, "clean")) == validate["out"]
    assert _parquet_rows(fs, posixpath.join(validate_dir, "quarantine")) == validate["quarantined"]
    assert validate["quarantined"] > 0, "the smoke data carries planted dirt"
    assert manifests["featurize"]["rows"]["in"] == validate["out"]


def test_second_run_is_all_cached(runs):
    first, second = runs
    assert [s["status"] for s in second["stages"]] == ["cached"] * len(STAGES)
    assert [s["cache_key"] for s in second["stages"]] == [s["cache_key"] for s in first["stages"]]
    assert second["model_version"] == first["model_version"]


def test_one_stage_alone_reads_its_inputs_from_s3(runs, s3):
    endpoint, _ = s3
    first, _ = runs
    (outcome,) = _pipeline("stage", "featurize", *_args(endpoint))["stages"]
    featurize = next(s for s in first["stages"] if s["name"] == "featurize")
    assert (outcome["status"], outcome["cache_key"]) == ("cached", featurize["cache_key"])


def test_predict_reads_its_input_and_writes_its_output_on_s3(runs, s3):
    """`pipeline predict` with input, history and output on S3: its read tasks open the input
    with the configured storage options."""
    import pyarrow.parquet as pq

    endpoint, fs = s3
    first, _ = runs
    day = f"{BUCKET}/source/day=2026-01-14"
    code, output, _ = run_cli("predict", *_args(endpoint)[:-1], "--model",
                              f"trip-duration@{first['model_version']}", "--input", f"s3://{day}",
                              "--output", f"s3://{BUCKET}/predictions/2026-01-14.parquet")
    assert code == 0, output
    written = [pq.ParquetFile(fs.open(f"{BUCKET}/predictions/2026-01-14{suffix}.parquet"))
               .metadata.num_rows for suffix in ("", ".quarantine")]
    assert written[0] > 0 and f"predicted {written[0]:,} rows" in output
    assert sum(written) == _parquet_rows(fs, day)


def test_no_credential_reaches_s3(runs, s3):
    from pipeline.telemetry import REDACTED

    _, fs = s3
    texts = [p for p in fs.find(f"{BUCKET}/artifacts") if p.endswith((".json", ".jsonl"))]
    assert any(p.endswith("/manifest.json") for p in texts)
    assert any(p.endswith("/run.json") for p in texts)
    leaked = [p for p in texts if SECRET.encode() in fs.cat_file(p)]
    assert not leaked, f"the secret is in {leaked}"
    first, _ = runs
    record = json.loads(fs.cat_file(_path(first["run_record"])))
    assert record["config"]["storage_options"] == REDACTED
    assert record["config"]["dataset"]["storage_options"] == REDACTED
