"""Config validation: every error names the key and says what is wrong."""

from __future__ import annotations

import pytest
import yaml

from pipeline.core.config import ConfigError, load_config, parse_config
from tests.conftest import REPO, SMOKE


def _smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def test_smoke_and_local_configs_load():
    config = load_config(SMOKE)
    assert config.dataset.row_key == "trip_id"
    assert config.features.max_window.days == 7
    assert load_config(SMOKE.parent / "local.yaml").dataset.generate.rows == 1_000_000


def test_unknown_key_is_named():
    data = _smoke()
    data["train"]["epoch"] = 3
    assert "train.epoch: unknown key" in _error(data)


def test_bad_type_is_named():
    data = _smoke()
    data["train"]["batch_size"] = "large"
    assert "train.batch_size" in _error(data)


def test_cancelled_trips_are_generated_for_rideshare_only():
    data = _smoke()
    data["dataset"]["generate"].update(kind="orders", cancelled_share=0.04)
    assert "dataset.generate: " in _error(data) and "only the rideshare generator" in _error(data)
    data["dataset"]["generate"]["cancelled_share"] = 1.0
    assert "dataset.generate.cancelled_share" in _error(data)


def test_misspelled_duration_is_named():
    data = _smoke()
    data["features"]["windows"][0]["window"] = "5 hourz"
    message = _error(data)
    assert "features.windows.0.window" in message and "'5 hourz' is not a duration" in message


def test_column_missing_from_schema_is_named():
    data = _smoke()
    data["features"]["windows"][1]["entity"] = "drvier_id"
    assert "features.windows.1.entity: column 'drvier_id' is not in the schema" in _error(data)


def test_label_time_column_read_at_event_time_is_refused():
    data = _smoke()
    data["features"]["windows"].append(
        {"entity": "driver_id", "column": "fare", "agg": "mean", "window": "1d",
         "available_at": "event"})
    message = _error(data)
    assert "refused" in message and "'fare'" in message and "label leakage" in message


def test_label_time_column_as_model_input_is_refused():
    data = _smoke()
    data["features"]["numeric"].append("fare")
    assert "features.numeric.1: column 'fare' is known only at label time" in _error(data)


@pytest.mark.parametrize(("section", "feature", "key"), [
    ("windows", {"entity": ["pickup_zone", "fare"], "agg": "count", "window": "30d"},
     "features.windows.7.entity"),
    ("windows", {"entity": "duration_min", "agg": "count", "window": "1d",
                 "available_at": "label"}, "features.windows.7.entity"),
    ("windows", {"entity": "driver_id", "column": "fare", "agg": "mean", "window": "1d",
                 "available_at": "event"}, "features.windows.7.available_at"),
    ("numeric", "fare", "features.numeric.1"),
    ("categorical", "fare", "features.categorical.2"),
])
def test_a_label_time_column_read_at_event_time_is_refused_in_every_role(section, feature, key):
    """Entity, value, model input: one rule, whatever the window's available_at says."""
    data = _smoke()
    data["features"][section].append(feature)
    message = _error(data)
    leaked = "duration_min" if "duration_min" in str(feature) else "fare"
    assert f"  {key}: column {leaked!r} is known only at label time" in message
    assert "refused (label leakage)" in message


def test_a_label_time_column_read_once_the_label_is_in_is_allowed():
    data = _smoke()
    data["features"]["windows"].append(
        {"entity": "driver_id", "column": "fare", "agg": "mean", "window": "1d"})
    data["features"]["windows"].append(
        {"entity": "pickup_zone", "column": "fare", "agg": "max", "window": "1d",
         "available_at": "label"})
    assert len(parse_config(data).features.windows) == 9


def test_splits_must_be_ordered():
    data = _smoke()
    data["split"]["validation_until"] = "2026-01-05"
    assert "split.validation_until: 2026-01-05 00:00:00+00:00 is not between split.train_until" \
        in _error(data)


def test_overrides_apply_dotted_keys_and_list_indices():
    config = load_config(SMOKE, ["train.epochs=3", "features.windows.0.window=2h",
                                 "telemetry.exporter=none"])
    assert config.train.epochs == 3
    assert config.features.windows[0].window.total_seconds() == 7200
    assert config.telemetry.exporter == "none"


def test_override_errors_are_named():
    with pytest.raises(ConfigError, match="index '99' out of range"):
        load_config(SMOKE, ["features.windows.99.window=2h"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(SMOKE, ["train.epochs"])


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_numeric_aggregation_of_a_text_column_is_refused():
    data = _smoke()
    data["dataset"]["columns"]["zone_name"] = {"type": "string"}
    data["features"]["windows"].append(
        {"entity": "driver_id", "column": "zone_name", "agg": "mean", "window": "1d"})
    assert "mean needs a numeric column, 'zone_name' is string" in _error(data)


def test_feature_name_clashing_with_a_column_is_refused():
    data = _smoke()
    data["features"]["windows"][0]["name"] = "fare"
    assert "feature name 'fare' clashes with a column" in _error(data)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("evaluate.min_improvement", -0.1, "greater than or equal to 0"),
    ("split.embargo", -3600, "must not be negative, got -1h"),
    ("validate.max_label_delay", "0s", "must be longer than zero"),
    ("features.chunk", "0s", "must be longer than zero"),
    ("train.hidden", [64, 0], "greater than or equal to 1"),
    ("cluster.num_cpus", 0, "greater than or equal to 1"),
    ("evaluate.model_name", "", "is not a safe name"),
    ("evaluate.model_name", "../escape", "is not a safe name"),
    ("evaluate.model_name", "a/b", "is not a safe name"),
    ("evaluate.model_name", "a..b", "is not a safe name"),
    ("name", "my config", "is not a safe name"),
    ("dataset.start", "2026-02-30", "is not a valid date"),
    ("split.train_until", "2026-13-01", "is not a valid date"),
])
def test_values_that_load_but_make_no_sense_are_named(key: str, value, expected: str):
    data = _smoke()
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    message = _error(data)
    shown = f"{key}.1" if key == "train.hidden" else key
    assert f"  {shown}: " in message and expected in message


