"""The pipeline's YAML config: typed, validated on load, with errors that name the key.

A new dataset needs a new config, not new code: the schema section declares every column's type and
*when it becomes known* (at the event, or only once the label is in), and everything downstream
(validation rules, point-in-time windows, leakage refusal, the model's inputs) is derived from it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.durations import format_duration, parse_duration

DEFAULT_CONFIG = "configs/local.yaml"

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def _utc(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if hasattr(value, "year") and not isinstance(value, datetime):  # a bare YAML date
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


Timestamp = Annotated[
    datetime,
    BeforeValidator(_utc),
    PlainSerializer(lambda v: v.isoformat(), return_type=str),
]


class ConfigError(ValueError):
    """A config that cannot run; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ColumnType = Literal["int8", "int32", "int64", "float32", "float64", "string", "bool", "timestamp"]


class ColumnSpec(_Strict):
    type: ColumnType
    known_at: Literal["event", "label"] = Field(
        "event", description="when the value exists: at the event, or once the label is known"
    )
    required: bool = True
    min: float | None = None
    max: float | None = None


class GenerateSpec(_Strict):
    kind: Literal["rideshare", "orders"]
    rows: int = Field(gt=0)
    seed: int = 0


class DatasetConfig(_Strict):
    source: str = Field(description="fsspec URI of hive-partitioned parquet (partition column below)")
    storage_options: dict[str, Any] = {}
    generate: GenerateSpec | None = None
    partition: str = "day"
    start: Timestamp
    end: Timestamp
    row_key: str
    event_time: str
    label: str
    label_available_at: str
    time_unit: Literal["s", "ms", "us", "ns"] = Field(
        "us", description="unit of integer epoch time columns (timestamp columns ignore it)"
    )
    columns: dict[str, ColumnSpec]

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        for key in ("row_key", "event_time", "label", "label_available_at"):
            column = getattr(self, key)
            if column not in self.columns:
                raise ValueError(f"{key}: column {column!r} is not in dataset.columns")
        for key in ("event_time", "label_available_at"):
            if self.columns[getattr(self, key)].type not in ("timestamp", "int64"):
                raise ValueError(f"{key}: a time column must be timestamp or int64 epoch")
        if self.columns[self.label].known_at != "label":
            raise ValueError(f"label column {self.label!r} must be declared known_at: label")
        if self.columns[self.label_available_at].known_at != "label":
            raise ValueError(f"column {self.label_available_at!r} must be declared known_at: label")
        return self


Aggregation = Literal["count", "sum", "mean", "min", "max", "std", "last", "time_since_last"]


class WindowFeature(_Strict):
    entity: list[str]
    column: str | None = Field(None, description="source column; omit to count rows")
    agg: Aggregation
    window: Duration
    available_at: Literal["event", "label"] | None = Field(
        None, description="when the source value becomes usable; defaults to the column's known_at"
    )
    name: str | None = None

    @field_validator("entity", mode="before")
    @classmethod
    def _entity_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("window")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("a window must be longer than zero")
        return value

    @property
    def feature_name(self) -> str:
        if self.name:
            return self.name
        what = self.column or "rows"
        return f"{'_'.join(self.entity)}__{what}__{self.agg}__{format_duration(self.window)}"


class FeaturesConfig(_Strict):
    numeric: list[str] = Field([], description="event-time numeric columns fed to the model as is")
    categorical: list[str] = Field([], description="event-time columns embedded by the model")
    windows: list[WindowFeature] = []
    chunk: Duration = Field(
        parse_duration("7d"), description="time span of one featurize task; each task also reads "
        "a lookback halo of the longest window, so chunks much shorter than it repeat work"
    )
    audit_sample: int = Field(1000, ge=0)

    @property
    def max_window(self) -> timedelta:
        return max((w.window for w in self.windows), default=timedelta(0))


class ValidateConfig(_Strict):
    max_quarantined_fraction: float = Field(0.05, ge=0, le=1)
    max_label_delay: Duration = Field(
        parse_duration("1d"), description="labels later than this are implausible (and would "
        "make featurize's lookback unbounded)"
    )


class SplitConfig(_Strict):
    train_until: Timestamp
    validation_until: Timestamp
    embargo: Duration = timedelta(0)


