"""What the featurize stage reads (`FeaturizeParams`), writes (`FeaturizeFiles`) and says of
its output (`FeaturizeFacts`, the manifest's details)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
from pydantic import Field

from pipeline.core.config import Duration, PipelineConfig
from pipeline.core.schema import Roles
from pipeline.engine.stage import Facts, Files, Folder, Params
from pipeline.features.audit import Kernel
from pipeline.features.partitions import DayPartitions
from pipeline.features.windows import WindowSpec, window_specs


class FeaturizeParams(Params):
    roles: Roles
    windows: tuple[WindowSpec, ...]
    """The window features, resolved: entity, source column, aggregation, window, available-at."""
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
        return cls(roles=Roles.of(dataset), windows=tuple(window_specs(config)),
                   numeric=features.numeric, categorical=features.categorical,
                   label_time_columns=[name for name, spec in dataset.columns.items()
                                       if spec.known_at == "label"],
                   chunk=features.chunk, audit_sample=features.audit_sample,
                   max_label_delay=config.validate_.max_label_delay)

    @property
    def feature_columns(self) -> list[str]:
        """The packed column's layout: numeric passthrough columns, then window features."""
        return [*self.numeric, *(spec.name for spec in self.windows)]

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
        return list(dict.fromkeys([*self.passthrough_columns, *self.source_columns]))


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
