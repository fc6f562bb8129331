"""The pipeline's YAML config: typed, validated on load, with errors that name the key.

A new dataset needs a new config, not new code: the schema section declares every column's type and
*when it becomes known* (at the event, or only once the label is in), and everything downstream
(validation rules, point-in-time windows, leakage refusal, the model's inputs) is derived from it.

Validation reports every problem at once, each as `key: message`. Field rules live on the models;
rules that relate several fields (a column named in one place must be declared in another, the split
dates must be ordered) are `cross_check_problems`, which runs on every section that validated, so a
bad field elsewhere never hides them and each names the key to fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.core.durations import format_duration, parse_duration
from pipeline.core.exporters import Exporter
from pipeline.core.packed import PACKED

DEFAULT_CONFIG = "configs/local.yaml"

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def _longer_than_zero(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"must be longer than zero, got {format_duration(value)}")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError(f"must not be negative, got -{format_duration(-value)}")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_longer_than_zero)]
NonNegativeDuration = Annotated[Duration, AfterValidator(_not_negative)]

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _safe_name(value: str) -> str:
    """Names that become path segments (registry folders, run records) cannot escape them."""
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a safe name: use 1 to 128 letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit, and no '..' (it becomes part of "
                         "a path)")
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]


def _utc(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a valid date or time ({exc})") from None
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
    type: ColumnType = Field(description="the column's type; ingest refuses a file that holds "
                             "a kind which cannot be read as it")
    known_at: Literal["event", "label"] = Field(
        "event", description="when the value exists: at the event, or once the label is known "
        "(label-time columns are never read at event time)"
    )
    required: bool = Field(True, description="a null value quarantines the row")
    min: float | None = Field(None, description="smaller values quarantine the row")
    max: float | None = Field(None, description="larger values quarantine the row")


class GenerateSpec(_Strict):
    kind: Literal["rideshare", "orders"] = Field(description="which synthetic table")
    rows: int = Field(gt=0, description="rows to generate over [dataset.start, dataset.end)")
    seed: int = Field(0, description="the same seed and settings give the same table")
    cancelled_share: float = Field(0.0, ge=0, lt=1, description=(
        "rideshare: the share of trips cancelled (no label, no completion time)"))

    @model_validator(mode="after")
    def _cancelled_trips_are_rideshare(self) -> GenerateSpec:
        if self.cancelled_share and self.kind != "rideshare":
            raise ValueError(f"cancelled_share: only the rideshare generator cancels trips, "
                             f"not {self.kind}")
        return self


class DatasetConfig(_Strict):
    source: str = Field(description="fsspec URI of hive-partitioned parquet (partition column below)")
    storage_options: dict[str, Any] = Field({}, description="fsspec options for the source "
                                            "(credentials are never written anywhere)")
    generate: GenerateSpec | None = Field(None, description=(
        "generate this synthetic table when the source is missing or empty; a folder it did not "
        "create is never written over (the run fails instead)"))
    partition: str = Field("day", description="the hive partition column (the day a row was "
                           "ingested); ingest prunes partitions to the range")
    start: Timestamp = Field(description="the range [start, end) to snapshot and train on; "
                             "ISO 8601, UTC unless it says otherwise")
    end: Timestamp = Field(description="the end of the range, excluded")
    row_key: str = Field(description="the column that identifies a row (unique)")
    event_time: str = Field(description="when a prediction is made for the row")
    label: str = Field(description="what the model predicts")
    label_available_at: str = Field(description="when the label becomes known")
    time_unit: Literal["s", "ms", "us", "ns"] = Field(
        "us", description="unit of integer epoch time columns (timestamp columns ignore it)"
    )
    unlabeled: Literal["quarantine", "history"] = Field(
        "quarantine", description="a row whose label and label-available time are both null (an "
        "event that never got a label): quarantined, or kept as history (it feeds windows, never "
        "a split)"
    )
    columns: dict[str, ColumnSpec] = Field(description="the schema: every column the pipeline "
                                           "reads, with its validation rules")


Aggregation = Literal["count", "sum", "mean", "min", "max", "std", "last", "time_since_last"]


class WindowFeature(_Strict):
    entity: list[str] = Field(description="the column (or columns) whose value groups the "
                              "window: a row's window holds its own entity's earlier rows")
    column: str | None = Field(None, description="source column; omit to count rows")
    agg: Aggregation = Field(description="what the window computes; with no value in the "
                             "window, count gives 0 and the others null (std: below two values)")
    window: PositiveDuration = Field(description="W: the window holds values available in "
                                     "[t - W, t) for a row at event time t")
    available_at: Literal["event", "label"] | None = Field(
        None, description="when the source value becomes usable; defaults to the column's known_at"
    )
    name: str | None = Field(None, description="the feature's column name; default "
                             "<entity>__<column or rows>__<agg>__<window>")

    @field_validator("entity", mode="before")
    @classmethod
    def _entity_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def feature_name(self) -> str:
        if self.name:
            return self.name
        what = self.column or "rows"
        return f"{'_'.join(self.entity)}__{what}__{self.agg}__{format_duration(self.window)}"


class FeaturesConfig(_Strict):
    numeric: list[str] = Field([], description="event-time numeric columns fed to the model as is")
    categorical: list[str] = Field([], description="event-time columns embedded by the model")
    windows: list[WindowFeature] = Field([], description="point-in-time window features")
    chunk: PositiveDuration = Field(
        parse_duration("7d"), description="time span of one featurize task; each task also reads "
        "a lookback halo of the longest window, so chunks much shorter than it repeat work"
    )
    audit_sample: int = Field(1000, ge=0, description="rows the time-travel audit recomputes "
                              "in every featurize run (0: no audit)")

    @property
    def max_window(self) -> timedelta:
        return max((w.window for w in self.windows), default=timedelta(0))


class ValidateConfig(_Strict):
    max_quarantined_fraction: float = Field(0.05, ge=0, le=1, description=(
        "fail the stage when a larger share of the rows is quarantined"))
    max_label_delay: PositiveDuration = Field(
        parse_duration("1d"), description="labels later than this are implausible (and would "
        "make featurize's lookback unbounded)"
    )


class SplitConfig(_Strict):
    train_until: Timestamp = Field(description="training rows have their event and their label "
                                   "before this")
    validation_until: Timestamp = Field(description="validation rows have their event from "
                                        "train_until + embargo and their label before this; the "
                                        "test period starts at validation_until + embargo")
    embargo: NonNegativeDuration = Field(timedelta(0), description="a gap left out after each "
                                         "cutoff, so that no window straddles two splits")


class TrainConfig(_Strict):
    task: Literal["regression", "binary"] = Field("regression", description=(
        "regression (MSE) or binary (a 0/1 label, log-loss)"))
    num_workers: int = Field(1, ge=0, description=(
        "Ray Train workers; 0 runs the loop in the driver (Ray Train's local mode: no worker "
        "actors to start, no restart inside the run, no GPU placement by Ray; per-epoch "
        "checkpoints under a local artifact root still let a killed run resume on its rerun)"))
    use_gpu: bool = Field(False, description="one GPU per worker")
    resources_per_worker: dict[str, float] = Field({}, description=(
        "Ray resources of each worker, e.g. {CPU: 4}; its CPUs are its torch threads"))
    hidden: list[Annotated[int, Field(ge=1)]] = Field([64, 32], description=(
        "the MLP's hidden layer widths"))
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden layer")
    embedding_dim: int = Field(8, ge=1, description="width of each categorical embedding")
    lr: float = Field(3e-3, gt=0, description="AdamW's learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay")
    batch_size: int = Field(1024, ge=1, description="training rows per step (per worker)")
    epochs: int = Field(5, ge=1, description="at most this many passes over the training split")
    patience: int = Field(2, ge=1, description="stop after this many epochs without a better "
                          "validation loss (the best epoch's weights are kept)")
    seed: int = Field(0, description="seeds every draw: initial weights, shuffles, per epoch "
                      "and rank")
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the last "
                              "checkpoint after a worker dies (workers >= 1)")


def _scored_in_driver(what: str) -> Any:
    """The driver-or-tasks threshold of evaluate's and predict's scoring."""
    return Field(200_000, ge=0, description=(
        f"{what} of at most this many rows is scored in the driver process, which has torch "
        "loaded, instead of in Ray tasks whose workers each import it first; 0: always in Ray "
        "tasks. The predictions are the same either way, so changing it reruns nothing"))


class DriftConfig(_Strict):
    """Population stability index (PSI) per feature and label, test period vs the champion's
    training split (see pipeline.monitoring.drift)."""

    warn: float = Field(0.1, gt=0, description="PSI from which a feature is reported as drifted")
    fail: float | None = Field(0.25, gt=0, description="PSI from which drift blocks promotion; "
                               "null: never")

    @model_validator(mode="after")
    def _ordered(self) -> DriftConfig:
        if self.fail is not None and self.fail < self.warn:
            raise ValueError(f"fail ({self.fail}) must be at least warn ({self.warn})")
        return self


class EvaluateConfig(_Strict):
    model_name: SafeName = Field("model", description="the registry name of the model")
    min_improvement: float = Field(
        0.0, ge=0, description="relative improvement over the baseline needed to promote (0.05 = 5%)"
    )
    min_improvement_over_champion: float = Field(
        0.0, ge=-0.1, le=1, description="relative improvement over the current champion needed "
        "to promote (0.01 = 1% better); slightly negative accepts a slightly worse model on "
        "purpose (-0.02 = up to 2% worse), never below -0.1"
    )
    drift: DriftConfig = Field(DriftConfig(), description="drift thresholds")
    score_in_driver_max_rows: int = _scored_in_driver("a test period")


class PredictConfig(_Strict):
    history_source: str | None = Field(
        None, description="fsspec URI of the hive-partitioned event table `pipeline predict` "
        "reads history from (validated like dataset.source); default: dataset.source"
    )
    storage_options: dict[str, Any] | None = Field(
        None, description="fsspec options for predict's input, output and history source; "
        "default: dataset.storage_options"
    )
    score_in_driver_max_rows: int = _scored_in_driver("an input (its clean rows)")


class ClusterConfig(_Strict):
    address: str | None = Field(None, description="Ray address; None starts a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray; default: "
                                 "the machine's")
    runtime_env: dict[str, Any] = Field({}, description=(
        "the job's Ray runtime_env (env_vars values are masked wherever the pipeline writes "
        "the config; Ray itself logs them, so give nodes their own credentials)"))
    shared_filesystem: bool = Field(
        False, description="local artifact_root and dataset.source paths are one filesystem that "
        "every Ray node mounts (NFS, a shared volume); without it a multi-node cluster refuses them"
    )


class TelemetryConfig(_Strict):
    exporter: Exporter = Field("jsonl", description=(
        "jsonl: files in the run folder (what `pipeline profile` reads); otlp: OTLP/HTTP to "
        "endpoint, with a local copy; console; none; memory (tests)"))
    endpoint: str | None = Field(None, description="the OTLP/HTTP collector, e.g. "
                                 "http://127.0.0.1:4318")
    service_name: str = Field("raypipe", description="service.name of the spans and metrics")
    resource_attributes: dict[str, str] = Field({}, description="added to every span's resource")


class PipelineConfig(_Strict):
    """A whole config. Build it with `load_config` or `parse_config`, which also run
    `cross_check_problems`; validating this model alone checks each field, not how they relate."""

    name: SafeName = Field(description="the config's name, in runs and spans (1-128 letters, "
                           "digits, '.', '_', '-')")
    artifact_root: str = Field(description="fsspec URI under which stages, runs and the "
                               "registry live (.artifacts/local, s3://bucket/raypipe)")
    storage_options: dict[str, Any] = Field({}, description="fsspec options for the artifact "
                                            "root (credentials are never written anywhere)")
    dataset: DatasetConfig = Field(description="the event table and its schema")
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate",
                                      description="validate's limits")
    features: FeaturesConfig = Field(FeaturesConfig(), description="the model's inputs")
    split: SplitConfig = Field(description="the time split")
    train: TrainConfig = Field(TrainConfig(), description="the network and its training")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="the gate and the registry")
    predict: PredictConfig = Field(PredictConfig(), description="`pipeline predict`")
    cluster: ClusterConfig = Field(ClusterConfig(), description="where Ray runs")
    telemetry: TelemetryConfig = Field(TelemetryConfig(), description="OpenTelemetry export")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def available_at(self, feature: WindowFeature) -> str:
        """The column whose time says when this feature's source value became usable."""
        known_at = feature.available_at or (
            self.dataset.columns[feature.column].known_at if feature.column else "event"
        )
        return self.dataset.label_available_at if known_at == "label" else self.dataset.event_time

    def digest(self) -> str:
        payload = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Problem(NamedTuple):
    key: str
    message: str


