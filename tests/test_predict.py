"""`pipeline predict` through the CLI on the shared smoke run.

No train/serve skew: rows of the source, scored as input files with history from the source, get
featurize's stored feature values bit for bit and the test period evaluate's predictions, even when today's
config has other features (the model's own spec is used). New events after dataset.end get a finite
prediction each, with history from the configured source, and `--as-of` keeps later history out.
Bad input is quarantined or refused in one `error:` line, and no file predict did not write is
ever overwritten, nor left half-written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import load_config
from pipeline.datasets import write_partitioned
from pipeline.datasets.rideshare import generate_rideshare
from pipeline.engine import exchange
from pipeline.engine.artifacts import ArtifactStore
from pipeline.predict.output import OutputFile
from pipeline.quality import duplicates
from pipeline.quality.rules import RULES
from pipeline.registry.store import move_alias, resolve
from tests.conftest import REPO, SMOKE, run_cli

MODEL = "trip-duration"
CONFIG = load_config(SMOKE)
ROW_KEY, EVENT_TIME = CONFIG.dataset.row_key, CONFIG.dataset.event_time
NEW_DAY = CONFIG.dataset.end


def predict(overrides: list[str], *args: str) -> tuple[int, str]:
    code, output, _ = run_cli("predict", "-c", str(SMOKE), *overrides, *args)
    return code, output


def bits(column: pa.ChunkedArray) -> tuple[bytes, bytes]:
    """A column's null mask and the exact bytes of its values."""
    values = pc.fill_null(column, pa.scalar(0, column.type)).to_numpy(zero_copy_only=False)
    return column.is_null().to_numpy(zero_copy_only=False).tobytes(), values.tobytes()


def new_day_events(tmp_path, rows: int, seed: int) -> tuple[pa.Table, str]:
    """A day after dataset.end from the smoke data's generator, hive-partitioned like the source."""
    events = generate_rideshare(rows, NEW_DAY, NEW_DAY + timedelta(days=1), seed=seed)
    folder = str(tmp_path / "new-day")
    write_partitioned(events, folder)
    return events, folder


def as_files(rows: pa.Table, folder, duplicated: pa.Table):
    """`rows` as a folder of files, one per day of event time, then `duplicated` (rows whose keys
    came earlier) as the last file: an input of several blocks, read in file order."""
    folder.mkdir()
    days = pc.strftime(rows[EVENT_TIME], format="%Y-%m-%d")
    for index, day in enumerate(sorted(set(days.to_pylist()))):
        pq.write_table(rows.filter(pc.equal(days, day)), folder / f"part-{index:02d}.parquet")
    pq.write_table(duplicated, folder / "part-99.parquet")


@pytest.mark.parametrize("scored_in", ["driver", "ray tasks"])
def test_rows_scored_from_files_reproduce_featurize_and_evaluate(smoke_copy, tmp_path, scored_in,
                                                                 monkeypatch):
    """Six days before the test period and the test period itself: two of featurize's 7-day
    chunks, each handed its rows and halo by the exchange, with keys hashed into many buckets
    and short runs of blocks (as a large input's would be)."""
    monkeypatch.setattr(duplicates, "KEYS_PER_BUCKET", 1000)
    monkeypatch.setattr(exchange, "PIECE_ROWS", 500)
    root, overrides = smoke_copy
    if scored_in == "ray tasks":
        overrides = [*overrides, "--set", "predict.score_in_driver_max_rows=0"]
    store = ArtifactStore(str(root))
    move_alias(store, MODEL, "champion", "v1", reason="test: the smoke run's model")
    entry = resolve(store, MODEL, "champion")
    lineage = entry["lineage"]
    train = store.read_json(f"{lineage['train']['uri']}/manifest.json")["details"]
    test_start = datetime.fromisoformat(train["test_period_start"])
    rows = pads.dataset(f"{lineage['validate']['uri']}/clean", format="parquet",
                        partitioning="hive").to_table(
        filter=pc.field(EVENT_TIME) >= test_start - timedelta(days=6)).drop_columns(["day"])
    repeated = rows.take(np.arange(0, rows.num_rows, 97))  # later copies: quarantined
    as_files(rows, tmp_path / "input", repeated.set_column(
        repeated.schema.get_field_index("distance_km"), "distance_km",
        pc.add(repeated["distance_km"], 1.0)))
    output = tmp_path / "scored.parquet"

    code, printed = predict([*overrides, "--set", "features.windows=[]"],  # today's config
                            "--model", f"{MODEL}@champion", "--input", str(tmp_path / "input"),
                            "--output", str(output))

    assert code == 0, printed
    assert f"predicted {rows.num_rows:,} rows with {MODEL} v1" in printed
    assert f"{repeated.num_rows:,} quarantined" in printed
    quarantined = pq.read_table(tmp_path / "scored.quarantine.parquet")
    assert set(quarantined["_reason"].to_pylist()) == {"duplicate_row_key"}
    assert sorted(quarantined[ROW_KEY].to_pylist()) == sorted(repeated[ROW_KEY].to_pylist())
    scored = pq.read_table(output).sort_by(ROW_KEY)
    stored = pads.dataset(f"{lineage['featurize']['uri']}/data", format="parquet").to_table(
        filter=pc.field(ROW_KEY).isin(rows[ROW_KEY])).sort_by(ROW_KEY)
    featurize = store.read_json(f"{lineage['featurize']['uri']}/manifest.json")["details"]
    features = [*featurize["feature_columns"], *featurize["categorical_columns"]]
    assert len(features) == 1 + len(CONFIG.features.windows) + 2
    assert scored[ROW_KEY].equals(stored[ROW_KEY])
    for name in [EVENT_TIME, *features]:
        assert bits(scored[name]) == bits(stored[name]), name
    assert set(scored["model_version"].to_pylist()) == {"v1"}
    evaluated = pq.read_table(
        f"{root}/stages/evaluate/{entry['evaluate_cache_key']}/predictions.parquet"
    ).sort_by(ROW_KEY)
    test_period = scored.filter(pc.field(ROW_KEY).isin(evaluated[ROW_KEY]))
    assert test_period[ROW_KEY].equals(evaluated[ROW_KEY])
    np.testing.assert_allclose(test_period["prediction"].to_numpy(),
                               evaluated["prediction"].to_numpy(), rtol=1e-6, atol=1e-9)


