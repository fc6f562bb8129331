"""What the evaluate stage reads (`EvaluateParams`), writes (`EvaluateFiles`) and says of its
output (`EvaluateFacts`: the scores, the decision, drift and the registration it made)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from pipeline.core.config import DriftConfig, PipelineConfig
from pipeline.core.schema import Roles
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import Facts, Files, Folder, Params
from pipeline.monitoring.drift import DriftReport
from pipeline.registry.gate import Decision
from pipeline.registry.store import CHAMPION, alias_head

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


class Registration(BaseModel):
    model: str
    version: str
    uri: str
    promoted: bool
    """The champion serves this model after the evaluation (moved to it, or already on it)."""
    reason: str
    metrics: dict[str, float]
    champion: str | None
    """Where the champion pointed once the evaluation was done."""
    registered: bool = True
    """False when the champion's own model was evaluated again (`reason` says so): the registry
    keeps its version, and no new one is made."""


class EvaluateFacts(Facts):
    metrics: dict[str, float]
    baseline: dict[str, float]
    improvement: float
    decision: Decision
    registration: Registration
    drift: DriftReport

    def run_outcome(self, store: ArtifactStore) -> dict[str, Any]:
        """The registered model, with `promoted` and `champion` as they stand now: a cached
        evaluation's promotion may since have been rolled back. `rejected`: the champion does
        not serve this model."""
        made = self.registration
        champion = alias_head(store, made.model, CHAMPION)[1]
        serves = champion == made.version or (made.promoted and champion == made.champion)
        return {"model": made.model, "model_version": made.version, "promoted": serves,
                "rejected": not serves, "champion": champion, "registered": made.registered,
                "gate": {"passed": self.decision.passed, "reasons": self.decision.reasons},
                "test_metrics": made.metrics}