def cross_check_problems(sections: dict[str, Any]) -> list[Problem]:
    """Rules across fields, on whichever validated sections are present (by top-level key)."""
    dataset, features = sections.get("dataset"), sections.get("features")
    split, telemetry = sections.get("split"), sections.get("telemetry")
    problems = []
    if dataset is not None:
        problems += _dataset_problems(dataset)
        if features is not None:
            problems += _input_problems(dataset.columns, features)
            problems += _window_problems(dataset.columns, features.windows)
            problems += _leakage_problems(dataset.columns, features)
        if split is not None:
            problems += _split_problems(dataset, split)
    if telemetry is not None and telemetry.exporter == "otlp" and not telemetry.endpoint:
        problems.append(Problem("telemetry.endpoint", "exporter otlp needs an endpoint, "
                                "e.g. http://127.0.0.1:4318"))
    return problems


def _dataset_problems(ds: DatasetConfig) -> list[Problem]:
    problems = []
    if ds.end <= ds.start:
        problems.append(Problem("dataset.end", f"{ds.end} must be after dataset.start ({ds.start})"))
    for role in ("row_key", "event_time", "label", "label_available_at"):
        column = getattr(ds, role)
        if column not in ds.columns:
            problems.append(Problem(f"dataset.{role}",
                                    f"column {column!r} is not in dataset.columns"))
        elif role in ("event_time", "label_available_at") \
                and ds.columns[column].type not in ("timestamp", "int64"):
            problems.append(Problem(f"dataset.{role}", f"time column {column!r} must be "
                                    f"timestamp or int64 epoch, not {ds.columns[column].type}"))
    for role in ("label", "label_available_at"):
        column = getattr(ds, role)
        if column in ds.columns and ds.columns[column].known_at != "label":
            problems.append(Problem(f"dataset.columns.{column}.known_at",
                                    f"the {role} column {column!r} must be known_at: label"))
    return problems


