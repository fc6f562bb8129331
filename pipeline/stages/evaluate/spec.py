"""What the evaluate stage reads (`EvaluateParams`), writes (`EvaluateFiles`) and says of its
output (`EvaluateFacts`: the scores, the gate's decision and drift)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline.core.config import DriftConfig, PipelineConfig
from pipeline.core.schema import Roles
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import Facts, Files, Folder, Params
from pipeline.monitoring.drift import DriftReport
from pipeline.registry.gate import Decision

PREDICTION = "prediction"
CHAMPION_PREDICTION = "champion_prediction"
NO_CHAMPION = "none"


class EvaluateParams(Params):
    roles: Roles
    task: str
    model_name: str
    min_improvement: float
    min_improvement_over_champion: float
    drift: DriftConfig
    score_in_driver_max_rows: int = Field(exclude=True)
    """Where the test rows are scored, never what they score: not part of the cache key."""

    @classmethod
    def from_config(cls, config: PipelineConfig) -> EvaluateParams:
        evaluate = config.evaluate
        return cls(roles=Roles.of(config.dataset), task=config.train.task,
                   model_name=evaluate.model_name, min_improvement=evaluate.min_improvement,
                   min_improvement_over_champion=evaluate.min_improvement_over_champion,
                   drift=evaluate.drift,
                   score_in_driver_max_rows=evaluate.score_in_driver_max_rows)


class EvaluateFiles(Files):
    predictions = Folder("predictions.parquet")
    """A parquet dataset, one part per featurize file: every test row's row key, event time,
    label, prediction, the champion's prediction when it was scored, and error."""
    report = Folder("report.json")
    """What the report says (`pipeline.report.content.ReportContent`): register draws it."""


class EvaluateFacts(Facts):
    metrics: dict[str, float]
    baseline: dict[str, float]
    improvement: float
    decision: Decision
    drift: DriftReport

    def run_outcome(self, store: ArtifactStore) -> dict[str, Any]:
        """The gate's verdict and the test metrics (register repeats the verdict it acted on)."""
        return {"gate": {"passed": self.decision.passed, "reasons": self.decision.reasons},
                "test_metrics": self.metrics}
