"""The champion gate: may a candidate replace the production model? Pure logic, no I/O.

A candidate is promoted when it beats both references on the same test rows by the configured
relative margins: the training-split mean (`evaluate.min_improvement`) and the current champion
(`evaluate.min_improvement_over_champion`). With no champion yet, or a champion that could not be
scored on these rows, the champion check is skipped and the reasons say why. The decision is a
document (the registry's `decision.json`), written before the champion alias moves.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipeline.model.metrics import primary_metric


class ChampionScore(BaseModel):
    """The champion as the gate saw it: its version, and its metrics or why it has none."""

    model_config = ConfigDict(frozen=True)

    version: str | None
    """None: there is no champion yet."""
    metrics: dict[str, float] | None = None
    scored_on: str | None = None
    """Which features it was scored on: the candidate's, or its own featurize output."""
    not_scored: str | None = None
    """Why it could not be scored on the test rows (when it exists but has no metrics)."""


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    against: str
    """"baseline" or "champion vN"."""
    value: float
    """The reference's primary metric."""
    improvement: float
    """Relative improvement of the candidate over the reference (0.05 = 5% better)."""
    required: float
    passed: bool


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    metric: str
    lower_is_better: bool
    candidate: dict[str, float]
    baseline: dict[str, float]
    champion: ChampionScore
    checks: list[Check]
    passed: bool
    reasons: list[str]


def improvement(task: str, candidate: dict[str, float], reference: dict[str, float]) -> float:
    """Relative improvement of the candidate's primary metric over the reference's."""
    name, lower_is_better = primary_metric(task)
    gain = reference[name] - candidate[name] if lower_is_better else candidate[name] - reference[name]
    return gain / abs(reference[name]) if reference[name] else (0.0 if not gain else float("inf"))


def decide(task: str, candidate: dict[str, float], baseline: dict[str, float],
           champion: ChampionScore, min_improvement: float,
           min_improvement_over_champion: float) -> Decision:
    name, lower_is_better = primary_metric(task)
    checks = [_check(task, name, candidate, baseline, "baseline", min_improvement)]
    if champion.metrics is not None:
        checks.append(_check(task, name, candidate, champion.metrics,
                             f"champion {champion.version}", min_improvement_over_champion))
    reasons = [f"{name} {candidate[name]:.4f} vs {c.against} {c.value:.4f}: "
               f"{c.improvement:+.1%} (needs {c.required:+.1%}): "
               f"{'pass' if c.passed else 'FAIL'}" for c in checks]
    if champion.version is None:
        reasons.append("no champion yet: the first model is gated on the baseline alone")
    elif champion.metrics is None:
        reasons.append(f"champion {champion.version} could not be scored on these test rows "
                       f"({champion.not_scored}): gated on the baseline alone")
    return Decision(metric=name, lower_is_better=lower_is_better, candidate=candidate,
                    baseline=baseline, champion=champion, checks=checks,
                    passed=all(c.passed for c in checks), reasons=reasons)


def _check(task: str, name: str, candidate: dict[str, float], reference: dict[str, float],
           against: str, required: float) -> Check:
    gain = improvement(task, candidate, reference)
    return Check(against=against, value=reference[name], improvement=gain, required=required,
                 passed=gain >= required)
