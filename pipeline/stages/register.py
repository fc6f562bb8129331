"""Stage 6, register: the evaluated candidate into the registry, and `champion` moved to it if
the gate passed.

Stops: models nobody can trace, and a promotion decided against a champion that has moved.
Evaluate judged; this step acts on the judgement, idempotently. Every evaluated model gets one
version (`pipeline.registry.store.register`: its report, drawn here once the number is known,
then its decision, then its entry), found again by evaluate's cache key on a rerun. The alias
moves only if the gate passed, the champion is still the version judged against, and no move
ever pointed at this version before: a promotion rolled back by hand stays rolled back. The
champion's own model evaluated again keeps its one version.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import (
    Facts,
    Files,
    Params,
    RowQuestion,
    Stage,
    StageContext,
    StageResult,
)
from pipeline.registry.champion import IDENTITY, champion_and_twin, feature_spec
from pipeline.registry.gate import Decision
from pipeline.registry.store import (
    CHAMPION,
    AliasMoved,
    alias_head,
    alias_history,
    move_alias,
    register,
)
from pipeline.report.content import ReportContent, Run
from pipeline.report.page import render
from pipeline.stages.evaluate import STAGE as EVALUATE
from pipeline.stages.evaluate import EvaluateFacts
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.train import STAGE as TRAIN


class RegisterParams(Params):
    model_name: str

    @classmethod
    def from_config(cls, config: PipelineConfig) -> RegisterParams:
        return cls(model_name=config.evaluate.model_name)


class RegisterFiles(Files):
    """Nothing of its own: the version lives in the registry (`pipeline.registry.store`)."""


class RegisterFacts(Facts):
    model: str
    version: str
    uri: str
    promoted: bool
    """The champion serves this model after the step (moved to it, or already on it)."""
    reason: str
    champion: str | None
    """Where the champion pointed once the step was done."""
    registered: bool = True
    """False when the champion's own model was evaluated again (`reason` says so): the registry
    keeps its version, and no new one is made."""
    gate: dict[str, Any]
    """The judgement acted on: whether the gate passed and its reasons."""

    def run_outcome(self, store: ArtifactStore) -> dict[str, Any]:
        """The registered model, with `promoted` and `champion` as they stand now: a cached
        registration's promotion may since have been rolled back. `rejected`: the champion does
        not serve this model."""
        champion = alias_head(store, self.model, CHAMPION)[1]
        serves = champion == self.version or (self.promoted and champion == self.champion)
        return {"model": self.model, "model_version": self.version, "promoted": serves,
                "rejected": not serves, "champion": champion, "registered": self.registered,
                "gate": self.gate}


def run(ctx: StageContext[RegisterParams, RegisterFiles]) -> StageResult[RegisterFacts]:
    store, model, evaluated = ctx.store, ctx.params.model_name, ctx.input(EVALUATE)
    judged: EvaluateFacts = evaluated.facts
    evaluate_key = evaluated.artifact.manifest["cache_key"]
    gate = {"passed": judged.decision.passed, "reasons": judged.decision.reasons}
    with ctx.telemetry.span("register.read"):  # the judgement's report, where champion points
        report = ReportContent.model_validate(store.read_json(evaluated.files.report))
        champion, twin = _champion_of(store, model, report.lineage)
    if twin is not None and twin["evaluate_cache_key"] != evaluate_key:
        # evaluate's code or settings changed, the model did not: one version
        facts = RegisterFacts(
            model=model, version=twin["version"], uri=twin["uri"], promoted=True,
            champion=champion, registered=False, gate=gate,
            reason=f"already the champion: {champion} is this model (the same featurize and "
                   "train outputs); re-evaluated, not registered again")
    else:
        if twin is None and champion != judged.decision.champion.version:
            raise ValueError(_moved(model, champion, judged.decision))
        with ctx.telemetry.span("register.version"):
            entry = _register(ctx, judged, report, evaluate_key)
        with ctx.telemetry.span("register.promote"):
            promoted, now = _promote(store, model, entry, judged.decision, ctx.run_id)
        facts = RegisterFacts(
            model=model, version=entry["version"], uri=entry["uri"], promoted=promoted,
            champion=now, gate=gate,
            reason=("promoted: " if promoted else "not promoted: ") + entry["reason"])
    return StageResult(rows_in=evaluated.rows_out, rows_out=evaluated.rows_out, facts=facts)


def _register(ctx: StageContext[RegisterParams, RegisterFiles], judged: EvaluateFacts,
              report: ReportContent, evaluate_key: str) -> dict[str, Any]:
    """The version of this evaluation: registered now, or found by evaluate's key."""
    decision, trained = judged.decision, ctx.input(TRAIN)

    made = ctx.input(EVALUATE).artifact.manifest
    evaluation = Run(run_id=made["run_id"], trace_id=made["trace_id"],
                     git_commit=made["git_commit"], evaluate_cache_key=evaluate_key,
                     evaluate_code_version=made["code_version"],
                     config_name=ctx.telemetry.spec.resource_attributes.get("config.name", "?"))

    def report_page(version: str) -> str:
        with ctx.telemetry.span("register.report"):  # matplotlib's figures take a while
            return render(report, evaluation, version)

    return register(ctx.store, ctx.params.model_name, trained.files.model, {
        "evaluate_cache_key": evaluate_key,
        "gate": "passed" if decision.passed else "rejected",
        "reason": "; ".join(decision.reasons),
        "metrics": judged.metrics,
        "baseline": {"kind": "training-split mean label",
                     "value": trained.facts.train_label_mean, **judged.baseline},
        "judged_against": decision.champion.version,
        "test_rows": report.test_rows,
        "drift": judged.drift.model_dump(),
        "features": feature_spec(ctx.input(FEATURIZE).artifact.manifest["params"]),
        "lineage": report.lineage,
        "run_id": ctx.run_id,
    }, {**decision.model_dump(mode="json"), "evaluate_cache_key": evaluate_key,
        "run_id": ctx.run_id}, report_page)


