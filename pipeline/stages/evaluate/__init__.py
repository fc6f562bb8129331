"""Stage 5, evaluate + register: the candidate against the champion and a baseline, then the gate.

Stops: shipping a worse model, and models nobody can trace. The test period is the one train
published (strictly after validation plus the embargo). On its rows the stage scores the candidate,
the current champion (with its own preprocessing; see `pipeline.registry.champion` for which features it
reads) and the baseline, the training split's mean label (or positive rate), which train also
published. `pipeline.registry.gate` decides; every evaluated model is registered with its metrics, its
report (`pipeline.report`: errors by day and slice, drift, lineage), the decision (its own
artifact, written before the entry) and its full lineage; a promotion then moves the
registry's `champion` alias, only if nobody moved it since the champion was read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import pyarrow.dataset as pads
from pydantic import BaseModel, Field

from pipeline.core.config import DriftConfig, PipelineConfig
from pipeline.core.formatting import fmt
from pipeline.core.schema import Roles
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.provenance import git_commit
from pipeline.engine.stage import (
    Facts,
    Files,
    Folder,
    Output,
    Params,
    RowQuestion,
    Stage,
    StageContext,
    StageResult,
)
from pipeline.monitoring.breakdown import BASELINE, merge
from pipeline.monitoring.drift import (
    Columns,
    DriftReport,
    TestPeriodCounter,
    drift_reference,
    drift_report,
)
from pipeline.registry.champion import IDENTITY, ChampionPlan, feature_spec, opponent, plan
from pipeline.registry.gate import ChampionScore, Decision, decide, improvement
from pipeline.registry.store import CHAMPION, AliasMoved, alias_head, lineage, move_alias, register
from pipeline.registry.store import version as registry_version
from pipeline.report.content import ReportContent, Run
from pipeline.report.page import render
from pipeline.stages.evaluate.scoring import Scan, Scored, score, score_keyed
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.train import STAGE as TRAIN
from pipeline.stages.train import TrainFacts
from pipeline.telemetry import current_span

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


def judged_against(params: EvaluateParams, inputs: Mapping[str, Output],
                   store: ArtifactStore) -> dict[str, str]:
    """Evaluate's external input: the champion version it judges against (part of its key)."""
    candidate = {stage: inputs[stage].artifact.fingerprint for stage in IDENTITY}
    return {"champion": opponent(store, params.model_name, candidate) or NO_CHAMPION}