def test_new_events_get_finite_predictions_with_history_from_the_source(smoke_run,
                                                                        smoke_source, tmp_path):
    events, folder = new_day_events(tmp_path, rows=2000, seed=11)
    output = tmp_path / "new-day.parquet"
    overrides = [*smoke_run.overrides, "--set", f"predict.history_source={smoke_source}"]
    args = ["--model", f"{MODEL}@v1", "--input", folder, "--output", str(output)]

    code, printed = predict(overrides, *args)

    assert code == 0, printed
    scored = pq.read_table(output)
    quarantined = pq.read_table(tmp_path / "new-day.quarantine.parquet")
    assert scored.num_rows + quarantined.num_rows == events.num_rows
    assert f"predicted {scored.num_rows:,} rows" in printed
    assert f"{quarantined.num_rows:,} quarantined" in printed
    assert np.isfinite(scored["prediction"].to_numpy()).all()
    reasons = set(quarantined["_reason"].to_pylist())
    assert {"null_required", "duplicate_row_key", "event_time_outside_range"} <= reasons <= set(RULES)
    assert quarantined["_detail"].null_count == 0
    zone_counts = scored["pickup_zone__rows__count__15m"]
    assert pc.sum(zone_counts).as_py() > 0  # the input is history for its own later rows

    # Known at midnight: only the source's history; the day's own rows feed no window.
    code, printed = predict(overrides, *args, "--as-of", NEW_DAY.isoformat())

    assert code == 0, printed
    as_of_midnight = pq.read_table(output)
    assert as_of_midnight.num_rows == scored.num_rows
    assert np.isfinite(as_of_midnight["prediction"].to_numpy()).all()
    later = as_of_midnight.filter(pc.field(EVENT_TIME) >= NEW_DAY + timedelta(minutes=15))
    assert pc.max(later["pickup_zone__rows__count__15m"]).as_py() == 0
    drivers_pace = as_of_midnight["driver_id__pace_min_per_km__mean__7d"]
    assert drivers_pace.null_count < as_of_midnight.num_rows / 2  # the week before, from the source


def test_an_input_row_stands_for_its_event_wherever_the_history_has_it(smoke_run, smoke_source,
                                                                      tmp_path):
    """A trip of Jan 3 comes back in the input moved to Jan 12, a week and a chunk later, beside
    the trips of Jan 4 and 5. Its history copy is stale: the Jan 4-5 trips get the features they
    get from a history without it, though their chunk's task never sees the moved trip."""
    source = pads.dataset(str(smoke_source), format="parquet", partitioning="hive").to_table()
    day = pc.strftime(source[EVENT_TIME], format="%Y-%m-%d")
    nearby = source.filter(pc.is_in(day, value_set=pa.array(["2026-01-04", "2026-01-05"])))
    validate = next(s for s in smoke_run.summary["stages"] if s["name"] == "validate")
    validated = pads.dataset(f"{validate['artifact']}/clean", format="parquet",
                             partitioning="hive").to_table(filter=pc.field("day") == "2026-01-03")
    stale = validated.slice(0, 1).select(source.column_names)  # the moved trip's old copy
    moved = stale
    for name in (EVENT_TIME, CONFIG.dataset.label_available_at):
        index = moved.schema.get_field_index(name)
        later = pc.add(moved[name], pa.scalar(timedelta(days=9)))
        moved = moved.set_column(index, name, later)
    driver = stale["driver_id"][0].as_py()
    assert pc.sum(pc.equal(nearby["driver_id"], driver)).as_py() > 0  # its windows counted it
    pq.write_table(pa.concat_tables([nearby, moved]).drop_columns(["day"]),
                   tmp_path / "input.parquet")
    without = str(tmp_path / "history-without-it")
    write_partitioned(source.filter(pc.invert(pc.equal(source[ROW_KEY], stale[ROW_KEY][0]))),
                      without)

    def scored(history: str) -> pa.Table:
        output = tmp_path / f"{os.path.basename(history)}.parquet"
        code, printed = predict([*smoke_run.overrides, "--set",
                                 f"predict.history_source={history}"], "--model", f"{MODEL}@v1",
                                "--input", str(tmp_path / "input.parquet"), "--output",
                                str(output))
        assert code == 0, printed
        rows = pq.read_table(output)
        return rows.filter(pc.is_in(rows[ROW_KEY], value_set=nearby[ROW_KEY])).sort_by(ROW_KEY)

    with_stale_copy, without_it = scored(str(smoke_source)), scored(without)

    assert with_stale_copy.num_rows > 0
    for name in with_stale_copy.column_names:
        assert with_stale_copy[name].equals(without_it[name]), name