def test_every_problem_is_reported_together_under_its_own_key():
    data = _smoke()
    data["train"]["lr"] = -1
    data["telemetry"] = {"exporter": "otlp"}
    data["features"]["windows"][0]["entity"] = "drvier_id"
    data["features"]["categorical"].append("fare")
    data["split"]["train_until"] = "2025-12-01"
    data["dataset"]["label"] = "nope"
    lines = _error(data).splitlines()
    keys = [line.split(":")[0].strip() for line in lines[1:]]
    assert lines[0] == "config is not a valid config:"
    assert sorted(keys) == sorted([
        "train.lr", "telemetry.endpoint", "features.windows.0.entity", "features.categorical.2",
        "split.train_until", "dataset.label"])


def test_cross_field_checks_still_run_when_a_section_is_invalid():
    data = _smoke()
    data["dataset"]["partition"] = ["not", "a", "string"]  # the dataset section fails
    data["train"]["epochs"] = 0
    data["telemetry"] = {"exporter": "otlp"}
    message = _error(data)
    assert "  dataset.partition: " in message and "  train.epochs: " in message
    assert "  telemetry.endpoint: exporter otlp needs an endpoint" in message


def test_an_impossible_date_in_the_file_is_named(tmp_path):
    config = tmp_path / "bad-date.yaml"
    config.write_text(SMOKE.read_text().replace("end: 2026-01-15", "end: 2026-02-30"))
    with pytest.raises(ConfigError, match=r"dataset\.end: '2026-02-30' is not a valid date"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"split\.embargo: must not be negative"):
        load_config(SMOKE, ["split.embargo=-300"])
    with pytest.raises(ConfigError, match=r"split\.validation_until: '2026-13-01' is not a valid"):
        load_config(SMOKE, ["split.validation_until=2026-13-01"])


def test_set_errors_name_the_set(tmp_path):
    with pytest.raises(ConfigError, match=r"--set train\.hidden: '\[64, 32' is not valid YAML"):
        load_config(SMOKE, ["train.hidden=[64, 32"])
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"--set train\.epochs=3: .* not a mapping"):
        load_config(listed, ["train.epochs=3"])
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping"):
        load_config(listed)


def test_config_reference_is_generated_from_the_models():
    """docs/config.md is what `python -m pipeline.core.config_reference` prints: a key added or
    described anew in pipeline/core/config/models.py reaches the reference, or this fails."""
    from pipeline.core.config_reference import reference

    assert (REPO / "docs" / "config.md").read_text() == reference(), \
        "docs/config.md is not current: python -m pipeline.core.config_reference > docs/config.md"


RELATIVE = ["dataset.start=null", "dataset.lookback=14d", "split.train_until=null",
            "split.validation=3d", "split.validation_until=null", "split.test=3d"]


def test_relative_dates_resolve_to_the_absolute_ones_and_their_keys():
    """The smoke config's dates counted back from its end: the same dates, and the same
    parameters (so the same cache keys) for every stage."""
    from pipeline.stages.dag import STAGES

    absolute, relative = load_config(SMOKE), load_config(SMOKE, RELATIVE)
    for section in ("dataset", "split"):  # the relative keys themselves are not recorded
        assert getattr(relative, section).model_dump() == getattr(absolute, section).model_dump()
    for stage in STAGES:
        assert (stage.params.from_config(relative).key_payload()
                == stage.params.from_config(absolute).key_payload()), stage.name
    later = load_config(SMOKE, [*RELATIVE, "dataset.end=2026-01-20"])
    assert (later.dataset.start.isoformat(), later.split.train_until.isoformat(),
            later.split.validation_until.isoformat()) == (
        "2026-01-06T00:00:00+00:00", "2026-01-14T00:00:00+00:00", "2026-01-17T00:00:00+00:00")


@pytest.mark.parametrize("sets, key, message", [
    (["split.test=-3d"], "split.test", "is not a duration"),
    (["split.test=0s"], "split.test", "longer than zero"),
    (["dataset.lookback=14d"], "dataset.start", "not both"),
    (["dataset.start=null"], "dataset.start", "neither is set"),
    (["split.test=3d"], "split.validation_until", "not both"),
    (["split.validation=20d"], "split.validation", "leave no training period"),
])
def test_bad_relative_dates_are_named(sets, key, message):
    base = RELATIVE if sets[0].startswith(("split.test=-", "split.test=0", "split.validation=")) \
        else []
    with pytest.raises(ConfigError) as refused:
        load_config(SMOKE, [*base, *sets])
    lines = [line for line in str(refused.value).splitlines() if line.startswith(f"  {key}: ")]
    assert lines and message in lines[0], str(refused.value)