def run(ctx: StageContext[EvaluateParams, EvaluateFiles]) -> StageResult[EvaluateFacts]:
    params, store, roles = ctx.params, ctx.store, ctx.params.roles
    trained, featurized = ctx.input(TRAIN), ctx.input(FEATURIZE)
    train_facts: TrainFacts = trained.facts
    head, champion = _judged_champion(ctx)
    columns = Columns.of(featurized.facts, roles)
    reference = drift_reference(store, params.model_name, train_facts.feature_histograms, columns)
    with ctx.telemetry.span("evaluate.score", {"champion": champion or "none"}):
        champion_plan = plan(
            store, params.model_name, champion,
            feature_spec(featurized.artifact.manifest["params"]), featurized.files.data,
            roles.label, params.task, FEATURIZE) if champion else None
        scored = _score_test_rows(ctx, champion_plan,
                                  TestPeriodCounter(columns, reference.histograms))
    rows_in = scored.rows
    test_start = train_facts.test_period_start
    if not rows_in:
        raise ValueError("the test period has no rows: check split.validation_until and dataset.end")
    if rows_in != train_facts.splits["test"]:
        raise ValueError(f"{rows_in} rows from {test_start} on, but train put "
                         f"{train_facts.splits['test']} rows in the test split")

    metrics = scored.metrics[PREDICTION].result()
    baseline_value = train_facts.train_label_mean
    baseline = scored.metrics[BASELINE].result()
    decision = decide(params.task, metrics, baseline,
                      _champion_score(champion_plan, scored),
                      params.min_improvement, params.min_improvement_over_champion)
    with ctx.telemetry.span("evaluate.drift"):
        drift = drift_report(ctx, reference, scored.drift_counts, roles.label, params.model_name,
                             params.drift)
    if drift.blocks_promotion:
        decision = decision.model_copy(update={"passed": False,
                                               "reasons": [*decision.reasons, drift.summary]})
    else:
        decision = decision.model_copy(update={"reasons": [*decision.reasons, drift.summary]})

    found = {**lineage(store, trained.artifact), **lineage(store, featurized.artifact)}
    upstream = {stage: found[stage] for stage in _dag_order(STAGE) if stage in found}
    report = ReportContent(
        model=params.model_name, task=params.task, label=roles.label,
        test_period_start=test_start, test_rows=rows_in, decision=decision,
        errors=scored.breakdown,
        series=_series(decision), drift=drift, lineage=upstream,
        run=Run(run_id=ctx.run_id, trace_id=_trace_id(), git_commit=git_commit(),
                config_name=ctx.telemetry.spec.resource_attributes.get("config.name", "?"),
                evaluate_cache_key=ctx.cache_key, evaluate_code_version=STAGE.code_version))

    def report_page(version: str) -> str:
        with ctx.telemetry.span("evaluate.report"):  # matplotlib's figures take a while
            return render(report, version)

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
                "metrics": metrics,
                "baseline": {"kind": "training-split mean label", "value": baseline_value,
                             **baseline},
                "judged_against": champion,
                "test_rows": rows_in,
                "drift": drift.model_dump(),
                "features": feature_spec(featurized.artifact.manifest["params"]),
                "lineage": upstream,
                "run_id": ctx.run_id,
            }, {**decision.model_dump(mode="json"), "evaluate_cache_key": ctx.cache_key,
                "run_id": ctx.run_id}, report_page)
            promoted, now = _promote(store, params.model_name, entry, decision, head, ctx.run_id)
            reason = ("promoted: " if promoted else "not promoted: ") + entry["reason"]
    return StageResult(
        rows_in=rows_in, rows_out=rows_in,
        schema={f.name: str(f.type) for f in pads.dataset(
            ctx.files.predictions, filesystem=store.arrow_filesystem(), format="parquet").schema},
        statistics={"prediction_mean": scored.mean(PREDICTION),
                    "label_mean": scored.label_sum / rows_in},
        facts=EvaluateFacts(
            metrics=metrics, baseline=baseline,
            improvement=improvement(params.task, metrics, baseline), decision=decision, drift=drift,
            registration=Registration(
                model=entry["model"], version=entry["version"], uri=entry["uri"],
                promoted=promoted, metrics=metrics, champion=now, reason=reason,
                registered=twin is None)),
    )


def _judged_champion(ctx: StageContext[EvaluateParams, EvaluateFiles]) -> tuple[int, str | None]:
    """(the champion alias's latest move, the version to judge against), as the key says."""
    model = ctx.params.model_name
    head, _ = alias_head(ctx.store, model, CHAMPION)
    keyed = ctx.external["champion"]
    now = judged_against(ctx.params, ctx.inputs, ctx.store)["champion"]
    if now != keyed:
        raise ValueError(f"the {CHAMPION} of {model} changed while this run started (judged "
                         f"against {keyed}, now {now}): rerun to judge against {now}")
    return head, None if keyed == NO_CHAMPION else keyed


def scores_in_ray(params: EvaluateParams, inputs: Mapping[str, Output]) -> bool:
    """Whether the test rows are scored in Ray tasks rather than in the driver; in the driver,
    evaluate uses no Ray at all (`Stage.needs_ray`)."""
    return inputs[TRAIN.name].facts.splits["test"] > params.score_in_driver_max_rows


