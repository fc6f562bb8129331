"""The event table as the stages see it: column roles, and the declared columns with their rules.

Stage parameters are built from these, so a stage's cache key covers the part of the dataset
section it reads and nothing else (ingest, for one, never sees a validation rule).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from pipeline.core.config import ColumnSpec, DatasetConfig, Timestamp


class Roles(BaseModel):
    """The columns that play a role in every stage after ingest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    row_key: str
    event_time: str
    label: str
    label_available_at: str

    @classmethod
    def of(cls, dataset: DatasetConfig) -> Roles:
        return Roles(**_roles(dataset))


class TableSchema(Roles):
    """Everything validate checks a row against: types, rules and the snapshot's time range."""

    time_unit: Literal["s", "ms", "us", "ns"]
    unlabeled: Literal["quarantine", "history"]
    columns: dict[str, ColumnSpec]
    start: Timestamp
    end: Timestamp

    @classmethod
    def of(cls, dataset: DatasetConfig) -> TableSchema:
        return TableSchema(**_roles(dataset), time_unit=dataset.time_unit,
                           unlabeled=dataset.unlabeled, columns=dataset.columns,
                           start=dataset.start, end=dataset.end)


def _roles(dataset: DatasetConfig) -> dict[str, str]:
    return {name: getattr(dataset, name) for name in Roles.model_fields}