class TrainConfig(_Strict):
    task: Literal["regression", "binary"] = "regression"
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = {}
    hidden: list[int] = [64, 32]
    dropout: float = Field(0.0, ge=0, lt=1)
    embedding_dim: int = Field(8, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(1024, ge=1)
    epochs: int = Field(5, ge=1)
    patience: int = Field(2, ge=1)
    seed: int = 0
    max_failures: int = Field(1, ge=0)


class EvaluateConfig(_Strict):
    model_name: str = "model"
    min_improvement: float = Field(
        0.0, description="relative improvement over the baseline needed to promote (0.05 = 5%)"
    )


class ClusterConfig(_Strict):
    address: str | None = Field(None, description="Ray address; None starts a local Ray")
    num_cpus: int | None = None
    runtime_env: dict[str, Any] = {}


class TelemetryConfig(_Strict):
    exporter: Literal["none", "console", "jsonl", "otlp", "memory"] = "jsonl"
    endpoint: str | None = None
    service_name: str = "raypipe"
    resource_attributes: dict[str, str] = {}

    @model_validator(mode="after")
    def _endpoint(self) -> TelemetryConfig:
        if self.exporter == "otlp" and not self.endpoint:
            raise ValueError("exporter otlp needs an endpoint, e.g. http://127.0.0.1:4318")
        return self


class PipelineConfig(_Strict):
    name: str
    artifact_root: str
    storage_options: dict[str, Any] = {}
    dataset: DatasetConfig
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    cluster: ClusterConfig = ClusterConfig()
    telemetry: TelemetryConfig = TelemetryConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        columns = self.dataset.columns
        for section, names in (("numeric", self.features.numeric),
                               ("categorical", self.features.categorical)):
            for name in names:
                if name not in columns:
                    raise ValueError(f"features.{section}: column {name!r} is not in the schema")
                if columns[name].known_at != "event":
                    raise ValueError(
                        f"features.{section}: column {name!r} is known only at label time; "
                        "feeding it to the model as is would leak the label"
                    )
        seen: set[str] = set()
        for i, feature in enumerate(self.features.windows):
            where = f"features.windows.{i}"
            for name in feature.entity + ([feature.column] if feature.column else []):
                if name not in columns:
                    raise ValueError(f"{where}: column {name!r} is not in the schema")
            known_at = columns[feature.column].known_at if feature.column else "event"
            if feature.available_at == "event" and known_at == "label":
                raise ValueError(
                    f"{where} ({feature.feature_name}): refused, it reads {feature.column!r} as if "
                    "known at event time, but the schema says it is known only once the label is "
                    "(label leakage)"
                )
            if feature.column and feature.agg not in ("count", "time_since_last") \
                    and columns[feature.column].type in ("string", "timestamp", "bool"):
                raise ValueError(f"{where}: {feature.agg} needs a numeric column, "
                                 f"{feature.column!r} is {columns[feature.column].type}")
            if feature.feature_name in columns or feature.feature_name == "features":
                raise ValueError(f"{where}: feature name {feature.feature_name!r} clashes with a "
                                 "column; give it another `name`")
            if feature.feature_name in seen:
                raise ValueError(f"{where}: duplicate feature name {feature.feature_name!r}")
            seen.add(feature.feature_name)
        split, ds = self.split, self.dataset
        if not ds.start < split.train_until < split.validation_until < ds.end:
            raise ValueError(
                "split: need dataset.start < train_until < validation_until < dataset.end"
            )
        return self

    def available_at(self, feature: WindowFeature) -> str:
        """The column whose time says when this feature's source value became usable."""
        known_at = feature.available_at or (
            self.dataset.columns[feature.column].known_at if feature.column else "event"
        )
        return self.dataset.label_available_at if known_at == "label" else self.dataset.event_time

    def section(self, *names: str) -> dict[str, Any]:
        """The JSON-able config sections a stage reads (part of its cache key)."""
        dumped = self.model_dump(mode="json", by_alias=True)
        return {name: dumped[name] for name in names}

    def digest(self) -> str:
        payload = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` (value parsed as YAML) to the raw config mapping."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            node = node[_index(node, key, where)]
        else:
            node = node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: {where} is a value, not a section")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(node, list):
        node[_index(node, keys[-1], dotted)] = value
    else:
        node[keys[-1]] = value


def _index(node: list, key: str, where: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"--set {where}: index {key!r} out of range (list of {len(node)})")
    return int(key)


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: list[str] = ()) -> PipelineConfig:
    """Read, override and validate a config; raise ConfigError naming each bad key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            lines.append(f"  {key}: {message}")
        raise ConfigError(f"{source} is not a valid config:\n" + "\n".join(lines)) from None