def _score_test_rows(ctx: StageContext[EvaluateParams, EvaluateFiles],
                     champion: ChampionPlan | None, drift: TestPeriodCounter) -> Scored:
    """The candidate's predictions on the test rows, and the champion's where it can score,
    written as the predictions; their metrics, the breakdown of their errors and the
    baseline's, and the rows' drift counts.

    A champion on the current features is scored in the same pass; one on its own features in a
    pass over its featurize output first, joined by row key.
    """
    roles, featurized, trained = ctx.params.roles, ctx.input(FEATURIZE), ctx.input(TRAIN)
    in_driver = not scores_in_ray(ctx.params, ctx.inputs)
    current_span().set_attribute("evaluate.scored_in", "driver" if in_driver else "ray tasks")
    output = ctx.files.predictions
    ctx.store.fs.makedirs(output, exist_ok=True)
    scan = Scan(ctx.store, roles.row_key, roles.event_time, roles.label,
                datetime.fromisoformat(trained.facts.test_period_start),
                tuple(featurized.facts.categorical_columns),
                {PREDICTION: trained.files.model}, ctx.params.task,
                baseline=trained.facts.train_label_mean, error_of=PREDICTION, drift=drift)
    if champion is None or champion.features is None:
        return score(ctx, featurized.files.data, scan, output, in_driver=in_driver)
    if champion.features == featurized.files.data:
        return score(ctx, featurized.files.data, replace(
            scan, models={**scan.models, CHAMPION_PREDICTION: champion.model_dir}), output,
            in_driver=in_driver)
    own = score_keyed(ctx, champion.features, replace(
        scan, categorical=champion.categorical, models={CHAMPION_PREDICTION: champion.model_dir},
        baseline=None, error_of=None), in_driver=in_driver)
    scored = score(ctx, featurized.files.data, scan, output, joined=own, in_driver=in_driver)
    return replace(scored, breakdown=merge([scored.breakdown, own.breakdown]))


def _series(decision: Decision) -> dict[str, str]:
    """The models the report compares, by their breakdown names: the champion only if scored."""
    champion = decision.champion
    return {PREDICTION: "candidate",
            **({CHAMPION_PREDICTION: f"champion {champion.version}"} if champion.metrics else {}),
            BASELINE: "baseline (training mean)"}


def _dag_order(stage: Stage) -> list[str]:
    """The stages upstream of `stage`, each after the stages it reads (ingest first)."""
    order: list[str] = []
    for upstream in stage.inputs:
        order += [name for name in [*_dag_order(upstream), upstream.name] if name not in order]
    return order


def _trace_id() -> str:
    return format(current_span().get_span_context().trace_id, "032x")


def _champion_score(champion: ChampionPlan | None, scored: Scored) -> ChampionScore:
    if champion is None:
        return ChampionScore(version=None)
    if champion.not_scored:
        return ChampionScore(version=champion.version, not_scored=champion.not_scored)
    missing = scored.unpredicted[CHAMPION_PREDICTION]
    if missing:
        return ChampionScore(version=champion.version, not_scored=(
            f"{missing} of the {scored.rows} test rows are missing from {champion.scored_on}"))
    return ChampionScore(version=champion.version, scored_on=champion.scored_on,
                         metrics=scored.metrics[CHAMPION_PREDICTION].result())


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


def explain(question: RowQuestion) -> list[str]:
    """The registered model's prediction and error for the row: as scored, for a test row."""
    facts: EvaluateFacts = question.output.facts
    model = facts.registration
    decision = "promoted" if model.promoted else "not promoted"
    label_column = question.params.roles.label
    scored = question.rows(question.output.files.predictions).to_pylist()
    if scored:
        row = scored[0]
        return [f"model {model.model} {model.version} ({decision}) scored it in the test period: "
                f"predicts {fmt(row['prediction'])}; label {fmt(row[label_column])}; "
                f"error {row['error']:+.4g}"]
    features = question.rows(question.input(FEATURIZE).files.data)
    if not features.num_rows:
        return []
    from pipeline.model.predictor import load_predictor

    predicted = float(load_predictor(question.store.fs, question.input(TRAIN).files.model)
                      .predict(features)[0])
    label = features[label_column][0].as_py()
    error = "no label, no error" if label is None else f"error {predicted - label:+.4g}"
    return [f"model {model.model} {model.version} ({decision}) predicts {fmt(predicted)}; label "
            f"{fmt(label)}; {error} (not a test row: not in its metrics)"]


STAGE = Stage(
    name="evaluate",
    params=EvaluateParams,
    files=EvaluateFiles,
    facts=EvaluateFacts,
    run=run,
    explain=explain,
    inputs=(FEATURIZE, TRAIN),
    external_inputs=judged_against,
    # the report's figures; torch for a test period scored in the driver
    driver_imports=("matplotlib.figure", "pipeline.model.predictor"),
    needs_ray=scores_in_ray,
)