def _input_problems(columns: dict[str, ColumnSpec], features: FeaturesConfig) -> list[Problem]:
    """Columns fed to the model as is must exist (`_leakage_problems` says when they may be read)."""
    return [Problem(f"features.{section}.{i}", f"column {name!r} is not in the schema")
            for section in ("numeric", "categorical")
            for i, name in enumerate(getattr(features, section)) if name not in columns]


def _leakage_problems(columns: dict[str, ColumnSpec], features: FeaturesConfig) -> list[Problem]:
    """The one leakage rule: no column known only at label time may be read at event time, in
    whatever role (`_event_time_reads` lists them all)."""
    return [Problem(key, f"column {name!r} is known only at label time, but {role} reads it at "
                    "event time: refused (label leakage)")
            for key, name, role in _event_time_reads(features)
            if name in columns and columns[name].known_at == "label"]


def _event_time_reads(features: FeaturesConfig) -> list[tuple[str, str, str]]:
    """Every column the features read at a row's event time, as (key, column, role): the model's
    inputs, every window's entity (the row's own value picks its group) and a window value
    declared available at the event. A new role that reads a column at event time goes here."""
    reads = [(f"features.{section}.{i}", name, f"features.{section} (a model input)")
             for section in ("numeric", "categorical")
             for i, name in enumerate(getattr(features, section))]
    for i, feature in enumerate(features.windows):
        where = f"features.windows.{i}"
        reads += [(f"{where}.entity", name, f"the window's entity ({feature.feature_name})")
                  for name in feature.entity]
        if feature.column and feature.available_at == "event":
            reads.append((f"{where}.available_at", feature.column,
                          f"the window's value with available_at: event ({feature.feature_name})"))
    return reads


