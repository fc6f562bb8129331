"""Config validation: every error names the key and says what is wrong."""

from __future__ import annotations

import pytest
import yaml

from pipeline.config import ConfigError, load_config, parse_config
from tests.conftest import SMOKE


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


def test_misspelled_duration_is_named():
    data = _smoke()
    data["features"]["windows"][0]["window"] = "5 hourz"
    message = _error(data)
    assert "features.windows.0.window" in message and "'5 hourz' is not a duration" in message


def test_column_missing_from_schema_is_named():
    data = _smoke()
    data["features"]["windows"][1]["entity"] = "drvier_id"
    assert "features.windows.1: column 'drvier_id' is not in the schema" in _error(data)


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
    assert "features.numeric: column 'fare' is known only at label time" in _error(data)


def test_splits_must_be_ordered():
    data = _smoke()
    data["split"]["validation_until"] = "2026-01-05"
    assert "train_until < validation_until" in _error(data)


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
