"""`TelemetrySpec`: the plain, picklable description of where a run's telemetry goes.

It is deliberately a frozen dataclass of builtins (no pydantic, no OTel objects) because it is
shipped inside every carrier to Ray tasks and Train workers, which rebuild their own exporters
from it; and it is hashable so each worker process can cache one provider per spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.core.exporters import EXPORTERS, Exporter


@dataclass(frozen=True)
class TelemetrySpec:
    exporter: Exporter = "none"
    endpoint: str | None = None  # OTLP/HTTP base URL, e.g. http://127.0.0.1:4318
    service_name: str = "raypipe"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    run_dir: str | None = None  # local directory for this run's jsonl files

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ValueError(f"telemetry.exporter: {self.exporter!r} is not one of {EXPORTERS}")
        if self.exporter == "jsonl" and not self.run_dir:
            raise ValueError("telemetry.exporter 'jsonl' needs a run_dir to write files into")
        # A private copy, so a caller mutating its dict later cannot change a "frozen" spec.
        object.__setattr__(self, "resource_attributes", dict(self.resource_attributes or {}))

    def key(self) -> tuple:
        return (
            self.exporter,
            self.endpoint,
            self.service_name,
            tuple(sorted((str(k), str(v)) for k, v in self.resource_attributes.items())),
            self.run_dir,
        )

    def __repr__(self) -> str:  # specs get logged; never print a secret resource attribute
        from .redact import redact

        return (
            f"TelemetrySpec(exporter={self.exporter!r}, endpoint={redact(self.endpoint)!r}, "
            f"service_name={self.service_name!r}, "
            f"resource_attributes={redact(dict(self.resource_attributes))!r}, "
            f"run_dir={self.run_dir!r})"
        )

    def __hash__(self) -> int:  # the dict field would make the generated hash fail
        return hash(self.key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TelemetrySpec) and self.key() == other.key()
