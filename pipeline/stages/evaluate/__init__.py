"""Stage 5, evaluate: the candidate against the champion and a baseline, judged by the gate.

Stops: shipping a worse model. A pure, cached judgement: it scores, decides and reports, and
moves nothing; `pipeline.stages.register` then registers the version and moves `champion`. The
test period is the one train published (strictly after validation plus the embargo). On its rows
the stage scores the candidate, the current champion (with its own preprocessing; see
`pipeline.registry.champion` for which features it reads) and the baseline, the training split's
mean label (or positive rate), which train also published. `pipeline.registry.gate` decides,
and drift over its threshold vetoes; the report's content (`pipeline.report`: errors by day and
slice, drift, lineage) is kept beside the predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

import pyarrow.dataset as pads

from pipeline.core.formatting import fmt
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import Output, RowQuestion, Stage, StageContext, StageResult
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
from pipeline.registry.store import CHAMPION, lineage
from pipeline.report.content import ReportContent
from pipeline.stages.evaluate.scoring import Scan, Scored, score, score_keyed
from pipeline.stages.evaluate.spec import (
    CHAMPION_PREDICTION,
    NO_CHAMPION,
    PREDICTION,
    EvaluateFacts,
    EvaluateFiles,
    EvaluateParams,
)
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.train import STAGE as TRAIN
from pipeline.stages.train import TrainFacts
from pipeline.telemetry import current_span


def judged_against(params: EvaluateParams, inputs: Mapping[str, Output],
                   store: ArtifactStore) -> dict[str, str]:
    """Evaluate's external input: the champion version it judges against (part of its key)."""
    candidate = {stage: inputs[stage].artifact.fingerprint for stage in IDENTITY}
    return {"champion": opponent(store, params.model_name, candidate) or NO_CHAMPION}


def run(ctx: StageContext[EvaluateParams, EvaluateFiles]) -> StageResult[EvaluateFacts]:
    params, store, roles = ctx.params, ctx.store, ctx.params.roles
    trained, featurized = ctx.input(TRAIN), ctx.input(FEATURIZE)
    train_facts: TrainFacts = trained.facts
    with ctx.telemetry.span("evaluate.champion"):  # who is judged against, and drift's reference
        champion = _judged_champion(ctx)
        columns = Columns.of(featurized.facts, roles)
        reference = drift_reference(store, params.model_name, train_facts.feature_histograms,
                                    columns)
    with ctx.telemetry.span("evaluate.score", {"champion": champion or "none"}):
        champion_plan = plan(
            store, params.model_name, champion,
            feature_spec(featurized.artifact.manifest["params"]), featurized.files.data,
            roles.label, params.task, FEATURIZE) if champion else None
        scored = _score_test_rows(ctx, champion_plan,
                                  TestPeriodCounter(columns, reference.histograms))
    rows_in = _test_rows(scored, train_facts)

    metrics = scored.metrics[PREDICTION].result()
    baseline = scored.metrics[BASELINE].result()
    decision = decide(params.task, metrics, baseline,
                      _champion_score(champion_plan, scored),
                      params.min_improvement, params.min_improvement_over_champion)
    with ctx.telemetry.span("evaluate.drift"):
        drift = drift_report(ctx, reference, scored.drift_counts, roles.label, params.model_name,
                             params.drift)
    decision = decision.model_copy(update={  # drift over its threshold vetoes a promotion
        "passed": decision.passed and not drift.blocks_promotion,
        "reasons": [*decision.reasons, drift.summary]})
    with ctx.telemetry.span("evaluate.report"):  # its content: register draws it
        found = {**lineage(store, trained.artifact), **lineage(store, featurized.artifact)}
        upstream = {stage: found[stage] for stage in _dag_order(STAGE) if stage in found}
        report = _report_content(ctx, decision, scored, drift, upstream, rows_in)
        store.write_bytes(ctx.files.report, report.model_dump_json().encode())
    return StageResult(
        rows_in=rows_in, rows_out=rows_in,
        schema={f.name: str(f.type) for f in pads.dataset(
            ctx.files.predictions, filesystem=store.arrow_filesystem(), format="parquet").schema},
        statistics={"prediction_mean": scored.mean(PREDICTION),
                    "label_mean": scored.label_sum / rows_in},
        facts=EvaluateFacts(
            metrics=metrics, baseline=baseline,
            improvement=improvement(params.task, metrics, baseline), decision=decision,
            drift=drift),
    )


def _test_rows(scored: Scored, train_facts: TrainFacts) -> int:
    """The test rows scored, which must be train's test split, row for row."""
    if not scored.rows:
        raise ValueError("the test period has no rows: check split.validation_until and dataset.end")
    if scored.rows != train_facts.splits["test"]:
        raise ValueError(f"{scored.rows} rows from {train_facts.test_period_start} on, but train "
                         f"put {train_facts.splits['test']} rows in the test split")
    return scored.rows


def _report_content(ctx: StageContext[EvaluateParams, EvaluateFiles], decision: Decision,
                    scored: Scored, drift: DriftReport, upstream: dict[str, dict[str, str]],
                    rows: int) -> ReportContent:
    params = ctx.params
    return ReportContent(
        model=params.model_name, task=params.task, label=params.roles.label,
        test_period_start=ctx.input(TRAIN).facts.test_period_start, test_rows=rows,
        decision=decision, errors=scored.breakdown, series=_series(decision), drift=drift,
        lineage=upstream)


def _judged_champion(ctx: StageContext[EvaluateParams, EvaluateFiles]) -> str | None:
    """The version to judge against, as the key says (None: no champion yet)."""
    model = ctx.params.model_name
    keyed = ctx.external["champion"]
    now = judged_against(ctx.params, ctx.inputs, ctx.store)["champion"]
    if now != keyed:
        raise ValueError(f"the {CHAMPION} of {model} changed while this run started (judged "
                         f"against {keyed}, now {now}): rerun to judge against {now}")
    return None if keyed == NO_CHAMPION else keyed


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


def explain(question: RowQuestion) -> list[str]:
    """The candidate's prediction and error for the row: as scored, for a test row."""
    label_column = question.params.roles.label
    scored = question.rows(question.output.files.predictions).to_pylist()
    if scored:
        row = scored[0]
        return [f"scored in the test period: the candidate predicts {fmt(row['prediction'])}; "
                f"label {fmt(row[label_column])}; error {row['error']:+.4g}"]
    features = question.rows(question.input(FEATURIZE).files.data)
    if not features.num_rows:
        return []
    from pipeline.model.predictor import load_predictor

    predicted = float(load_predictor(question.store.fs, question.input(TRAIN).files.model)
                      .predict(features)[0])
    label = features[label_column][0].as_py()
    error = "no label, no error" if label is None else f"error {predicted - label:+.4g}"
    return [f"the candidate predicts {fmt(predicted)}; label {fmt(label)}; {error} (not a test "
            "row: not in its metrics)"]


STAGE = Stage(
    name="evaluate",
    params=EvaluateParams,
    files=EvaluateFiles,
    facts=EvaluateFacts,
    run=run,
    explain=explain,
    inputs=(FEATURIZE, TRAIN),
    external_inputs=judged_against,
    driver_imports=("pipeline.model.predictor",),  # torch, for a test period scored in the driver
    needs_ray=scores_in_ray,
)