def _window_problems(columns: dict[str, ColumnSpec],
                     windows: list[WindowFeature]) -> list[Problem]:
    problems, seen = [], set()
    for i, feature in enumerate(windows):
        where = f"features.windows.{i}"
        missing = [Problem(f"{where}.{role}", f"column {name!r} is not in the schema")
                   for role, names in (("entity", feature.entity), ("column", [feature.column]))
                   for name in names if name and name not in columns]
        if missing:
            problems += missing
            continue
        spec = columns[feature.column] if feature.column else None
        if spec and feature.agg not in ("count", "time_since_last") \
                and spec.type in ("string", "timestamp", "bool"):
            problems.append(Problem(f"{where}.agg", f"{feature.agg} needs a numeric column, "
                                    f"{feature.column!r} is {spec.type}"))
        name = feature.feature_name
        if name in columns or name == PACKED:
            problems.append(Problem(f"{where}.name", f"feature name {name!r} clashes with a "
                                    "column; give it another `name`"))
        elif name in seen:
            problems.append(Problem(f"{where}.name", f"duplicate feature name {name!r}"))
        seen.add(name)
    return problems


def _split_problems(ds: DatasetConfig, split: SplitConfig) -> list[Problem]:
    order = "need dataset.start < train_until < validation_until < dataset.end"
    problems = []
    if not ds.start < split.train_until < ds.end:
        problems.append(Problem("split.train_until", f"{split.train_until} is not between "
                                f"dataset.start and dataset.end; {order}"))
    if not split.train_until < split.validation_until < ds.end:
        problems.append(Problem("split.validation_until", f"{split.validation_until} is not "
                                f"between split.train_until and dataset.end; {order}"))
    return problems