def _promote(store: ArtifactStore, model: str, entry: dict, decision: Decision,
             run_id: str) -> tuple[bool, str | None]:
    """Move the champion to the new version if the gate passed, the champion has not moved since
    this step read it, and no earlier move pointed at this version; return (whether the
    champion serves this model, where it points)."""
    head, champion = alias_head(store, model, CHAMPION)
    if champion == entry["version"]:
        return True, champion
    once = any(move["version"] == entry["version"] for move in alias_history(store, model, CHAMPION))
    if not decision.passed or once:
        return False, champion
    try:
        move_alias(store, model, CHAMPION, entry["version"], f"gate passed ({run_id}): "
                   f"{'; '.join(decision.reasons)}", run_id, if_move=head)
    except AliasMoved:
        now, twin = _champion_of(store, model, entry["lineage"])
        if twin is not None:  # a concurrent run promoted this very model
            return True, now
        raise ValueError(_moved(model, now, decision)) from None
    return True, entry["version"]


def _moved(model: str, champion: str | None, decision: Decision) -> str:
    return (f"{CHAMPION} of {model} moved to {champion or 'nothing'} since the candidate was "
            f"judged against {decision.champion.version or 'no champion'}: not promoted; rerun to "
            f"judge it against {champion or 'no champion'}")


def _champion_of(store: ArtifactStore, model: str,
                 lineage: dict) -> tuple[str | None, dict | None]:
    """(the champion's version, its entry if it is the model of `lineage`), as after a rerun
    whose evaluation ran again because evaluate's code or settings changed, or a concurrent run
    that registered and promoted it."""
    return champion_and_twin(store, model, {stage: lineage[stage]["fingerprint"]
                                            for stage in IDENTITY})


def explain(question: RowQuestion) -> list[str]:
    """The version the row's model was registered as, and whether it serves."""
    facts: RegisterFacts = question.output.facts
    decision = "promoted" if facts.promoted else "not promoted"
    return [f"registered as {facts.model} {facts.version} ({decision})"]


STAGE = Stage(
    name="register",
    params=RegisterParams,
    files=RegisterFiles,
    facts=RegisterFacts,
    run=run,
    explain=explain,
    inputs=(FEATURIZE, TRAIN, EVALUATE),
    driver_imports=("matplotlib.figure",),  # the report's figures
    needs_ray=lambda params, inputs: False,
)
