"""Bad inputs through the CLI: every failure is one clear line, and nothing bad is published.

Each case asserts the exit code, that stderr is one `error: ...` line (or, for an invalid config,
the documented `config error:` block with one `  key: message` line per problem) without a
traceback, that it names the file, column or key, and that the failing stage published nothing.
Most cases fail before Ray starts; the few that need it share the session's Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.quality import duplicates
from tests.conftest import SMOKE, run_cli

UTC_US = pa.timestamp("us", tz="UTC")
FIRST_DAY = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 14
ROWS_PER_DAY = 20


def trips(day: int, rows: int = ROWS_PER_DAY, first_id: int | None = None) -> pa.Table:
    """Clean trips of the smoke schema, all requested on `day` (0 = 2026-01-01)."""
    ids = np.arange(rows) + (day * 1_000 if first_id is None else first_id)
    requested = [FIRST_DAY + timedelta(days=day, minutes=30 * i + 1) for i in range(rows)]
    duration = np.full(rows, 12.0)
    return pa.table({
        "trip_id": pa.array(ids, pa.int64()),
        "driver_id": pa.array(ids % 7, pa.int64()),
        "rider_id": pa.array(ids % 11, pa.int64()),
        "pickup_zone": pa.array(ids % 5, pa.int32()),
        "dropoff_zone": pa.array(ids % 3, pa.int32()),
        "requested_at": pa.array(requested, UTC_US),
        "completed_at": pa.array([t + timedelta(minutes=12) for t in requested], UTC_US),
        "distance_km": pa.array(np.full(rows, 4.0)),
        "duration_min": pa.array(duration),
        "fare": pa.array(np.full(rows, 9.5)),
        "pace_min_per_km": pa.array(duration / 4.0),
    })


def write_source(root: Path, tables: dict[str, pa.Table | bytes]) -> Path:
    """A hive-partitioned source: {"day=YYYY-MM-DD/part-0.parquet": table or raw bytes}."""
    for relative, content in tables.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            pq.write_table(content, path)
    return root


def clean_days(days: range = range(DAYS)) -> dict[str, pa.Table]:
    return {f"day={(FIRST_DAY + timedelta(days=d)).date()}/part-0.parquet": trips(d) for d in days}


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


@dataclass
class Env:
    tmp: Path
    smoke_source: Path

    @property
    def artifacts(self) -> Path:
        return self.tmp / "artifacts"

    def config_args(self, *overrides: str) -> list[str]:
        args = ["-c", str(SMOKE), "--set", f"artifact_root={self.artifacts}"]
        for override in overrides:
            args += ["--set", override]
        return args

    def source_args(self, source: Path, *overrides: str) -> list[str]:
        """The smoke config on a hand-built source (never generated over)."""
        return self.config_args(f"dataset.source={source}", "dataset.generate=null", *overrides)


@dataclass
class Case:
    id: str
    make: Callable[[Env], tuple[list[str], list[str]]]  # -> (CLI args, words stderr must hold)
    code: int = 1
    stage: str | None = None  # the stage that must have published nothing (None: no stage at all)


def _config(override: str, key: str) -> Case:
    return Case(f"config-{key}", lambda env: (["run", *env.config_args(override)], [key]), code=2)


def _source(name: str, tables: dict[str, pa.Table | bytes], expect: list[str],
            *overrides: str) -> Case:
    def make(env: Env) -> tuple[list[str], list[str]]:
        source = write_source(env.tmp / "source", tables)
        words = [w.format(source=source) for w in expect]
        return ["stage", "ingest", *env.source_args(source, *overrides)], words
    return Case(name, make, stage="ingest")


def _drifted_timezone() -> dict[str, pa.Table]:
    tables = clean_days()
    naive = tables["day=2026-01-05/part-0.parquet"]
    tables["day=2026-01-05/part-0.parquet"] = with_column(
        naive, "requested_at", naive["requested_at"].cast(pa.timestamp("us")))
    return tables


def _drifted_type() -> dict[str, pa.Table]:
    tables = clean_days()
    table = tables["day=2026-01-03/part-0.parquet"]
    tables["day=2026-01-03/part-0.parquet"] = with_column(
        table, "distance_km", table["distance_km"].cast(pa.string()))
    return tables


def _truncated() -> dict[str, pa.Table | bytes]:
    tables: dict[str, pa.Table | bytes] = dict(clean_days())
    sink = pa.BufferOutputStream()
    pq.write_table(trips(2), sink)
    whole = sink.getvalue().to_pybytes()
    tables["day=2026-01-03/part-0.parquet"] = whole[: len(whole) // 2]
    return tables


def _user_folder(env: Env) -> tuple[list[str], list[str]]:
    folder = write_source(env.tmp / "mine", {"events.parquet": trips(0)})
    (folder / "notes.txt").write_text("mine")
    return ["run", *env.config_args(f"dataset.source={folder}")], [str(folder), "dataset.generate"]


def _unwritable_root(env: Env) -> tuple[list[str], list[str]]:
    blocker = env.tmp / "a-file"
    blocker.write_text("not a folder")
    args = ["run", "-c", str(SMOKE), "--set", f"dataset.source={env.smoke_source}",
            "--set", f"artifact_root={blocker}/artifacts"]
    return args, [str(blocker)]


def _list_config(env: Env) -> tuple[list[str], list[str]]:
    config = env.tmp / "list.yaml"
    config.write_text("- not\n- a mapping\n")
    return ["run", "-c", str(config), "--set", "train.epochs=2"], ["--set train.epochs=2"]


def _broken_yaml(env: Env) -> tuple[list[str], list[str]]:
    config = env.tmp / "broken.yaml"
    config.write_text("name: [unclosed\n")
    return ["run", "-c", str(config)], [str(config)]


CASES = [
    _config("evaluate.min_improvement=-0.1", "evaluate.min_improvement"),
    _config("split.embargo=-60", "split.embargo"),
    _config("validate.max_label_delay=0s", "validate.max_label_delay"),
    _config("features.chunk=0s", "features.chunk"),
    _config("train.hidden=[64, 0]", "train.hidden.1"),
    _config("cluster.num_cpus=0", "cluster.num_cpus"),
    _config("evaluate.model_name=../escape", "evaluate.model_name"),
    _config("name=a/b", "name"),
    _config("dataset.start=2026-02-30", "dataset.start"),
    _config("split.train_until=2026-13-01", "split.train_until"),
    _config("split.validation_until=2026-01-20", "split.validation_until"),
    _config("train.hidden=[64, 32", "train.hidden"),
    _config("train.epoch=3", "train.epoch"),
    _config("features.windows.0.entity=nobody", "features.windows.0.entity"),
    _config("features.windows.99.window=2h", "features.windows.99"),
    _config("telemetry.exporter=otlp", "telemetry.endpoint"),
    Case("config-list-top-level", _list_config, code=2),
    Case("config-broken-yaml", _broken_yaml, code=2),
    Case("config-missing-file",
         lambda env: (["run", "-c", str(env.tmp / "nope.yaml")], ["nope.yaml"]), code=2),
    Case("trace-non-integer-key",
         lambda env: (["trace", "abc", *env.config_args()], ["'abc'", "trip_id", "integer"])),
    Case("artifact-root-not-writable", _unwritable_root),
    Case("generate-over-a-users-folder", _user_folder),
    Case("stage-without-its-input",
         lambda env: (["stage", "validate", *env.config_args(
             f"dataset.source={env.smoke_source}")], ["validate", "ingest"]), stage="validate"),
    Case("profile-without-runs",
         lambda env: (["profile", *env.config_args()], [str(env.artifacts)])),
    Case("source-missing", lambda env: (
        ["stage", "ingest", *env.source_args(env.tmp / "gone")], [str(env.tmp / "gone")]),
        stage="ingest"),
    _source("source-without-parquet", {"notes.txt": b"no data"}, ["{source}", "no parquet"]),
    _source("wrong-partition-column", clean_days(range(2)),
            ["{source}", "dataset.partition", "date=", "day=..."], "dataset.partition=date"),
    _source("no-partition-in-range", {"day=2030-01-01/part-0.parquet": trips(0)},
            ["{source}", "day=2026-01-01..2026-01-14", "day=2030-01-01"]),
]

# These fail inside the ingest stage, after the runner has made sure Ray is up (before it reads).
RAY_CASES = [
    _source("truncated-parquet", _truncated(), ["day=2026-01-03/part-0.parquet", "magic bytes"]),
    _source("not-parquet", {**clean_days(), "day=2026-01-02/part-1.parquet": b"a,b\n1,2\n"},
            ["day=2026-01-02/part-1.parquet"]),
    _source("column-missing-in-one-file", {
        **clean_days(), "day=2026-01-04/part-0.parquet": trips(3).drop_columns(["fare"])},
        ["day=2026-01-04/part-0.parquet", "fare"]),
    _source("column-type-drift", _drifted_type(),
            ["day=2026-01-03/part-0.parquet", "distance_km", "string"]),
    _source("timezone-drift", _drifted_timezone(),
            ["day=2026-01-05/part-0.parquet", "requested_at", "UTC"]),
    _source("empty-source", {k: v.slice(0, 0) for k, v in clean_days().items()},
            ["{source}", "0 rows"]),
]


def _assert_clear_failure(err: str, code: int, words: list[str]) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    if code == 2:  # the documented config-error block: a heading, then `  key: message` lines
        assert lines[0].startswith("config error: ")
        assert all(line.startswith("  ") and ": " in line for line in lines[1:])
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in err, (word, err)


def _published(root: Path, stage: str | None) -> list[Path]:
    return sorted((root / "stages" / (stage or "")).rglob("manifest.json"))


def _fails_clearly(case: Case, env: Env, capsys) -> None:
    args, words = case.make(env)
    capsys.readouterr()
    code, _, _ = run_cli(*args)
    err = capsys.readouterr().err
    assert code == case.code, err
    _assert_clear_failure(err, case.code, words)
    assert _published(env.artifacts, case.stage) == []


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_in_one_clear_line(case: Case, tmp_path, smoke_source, capsys):
    _fails_clearly(case, Env(tmp_path, smoke_source), capsys)


@pytest.mark.parametrize("case", RAY_CASES, ids=[case.id for case in RAY_CASES])
def test_bad_source_file_fails_before_ray_reads(ray_session, case: Case, tmp_path, smoke_source,
                                                capsys):
    _fails_clearly(case, Env(tmp_path, smoke_source), capsys)


def test_debug_shows_the_traceback(tmp_path, smoke_source, capsys):
    env = Env(tmp_path, smoke_source)
    code, _, _ = run_cli("trace", "abc", *env.config_args(), "--debug")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and err.splitlines()[-1].startswith("error: ")


# -- bad rows: one source with each kind planted, counted by reason ----------------------------
BAD_ROWS = {"not_finite": 2, "null_required": 1, "duplicate_row_key": 1, "out_of_range": 1}


def _dirty_source(root: Path) -> Path:
    tables = clean_days()
    day = "day=2026-01-06/part-0.parquet"
    table = tables[day].to_pydict()
    table["distance_km"][0] = float("nan")
    table["fare"][1] = float("inf")  # fare has no max: only the finiteness rule can catch it
    table["trip_id"][2] = None
    table["trip_id"][3] = 1_000  # the id of a trip on day 1, with other values: a conflict
    table["distance_km"][4] = 500.0  # max is 200
    tables[day] = pa.table(table, schema=tables[day].schema)
    return write_source(root, tables)


def _validate_reasons(root: Path) -> dict[str, int]:
    (manifest,) = _published(root, "validate")
    return json.loads(manifest.read_text())["details"]["quarantine_reasons"]


def test_bad_rows_are_quarantined_with_their_reason(ray_session, tmp_path, smoke_source, capsys,
                                                    monkeypatch):
    """Also with validate's keys hashed into more buckets than files (as a large snapshot's
    are): the duplicate of a day-1 trip planted on day 6 is found among them."""
    monkeypatch.setattr(duplicates, "KEYS_PER_BUCKET", 10)  # 280 rows in 14 files: 28 buckets
    env = Env(tmp_path, smoke_source)
    args = env.source_args(_dirty_source(tmp_path / "dirty"))
    assert run_cli("stage", "ingest", *args)[0] == 0
    capsys.readouterr()
    strict = run_cli("stage", "validate", *args, "--set", "validate.max_quarantined_fraction=0.01")
    err = capsys.readouterr().err
    assert strict[0] == 1 and _published(env.artifacts, "validate") == []
    _assert_clear_failure(err, 1, ["validate", "validate.max_quarantined_fraction"])

    assert run_cli("stage", "validate", *args)[0] == 0
    assert _validate_reasons(env.artifacts) == BAD_ROWS


def test_a_damaged_manifest_is_named_with_the_way_forward(smoke_run, smoke_copy, capsys):
    """A published validate whose manifest.json was cut short (a disk, a hand): one line naming
    the file and what to do, and nothing recomputed on top of it."""
    root, overrides = smoke_copy
    validate = next(s for s in smoke_run.summary["stages"] if s["name"] == "validate")
    manifest = root / "stages" / "validate" / validate["cache_key"] / "manifest.json"
    manifest.write_text(manifest.read_text()[:97])
    code, _, _ = run_cli("run", "-c", str(SMOKE), *overrides)
    error = capsys.readouterr().err
    assert code == 1
    assert error.startswith(f"error: {manifest} is damaged (") and len(error.splitlines()) == 1
    assert "Move its folder away to have the stage recompute it" in error
    assert len(manifest.read_text()) == 97  # left as found


def test_verify_names_each_output_that_lost_a_file_or_its_manifest(smoke_run, smoke_copy):
    """`pipeline verify` on a root where a featurize file was deleted and a validate manifest
    cut short: each named, everything else ok, exit 1; and it only read."""
    root, overrides = smoke_copy
    stages = {s["name"]: s["cache_key"] for s in smoke_run.summary["stages"]}
    code, output, _ = run_cli("verify", "-c", str(SMOKE), *overrides)
    assert code == 0 and output.strip().endswith(" 0 damaged"), output
    featurized = root / "stages" / "featurize" / stages["featurize"]
    lost = sorted((featurized / "data").glob("*.parquet"))[0]
    lost.unlink()
    manifest = root / "stages" / "validate" / stages["validate"] / "manifest.json"
    manifest.write_text(manifest.read_text()[:97])
    code, output, _ = run_cli("verify", "-c", str(SMOKE), *overrides)
    assert code == 1, output
    damaged = [line for line in output.splitlines() if line.startswith("damaged: ")]
    assert len(damaged) == 2, output
    assert any(f"{featurized}: its files no longer match its manifest" in line for line in damaged)
    assert any(f"{manifest.parent}: manifest.json is damaged (" in line for line in damaged)
    assert output.strip().splitlines()[-1].endswith(
        " 2 damaged; move a damaged folder away to have the next run recompute it")
    assert not lost.exists() and len(manifest.read_text()) == 97