def test_a_day_column_of_the_input_files_bounds_their_event_times(smoke_run, tmp_path):
    """A day's events in one file that holds the `day` column itself, not in a `day=` folder:
    rows dated outside that day are quarantined all the same."""
    events, _ = new_day_events(tmp_path, rows=600, seed=3)
    pq.write_table(events, tmp_path / "with-day-column.parquet")
    assert "day" in events.column_names

    code, printed = predict(smoke_run.overrides, "--model", f"{MODEL}@v1", "--input",
                            str(tmp_path / "with-day-column.parquet"), "--output",
                            str(tmp_path / "scored.parquet"))

    assert code == 0, printed
    quarantined = pq.read_table(tmp_path / "scored.quarantine.parquet")
    outside = quarantined.filter(pc.equal(quarantined["_reason"], "event_time_outside_range"))
    assert outside.num_rows > 0
    times = outside[EVENT_TIME]
    assert pc.all(pc.or_(pc.less(times, pa.scalar(NEW_DAY, times.type)),
                         pc.greater_equal(times, pa.scalar(NEW_DAY + timedelta(days=1),
                                                           times.type)))).as_py()


def test_bad_input_is_one_error_line_and_no_output_is_overwritten(smoke_run, tmp_path, capsys):
    events, folder = new_day_events(tmp_path, rows=300, seed=5)
    bad = tmp_path / "no-distance.parquet"
    pq.write_table(events.drop_columns(["distance_km"]), bad)
    output = tmp_path / "scored.parquet"
    before = set(os.listdir(tmp_path))

    code, _ = predict(smoke_run.overrides, "--model", f"{MODEL}@v1", "--input", str(bad),
                      "--output", str(output))

    assert code == 1
    assert error_lines(capsys) == [f"error: {bad}: column(s) distance_km missing (model "
                                   f"{MODEL} v1 reads them)"]
    assert set(os.listdir(tmp_path)) == before  # no output, no quarantine, no temporary file

    output.write_bytes(b"someone else's results")
    code, _ = predict(smoke_run.overrides, "--model", f"{MODEL}@v1", "--input", folder,
                      "--output", str(output))

    assert code == 1
    assert error_lines(capsys) == [f"error: {output} already exists and was not written by "
                                   "`pipeline predict`: refusing to overwrite it (choose another "
                                   "--output)"]
    assert output.read_bytes() == b"someone else's results"
    assert set(os.listdir(tmp_path)) == before | {output.name}

    code, _ = predict(smoke_run.overrides, "--model", f"{MODEL}@v9", "--input", folder,
                      "--output", str(tmp_path / "other.parquet"))

    assert code == 1
    assert error_lines(capsys)[0].startswith(f"error: model {MODEL} has no version v9")


def test_predict_imports_torch_only_where_a_model_runs():
    """The Ray workers that run predict's read, check, key and feature tasks import the modules
    those tasks live in, and torch costs a process 2.5 to 3.7 s: none of them imports it (the
    driver imports it in the background while Ray starts; a chunk task that scores, itself)."""
    check = "import sys, pipeline.predict.batch; print(sorted({'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_a_write_that_fails_leaves_no_file_behind(tmp_path):
    target = OutputFile(str(tmp_path / "scored.parquet"), {})
    with pytest.raises(RuntimeError), target.writer({"model": MODEL}) as batches:
        batches.write(pa.table({"x": [1, 2, 3]}))
        raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == []

    with target.writer({"model": MODEL}) as batches:
        batches.write(pa.table({"x": [1, 2, 3]}))
    assert pq.read_table(tmp_path / "scored.parquet")["x"].to_pylist() == [1, 2, 3]
    with target.writer({"model": MODEL}) as batches:  # its own file: replaced
        batches.write(pa.table({"x": [4]}))
    assert pq.read_table(tmp_path / "scored.parquet")["x"].to_pylist() == [4]
    assert os.listdir(tmp_path) == ["scored.parquet"]


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
