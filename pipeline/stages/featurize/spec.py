"""What the featurize stage reads (`FeaturizeParams`), writes (`FeaturizeFiles`) and says of
its output (`FeaturizeFacts`, the manifest's details)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from pydantic import Field

from pipeline.core.config import Duration, PipelineConfig
from pipeline.core.schema import Roles
from pipeline.core.user_code import is_user_aggregation, load
from pipeline.engine.code_version import user_code_version
from pipeline.engine.stage import Facts, Files, Folder, Params
from pipeline.features.audit import Kernel, UserFeatures
from pipeline.features.partitions import DayPartitions
from pipeline.features.row_features import RowFeatureSpec, row_feature_specs
from pipeline.features.windows import WindowSpec, window_specs


class FeaturizeParams(Params):
    roles: Roles
    windows: tuple[WindowSpec, ...]
    """The window features, resolved: entity, source column, aggregation, window, available-at."""
    row_features: tuple[RowFeatureSpec, ...] = ()
    """The team's row features (`features.row`), with the inputs each declared."""
    user_code: str | None = None
    """The code version of `features.module` (`user_code_version`): an edit reruns the stage."""
    user_module: str | None = Field(None, exclude=True)
    """Where `features.module` is, for every process that runs it; its code, not its place, is
    in the key."""
    numeric: list[str]
    categorical: list[str]
    label_time_columns: list[str]
    """Columns of the schema known only once the label is (the audit blanks them before then)."""
    chunk: Duration
    audit_sample: int = Field(ge=0)
    max_label_delay: Duration

    @classmethod
    def from_config(cls, config: PipelineConfig) -> FeaturizeParams:
        dataset, features = config.dataset, config.features
        uses = features.row or any(is_user_aggregation(w.agg) for w in features.windows)
        module = features.module if uses else None  # a module of a network alone: not here
        code = load(module) if module else None
        return cls(roles=Roles.of(dataset), windows=tuple(window_specs(config)),
                   row_features=row_feature_specs(code, features.row),
                   user_code=user_code_version(module) if module else None,
                   user_module=module,
                   numeric=features.numeric, categorical=features.categorical,
                   label_time_columns=[name for name, spec in dataset.columns.items()
                                       if spec.known_at == "label"],
                   chunk=features.chunk, audit_sample=features.audit_sample,
                   max_label_delay=config.validate_.max_label_delay)

    def user_features(self) -> UserFeatures:
        """The team's features as the kernel and the audit run them (module loaded once per
        process)."""
        code = load(self.user_module) if self.user_module else None
        aggregations = {spec.agg: code.aggregation(spec.agg.partition(":")[2])
                        for spec in self.windows if is_user_aggregation(spec.agg)}
        return UserFeatures(self.row_features, code, aggregations)

    @property
    def feature_columns(self) -> list[str]:
        """The packed column's layout: numeric passthrough columns, row features, then window
        features."""
        return [*self.numeric, *(spec.name for spec in self.row_features),
                *(spec.name for spec in self.windows)]

    @property
    def source_columns(self) -> list[str]:
        """Columns the kernel reads from history rows (the row key orders them, and breaks ties
        for `last`)."""
        roles, specs = self.roles, self.windows
        return list(dict.fromkeys([roles.row_key, roles.event_time,
                                   *(c for s in specs for c in (*s.entity, s.available_at)),
                                   *(s.column for s in specs if s.column)]))

    @property
    def repeating_columns(self) -> list[str]:
        return list(dict.fromkeys([*(c for s in self.windows for c in s.entity),
                                   *self.categorical]))

    @property
    def passthrough_columns(self) -> list[str]:
        """The output's columns besides the features: roles, entities, the model's raw inputs."""
        roles = self.roles
        return list(dict.fromkeys([roles.row_key, roles.event_time, roles.label,
                                   roles.label_available_at,
                                   *(c for s in self.windows for c in s.entity),
                                   *self.numeric, *self.categorical]))

    @property
    def row_columns(self) -> list[str]:
        """Columns of the rows whose features are computed: what the output carries plus what
        the kernel reads."""
        return list(dict.fromkeys([*self.passthrough_columns, *self.source_columns,
                                   *(c for spec in self.row_features for c in spec.inputs)]))


class FeaturizeFiles(Files):
    data = Folder("data")
    """One parquet file per time chunk: passthrough columns, one column per feature, the packed
    tensor (`pipeline.core.packed`)."""


class FeaturizeFacts(Facts):
    feature_columns: list[str]
    """The packed tensor's layout, in order."""
    categorical_columns: list[str]
    packed_column: str
    null_values_skipped: dict[str, int]
    audit: dict[str, Any]
    chunks: int
    chunks_with_rows: int
    chunk: str
    halo: str
    longest_window: str | None = None
    """A row this long after the first event has complete windows (None: no window features)."""


@dataclass(frozen=True)
class Job:
    """What every chunk task needs, shipped once per task."""

    clean: DayPartitions
    output: str
    filesystem: pafs.FileSystem
    params: FeaturizeParams
    kernel: Kernel
    """The window kernel: the chunks compute with it and the audit's perturbation check
    recomputes with it, so a kernel that is wrong by design cannot hide behind a second one."""
