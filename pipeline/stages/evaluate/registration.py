"""Registering what evaluate judged: the candidate's version with its report, decision and
entry (`pipeline.registry.store.register`), then the `champion` alias moved to it if the gate
passed and nobody moved the alias since the decision was judged against it. The champion's own
model evaluated again keeps its one version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import StageContext
from pipeline.monitoring.drift import DriftReport
from pipeline.registry.champion import IDENTITY
from pipeline.registry.gate import Decision
from pipeline.registry.store import CHAMPION, AliasMoved, alias_head, move_alias, register
from pipeline.registry.store import version as registry_version
from pipeline.stages.evaluate.spec import EvaluateFiles, EvaluateParams, Registration
from pipeline.stages.train import STAGE as TRAIN


@dataclass(frozen=True)
class Candidate:
    """What evaluate found of the candidate, as the registry records it."""

    decision: Decision
    metrics: dict[str, float]
    baseline: dict[str, float]
    baseline_value: float
    """The training split's mean label: the baseline's prediction."""
    judged_against: str | None
    """The champion version the decision was judged against (None: no champion yet)."""
    judged_at: int
    """The champion alias's move the decision was judged at: a promotion needs it unchanged."""
    test_rows: int
    drift: DriftReport
    features: dict[str, Any]
    lineage: dict[str, dict[str, str]]


def register_candidate(ctx: StageContext[EvaluateParams, EvaluateFiles], candidate: Candidate,
                       report_page: Callable[[str], str]) -> Registration:
    """The candidate's registration (or the champion's own version, evaluated again)."""
    store, params, trained = ctx.store, ctx.params, ctx.input(TRAIN)
    decision, upstream = candidate.decision, candidate.lineage
    with ctx.telemetry.span("evaluate.register"):
        _, twin = _champion_of(store, params.model_name, upstream)
        if twin is not None:  # re-evaluated (evaluate's code or settings changed): one version
            entry, promoted, now = twin, True, twin["version"]
            reason = (f"already the champion: {now} is this model (the same featurize and train "
                      "outputs); re-evaluated, not registered again")
        else:
            entry = register(store, params.model_name, trained.files.model, {
                "evaluate_cache_key": ctx.cache_key,
                "gate": "passed" if decision.passed else "rejected",
                "reason": "; ".join(decision.reasons),
                "metrics": candidate.metrics,
                "baseline": {"kind": "training-split mean label",
                             "value": candidate.baseline_value, **candidate.baseline},
                "judged_against": candidate.judged_against,
                "test_rows": candidate.test_rows,
                "drift": candidate.drift.model_dump(),
                "features": candidate.features,
                "lineage": upstream,
                "run_id": ctx.run_id,
            }, {**decision.model_dump(mode="json"), "evaluate_cache_key": ctx.cache_key,
                "run_id": ctx.run_id}, report_page)
            promoted, now = _promote(store, params.model_name, entry, decision,
                                     candidate.judged_at, ctx.run_id)
            reason = ("promoted: " if promoted else "not promoted: ") + entry["reason"]
    return Registration(model=entry["model"], version=entry["version"], uri=entry["uri"],
                        promoted=promoted, metrics=candidate.metrics, champion=now,
                        reason=reason, registered=twin is None)


def _promote(store: ArtifactStore, model: str, entry: dict, decision: Decision, head: int,
             run_id: str) -> tuple[bool, str | None]:
    """Move the champion to the new version if the gate passed and nobody moved it since it was
    read (move `head`); return (whether the champion serves this model, where it points)."""
    champion, twin = _champion_of(store, model, entry["lineage"])
    if twin is not None:
        return True, champion  # a concurrent run promoted this model since evaluate looked
    if not decision.passed:
        return False, champion
    try:
        move_alias(store, model, CHAMPION, entry["version"], f"gate passed ({run_id}): "
                   f"{'; '.join(decision.reasons)}", run_id, if_move=head)
    except AliasMoved:
        now, twin = _champion_of(store, model, entry["lineage"])
        if twin is not None:
            return True, now
        raise ValueError(f"{CHAMPION} of {model} moved to {now} while {entry['version']} was "
                         f"judged against {decision.champion.version}: not promoted; rerun to "
                         f"judge it against {now}") from None
    return True, entry["version"]


def _champion_of(store: ArtifactStore, model: str,
                 lineage: dict) -> tuple[str | None, dict | None]:
    """(the champion's version, its entry if it is the model of `lineage`: the same featurize
    and train outputs, as after a rerun whose evaluation ran again because evaluate's code or
    settings changed, or a concurrent run that registered and promoted it)."""
    _, champion = alias_head(store, model, CHAMPION)
    if champion is None:
        return None, None
    entry = registry_version(store, model, champion)
    same = all(entry["lineage"][stage]["fingerprint"] == lineage[stage]["fingerprint"]
               for stage in IDENTITY)
    return champion, entry if same else None
