"""The champion gate through the CLI: a worse retrain is registered but not promoted, a better one
moves `champion`, `models alias` rolls it back, and the exit code tells a rejected model (3) from a
failure (1) and a bad config (2). Built on a private copy of the shared smoke run (v1 = champion),
so a retrain reruns only train and evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SMOKE, run_cli

MODEL = "trip-duration"
WORSE = ["--set", "train.lr=0.00001"]  # one epoch at a tiny rate: barely moves from the mean
BETTER = ["--set", "train.epochs=2"]


def _registry(root: Path) -> Path:
    return root / "registry" / MODEL


def _decision(root: Path, version: str) -> dict:
    return json.loads((_registry(root) / version / "decision.json").read_text())


def _champion_moves(root: Path) -> list[tuple[Path, dict]]:
    files = sorted((_registry(root) / "aliases" / "champion").glob("*.json"))
    return [(path, json.loads(path.read_text())) for path in files]


def _stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["name"] == name)


def test_the_champion_moves_only_to_a_better_model_and_rolls_back_by_hand(smoke_copy, capsys):
    root, overrides = smoke_copy
    run = ["run", "-c", str(SMOKE), *overrides, "--json"]

    code, output, worse = run_cli(*run, *WORSE)
    assert code == 3, output
    assert [s["status"] for s in worse["stages"]] == ["cached"] * 3 + ["ran"] * 3
    assert (worse["model_version"], worse["promoted"], worse["rejected"], worse["champion"]) \
        == ("v2", False, True, "v1")
    decision = _decision(root, "v2")
    assert not decision["passed"] and decision["champion"]["version"] == "v1"
    assert decision["champion"]["scored_on"] == "the candidate's features"
    champion_check = next(c for c in decision["checks"] if c["against"] == "champion v1")
    assert champion_check["improvement"] < 0 and not champion_check["passed"]
    assert "not promoted: the gate rejected it; champion is v1" in output

    code, output, better = run_cli(*run, *BETTER)
    assert code == 0, output
    assert (better["model_version"], better["promoted"], better["champion"]) == ("v3", True, "v3")
    assert [m["version"] for _, m in _champion_moves(root)] == ["v1", "v3"]
    for path, move in _champion_moves(root):  # each move by a run: its decision came first
        decision_file = _registry(root) / move["version"] / "decision.json"
        assert json.loads(decision_file.read_text())["passed"]
        assert decision_file.stat().st_mtime_ns <= path.stat().st_mtime_ns

    # evaluate's key names the champion: the worse model is judged again, now against v3
    code, _, again = run_cli(*run, *WORSE)
    assert code == 3
    assert _stage(again, "train")["status"] == "cached"
    assert _stage(again, "evaluate")["status"] == "ran"
    assert _stage(again, "evaluate")["cache_key"] != _stage(worse, "evaluate")["cache_key"]
    assert _decision(root, again["model_version"])["champion"]["version"] == "v3"

    code, output, _ = run_cli("models", "alias", MODEL, "champion", "v1", "-c", str(SMOKE),
                              *overrides)
    assert code == 0 and "champion of trip-duration: v3 -> v1" in output
    assert _champion_moves(root)[-1][1]["reason"] == "set by hand"
    code, output, _ = run_cli("models", "show", f"{MODEL}@champion", "-c", str(SMOKE), *overrides)
    assert output.startswith("trip-duration v1  (champion)")

    # the better model's cached evaluation does not undo the rollback, and says so
    code, output, cached = run_cli(*run, *BETTER)
    assert code == 3 and _stage(cached, "evaluate")["status"] == "cached"
    assert _stage(cached, "register")["status"] == "cached"
    assert cached["champion"] == "v1" and cached["gate"]["passed"]
    assert "the gate passed it, but the champion has moved since" in output


def test_models_list_and_show_print_decisions_aliases_lineage_and_the_report(smoke_copy):
    root, overrides = smoke_copy
    assert run_cli("run", "-c", str(SMOKE), *overrides, *WORSE)[0] == 3
    code, output, _ = run_cli("models", "list", "-c", str(SMOKE), *overrides)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == MODEL
    v1 = next(line.split() for line in lines if line.strip().startswith("v1 "))
    v2 = next(line.split() for line in lines if line.strip().startswith("v2 "))
    assert v1[-3:] == ["(first)", "passed", "champion"]
    assert v2[-4] == "v1" and v2[-3].startswith("-") and v2[-2:] == ["rejected", "-"]

    code, output, _ = run_cli("models", "show", f"{MODEL}@v2", "-c", str(SMOKE), *overrides)
    assert code == 0, output
    assert "gate:        rejected" in output and "vs champion v1" in output
    assert f"decision:    {_registry(root) / 'v2' / 'decision.json'}" in output
    assert f"report:      {_registry(root) / 'v2' / 'report.html'}\n" in output
    report = (_registry(root) / "v2" / "report.html").read_text()  # rejected: written all the same
    assert "<h1>trip-duration@v2</h1>" in report
    assert "Not promoted: the gate rejected it; champion v1 stays" in report
    assert "<th>champion v1</th>" in report and "FAIL" in report
    assert all(f"    {stage} " in output for stage in ("ingest", "validate", "featurize", "train"))


def test_bad_model_references_are_one_error_line(smoke_copy, capsys):
    _, overrides = smoke_copy
    config = ["-c", str(SMOKE), *overrides]
    for args, expected in [
        (["show", MODEL], "expected MODEL@VERSION or MODEL@ALIAS"),
        (["show", f"{MODEL}@v9"], "has no version v9"),
        (["show", f"{MODEL}@staging"], "has no alias 'staging'"),
        (["show", "nope@v1"], "no model 'nope'"),
        (["alias", MODEL, "champion", "v9"], "has no version v9"),
        (["alias", MODEL, "v2", "v1"], "not a version name"),
    ]:
        assert run_cli("models", *args, *config)[0] == 1, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err


def test_exit_codes_tell_a_failure_and_a_bad_config_from_a_rejected_model(smoke_overrides,
                                                                           capsys):
    empty = [arg for value in smoke_overrides for arg in ("--set", value)]  # nothing run yet
    assert run_cli("stage", "evaluate", "-c", str(SMOKE), *empty)[0] == 1
    assert capsys.readouterr().err.startswith("error: stage evaluate needs the output of ingest")
    code, _, _ = run_cli("run", "-c", str(SMOKE), *empty,
                         "--set", "evaluate.min_improvement_over_champion=-5")
    assert code == 2
    assert "evaluate.min_improvement_over_champion: Input should be greater than or equal to " \
           "-0.1" in capsys.readouterr().err


def test_models_commands_import_neither_torch_nor_ray(smoke_run):
    check = ("import sys; from pipeline.commands.cli import main; "
             f"code = main(['models', 'list', '-c', {str(SMOKE)!r}, *{smoke_run.overrides!r}]); "
             "assert code == 0; print(sorted({'torch', 'ray'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_a_champion_with_other_features_is_scored_on_its_own_or_the_reason_is_recorded(smoke_copy):
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.registry.champion import plan
    from pipeline.registry.gate import ChampionScore, decide
    from pipeline.stages.featurize import STAGE as FEATURIZE

    root, _ = smoke_copy
    store = ArtifactStore(str(root))
    entry = json.loads((_registry(root) / "v1" / "entry.json").read_text())
    without_windows = {**entry["features"], "windows": []}
    current = str(root / "elsewhere")  # the candidate's features: not where the champion scores

    scored = plan(store, MODEL, "v1", entry["features"], current, "duration_min",
                  "regression", FEATURIZE)
    assert scored.features == current and scored.scored_on == "the candidate's features"
    own = plan(store, MODEL, "v1", without_windows, current, "duration_min",
                  "regression", FEATURIZE)
    featurize = entry["lineage"]["featurize"]["cache_key"]
    assert own.features == str(root / "stages" / "featurize" / featurize / "data")
    assert own.scored_on.startswith(f"its own features (featurize {featurize}; current "
                                    "features lack driver_id__pace_min_per_km__mean__7d")
    (root / "stages" / "featurize" / featurize / "manifest.json").unlink()  # a private copy
    gone = plan(store, MODEL, "v1", without_windows, current, "duration_min",
                  "regression", FEATURIZE)
    assert gone.features is None and "no longer in the artifact store" in gone.not_scored
    other = plan(store, MODEL, "v1", entry["features"], current, "fare", "regression",
                 FEATURIZE)
    assert other.not_scored == "it predicts duration_min (regression), the candidate fare " \
                               "(regression)"

    decision = decide("regression", {"rmse": 9.0}, {"rmse": 10.0},
                      ChampionScore(version="v1", not_scored=gone.not_scored), 0.05, 0.0)
    assert decision.passed and [c.against for c in decision.checks] == ["baseline"]
    assert decision.reasons[-1].startswith("champion v1 could not be scored on these test rows")
    assert decision.reasons[-1].endswith("gated on the baseline alone")


def _spans(root: Path, summary: dict, name: str) -> list[dict]:
    files = (root / "runs" / summary["run_id"] / "spans").glob("*.jsonl")
    return [span for path in files for line in path.read_text().splitlines()
            if (span := json.loads(line))["name"] == name]


@pytest.mark.parametrize("scored_in", ["driver", "ray tasks"])
def test_a_champion_on_other_features_is_scored_on_them_and_joined_by_row_key(smoke_copy,
                                                                              scored_in):
    """A window changed since the champion was trained: it needs a feature the candidate's table
    lacks, so evaluate scores it on its own featurize output and joins its predictions to the
    test rows by key. (A window length no other test uses, so the run computes whatever ran
    before on the shared smoke run.) Its scores equal those of its own evaluation, scored in the
    driver on the smoke run: in Ray tasks too (`evaluate.score_in_driver_max_rows: 0`)."""
    import pyarrow.dataset as pads

    root, overrides = smoke_copy
    where = [] if scored_in == "driver" else ["--set", "evaluate.score_in_driver_max_rows=0"]
    code, output, summary = run_cli("run", "-c", str(SMOKE), *overrides, "--json",
                                    "--set", "features.windows.0.window=2d", *where)
    assert code in (0, 3), output
    assert [s["status"] for s in summary["stages"]] == ["cached"] * 2 + ["ran"] * 4
    (score_span,) = _spans(root, summary, "evaluate.score")
    assert score_span["attributes"]["evaluate.scored_in"] == scored_in
    scorers = {span["pid"] for span in _spans(root, summary, "evaluate.score_file")}
    assert (scorers == {score_span["pid"]}) == (scored_in == "driver"), scorers
    judged = _decision(root, summary["model_version"])["champion"]
    assert judged["scored_on"].startswith("its own features")

    def predictions(evaluate_key: str, column: str) -> dict:
        table = pads.dataset(root / "stages" / "evaluate" / evaluate_key / "predictions.parquet",
                             format="parquet").to_table(columns=["trip_id", column])
        return dict(zip(table["trip_id"].to_pylist(), table[column].to_pylist(), strict=True))

    champion_now = predictions(_stage(summary, "evaluate")["cache_key"], "champion_prediction")
    assert len(champion_now) == judged["metrics"]["rows"]
    entry = json.loads((_registry(root) / judged["version"] / "entry.json").read_text())
    assert champion_now == predictions(entry["evaluate_cache_key"], "prediction")  # its own scores
    assert judged["metrics"] == pytest.approx(entry["metrics"], rel=1e-12)


def test_an_upgraded_evaluate_re_evaluates_the_champion_without_registering_a_twin(smoke_copy,
                                                                                  monkeypatch):
    """A new evaluate code version evaluates the champion's own model again (same featurize and
    train outputs): the registry keeps one version of it, and the run says it is the champion."""
    import pipeline.engine.stage

    root, overrides = smoke_copy
    versions = pipeline.engine.stage.code_version
    monkeypatch.setattr(pipeline.engine.stage, "code_version", lambda module, upstream=frozenset(): (
        versions(module, upstream) + ("+upgraded" if module.endswith(".evaluate") else "")))
    code, output, again = run_cli("run", "-c", str(SMOKE), *overrides, "--json")
    assert code == 0, output
    assert [s["status"] for s in again["stages"]] == ["cached"] * 4 + ["ran"] * 2
    assert (again["model_version"], again["promoted"], again["champion"]) == ("v1", True, "v1")
    assert sorted(path.name for path in _registry(root).glob("v*")) == ["v1"]
    assert "model trip-duration v1: still the champion; evaluated again, not registered again" \
        in output
    key = _stage(again, "register")["cache_key"]
    facts = json.loads((root / "stages" / "register" / key / "manifest.json").read_text())["details"]
    assert facts["reason"] == (
        "already the champion: v1 is this model (the same featurize and train outputs); "
        "re-evaluated, not registered again")


def test_register_acts_on_a_published_judgement_once(smoke_copy, monkeypatch):
    """Evaluate only judges: until register runs, nothing is registered and nothing moves. A
    register run later registers and promotes; a new register code version afterwards finds the
    same version again and leaves a rollback by hand in place."""
    import pipeline.engine.stage

    root, overrides = smoke_copy
    config = ["-c", str(SMOKE), *overrides, *BETTER]
    for stage in ("train", "evaluate"):
        code, output, _ = run_cli("stage", stage, *config)
        assert code == 0, output
    assert sorted(path.name for path in _registry(root).glob("v*")) == ["v1"]
    assert [m["version"] for _, m in _champion_moves(root)] == ["v1"]

    code, output, _ = run_cli("stage", "register", *config)
    assert code == 0, output
    assert [m["version"] for _, m in _champion_moves(root)] == ["v1", "v2"]
    assert run_cli("models", "alias", MODEL, "champion", "v1", *config)[0] == 0

    versions = pipeline.engine.stage.code_version
    monkeypatch.setattr(pipeline.engine.stage, "code_version", lambda module, upstream=frozenset(): (
        versions(module, upstream) + ("+upgraded" if module.endswith(".register") else "")))
    code, output, again = run_cli("run", *config, "--json")
    assert code == 3, output
    assert [s["status"] for s in again["stages"]] == ["cached"] * 5 + ["ran"]
    assert (again["model_version"], again["promoted"], again["champion"]) == ("v2", False, "v1")
    assert sorted(path.name for path in _registry(root).glob("v*")) == ["v1", "v2"]
    assert [m["version"] for _, m in _champion_moves(root)] == ["v1", "v2", "v1"]
