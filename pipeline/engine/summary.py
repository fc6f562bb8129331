"""What a run did, as the runner reports it: one outcome per stage, and the run's summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RUN_ID_TIME = "%Y%m%dT%H%M%SZ"
"""How a run id begins: the UTC time the run started (`runner.new_run_id`)."""


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "cached"
    cache_key: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    seconds: float
    artifact: str
    facts: Any = None


@dataclass
class RunSummary:
    run_id: str
    trace_id: str
    stages: list[StageOutcome]
    run_record: str
    ray_start_seconds: float | None = None
    """Starting or joining Ray, apart from every stage's seconds (None: no stage needed Ray)."""
    outcome: dict[str, Any] = field(default_factory=dict)
    """What the stages' outputs mean for the run as a whole (`Facts.run_outcome`), as it stands
    once the run is done: evaluate's registered model and where the champion points."""

    @property
    def rejected(self) -> bool:
        """The run ran fine but does not ship its result (`pipeline run` exits 3)."""
        return bool(self.outcome.get("rejected"))

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "trace_id": self.trace_id,
            "stages": [{k: v for k, v in asdict(s).items() if k != "facts"} for s in self.stages],
            **self.outcome,
            "rejected": self.rejected,
            "run_record": self.run_record,
            "ray_start_seconds": self.ray_start_seconds,
        }
