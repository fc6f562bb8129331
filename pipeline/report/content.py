"""What an evaluation report says, as plain data: gathered by evaluate (and kept as its
`report.json`), drawn by `plots` and `page` once register knows the version."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from pipeline.monitoring.breakdown import DAY, Breakdown
from pipeline.monitoring.drift import DriftReport
from pipeline.registry.gate import Decision


class Run(BaseModel):
    """Where the evaluation came from: the run, its trace, the code and the config. Kept apart
    from the content, so that the content of an evaluation does not depend on which run made it
    (evaluate's fingerprint stays a function of what it judged)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    trace_id: str
    git_commit: str | None
    config_name: str
    evaluate_cache_key: str
    evaluate_code_version: str


class ReportContent(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    task: str
    """regression or binary."""
    label: str
    test_period_start: str
    test_rows: int
    decision: Decision
    errors: Breakdown
    series: dict[str, str]
    """The breakdown's models to show, in order → their names in the report (candidate first)."""
    drift: DriftReport
    lineage: dict[str, dict[str, Any]]
    """Upstream stage → cache key, fingerprint, code version, uri (and source, for ingest)."""

    @property
    def candidate(self) -> str:
        return next(iter(self.series))

    def slices(self) -> list[str]:
        """The categorical columns the candidate's errors are broken down by."""
        return sorted(dimension for dimension, values in self.errors.groups.items()
                      if dimension != DAY and any(self.candidate in v for v in values.values()))

    def verdict(self) -> tuple[bool, str]:
        """(promoted, the decision in plain words)."""
        champion = self.decision.champion.version
        if self.decision.passed:
            return True, ("Promoted: passed the gate and replaces champion " + champion
                          if champion else "Promoted: passed the gate; the first champion")
        return False, (f"Not promoted: the gate rejected it; champion {champion} stays"
                       if champion else "Not promoted: the gate rejected it; no champion yet")
