"""The config's sections as typed models: every key, its type, its default and what it means
(the descriptions are the config reference, docs/config.md). Field rules live here; rules that
relate several fields are `pipeline.core.config.rules`."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.core.config.types import NonNegativeDuration, PositiveDuration, SafeName, Timestamp
from pipeline.core.durations import format_duration, parse_duration
from pipeline.core.exporters import Exporter


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
    start: Timestamp | None = Field(None, description="the range [start, end) to snapshot and "
                                    "train on; ISO 8601, UTC unless it says otherwise. Give it "
                                    "or dataset.lookback")
    end: Timestamp = Field(description="the end of the range, excluded; `pipeline run --as-of "
                           "TIME` sets it, and every relative date counts back from it")
    lookback: PositiveDuration | None = Field(None, exclude=True, description=(
        "instead of dataset.start: the range is the lookback before dataset.end (e.g. 60d). "
        "Only the dates it resolves to are recorded and keyed"))
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


BUILT_IN_AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "last", "time_since_last")


class WindowFeature(_Strict):
    entity: list[str] = Field(description="the column (or columns) whose value groups the "
                              "window: a row's window holds its own entity's earlier rows")
    column: str | None = Field(None, description="source column; omit to count rows")
    agg: str = Field(description="what the window computes: one of " + ", ".join(
        BUILT_IN_AGGREGATIONS) + " (with no value in the window, count gives 0 and the others "
        "null; std: below two values), or <module>:<function>, a @window_aggregation of "
        "features.module")
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

    @field_validator("agg")
    @classmethod
    def _known_aggregation(cls, value: str) -> str:
        module, _, function = value.partition(":")
        if value in BUILT_IN_AGGREGATIONS or (module and function.isidentifier()):
            return value
        raise ValueError(f"{value!r} is neither one of {', '.join(BUILT_IN_AGGREGATIONS)} nor "
                         "<module>:<function>")

    @property
    def feature_name(self) -> str:
        if self.name:
            return self.name
        what = self.column or "rows"
        agg = self.agg.rpartition(":")[2]
        return f"{'_'.join(self.entity)}__{what}__{agg}__{format_duration(self.window)}"


class FeaturesConfig(_Strict):
    numeric: list[str] = Field([], description="event-time numeric columns fed to the model as is")
    categorical: list[str] = Field([], description="event-time columns embedded by the model")
    windows: list[WindowFeature] = Field([], description="point-in-time window features")
    module: str | None = Field(None, description="the team's own feature code: a Python file "
                               "(relative to the config) or an importable module name, whose "
                               "@row_feature and @window_aggregation functions the config names "
                               "(see docs/user-code.md)")
    row: list[str] = Field([], description="row features: names of @row_feature functions of "
                           "features.module, each a model input computed from the row's own "
                           "event-time columns")
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
    train_until: Timestamp | None = Field(None, description="training rows have their event and "
                                          "their label before this; give it or split.validation")
    validation_until: Timestamp | None = Field(None, description=(
        "validation rows have their event from train_until + embargo and their label before "
        "this; the test period starts at validation_until + embargo; give it or split.test"))
    test: PositiveDuration | None = Field(None, exclude=True, description=(
        "instead of split.validation_until: the test period is this long before dataset.end "
        "(e.g. 14d)"))
    validation: PositiveDuration | None = Field(None, exclude=True, description=(
        "instead of split.train_until: the validation period is this long before the test "
        "period (e.g. 10d)"))
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
    model: str | None = Field(None, description="the team's own network: <module>:<function>, a "
                              "@model_factory of features.module; null: the built-in MLP "
                              "(hidden, dropout)")
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