class _Loader(yaml.SafeLoader):
    """Safe YAML in which an impossible date (2026-02-30) stays text, so that validation can
    refuse it under its key instead of the YAML parser failing without one."""


def _timestamp_or_text(loader: _Loader, node: yaml.Node) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


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
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {dotted}: {raw!r} is not valid YAML ({_yaml_problem(exc)})") \
            from None
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
        data = _yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    data = {} if data is None else data
    if overrides and not isinstance(data, dict):
        raise ConfigError(f"--set {overrides[0]}: {path} holds a {type(data).__name__}, not a "
                          "mapping of sections, so there is no key to set")
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_config(data, source=str(path))


def parse_config(data: Any, source: str = "config") -> PipelineConfig:
    """Validate a raw config mapping; raise ConfigError listing every problem (fields and cross-
    field rules together), one `  key: message` line each."""
    if not isinstance(data, dict):
        _refuse(source, [Problem("(top level)", f"expected a mapping of sections, got "
                                 f"{type(data).__name__}")])
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        failed = {error["loc"][0] for error in exc.errors() if error["loc"]}
        problems += cross_check_problems(_valid_sections(data, failed))
        _refuse(source, problems)
    _refuse(source, cross_check_problems({name: getattr(config, name) for name in _CROSS_CHECKED}))
    return config


_CROSS_CHECKED = ("dataset", "features", "split", "telemetry")  # the sections cross checks read


def _valid_sections(data: dict[str, Any], failed: set) -> dict[str, Any]:
    """The cross-checked sections of `data` that validated (their defaults when absent)."""
    sections = {}
    for name in _CROSS_CHECKED:
        if name not in failed:
            field = PipelineConfig.model_fields[name]
            sections[name] = (field.annotation.model_validate(data[name]) if name in data
                              else field.get_default())
    return sections


def _problem(error: dict[str, Any]) -> Problem:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    return Problem(key, "unknown key" if error["type"] == "extra_forbidden" else message)


def _refuse(source: str, problems: list[Problem]) -> None:
    if problems:
        lines = "\n".join(f"  {key}: {message}" for key, message in problems)
        raise ConfigError(f"{source} is not a valid config:\n{lines}")
