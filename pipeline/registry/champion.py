"""Which champion a candidate is judged against, and on which features that champion can score.

The champion is read from the registry's `champion` alias. Evaluate's cache key names it (see
`opponent`), so a cached decision is never one made against an older champion. A champion scores
the test rows on the candidate's features when its feature spec (numeric inputs and window
definitions, in packed order, and its categorical inputs) is the current one; otherwise on its own
featurize output, found through its lineage, when that output is still in the store; otherwise not
at all, and the decision says why.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.engine.artifacts import MODEL_JSON, ArtifactStore
from pipeline.registry.store import CHAMPION, alias_head, decision, version

if TYPE_CHECKING:
    from pipeline.engine.stage import Stage

IDENTITY = ("featurize", "train")  # the upstream outputs that make a candidate what it is


def feature_spec(featurize_params: dict[str, Any]) -> dict[str, Any]:
    """What a model's inputs mean, from featurize's recorded params: recorded in each entry."""
    return {name: featurize_params[name] for name in ("numeric", "categorical", "windows")}


def champion_and_twin(store: ArtifactStore, model: str,
                      candidate: dict[str, str]) -> tuple[str | None, dict[str, Any] | None]:
    """(the champion's version, its entry if it is the model with these upstream fingerprints:
    the same featurize and train outputs), or (None, None) while there is no champion."""
    _, champion = alias_head(store, model, CHAMPION)
    if champion is None:
        return None, None
    entry = version(store, model, champion)
    lineage = entry.get("lineage", {})
    same = all(lineage.get(stage, {}).get("fingerprint") == candidate[stage] for stage in IDENTITY)
    return champion, entry if same else None


def opponent(store: ArtifactStore, model: str, candidate: dict[str, str]) -> str | None:
    """The version the candidate with these upstream fingerprints is judged against.

    The champion, unless the champion is this very candidate (a rerun after it was promoted):
    then the version it was judged against when it was promoted, so a rerun finds its own
    evaluation again instead of comparing the model with itself.
    """
    champion, twin = champion_and_twin(store, model, candidate)
    if twin is not None:
        judged = decision(store, model, champion)
        return judged["champion"]["version"] if judged else None
    return champion


@dataclass(frozen=True)
class ChampionPlan:
    """How to score the champion: its model folder and the features folder it reads, or why not."""

    version: str
    model_dir: str
    features: str | None = None
    categorical: tuple[str, ...] = ()
    scored_on: str | None = None
    not_scored: str | None = None


def plan(store: ArtifactStore, model: str, champion: str, current_spec: dict[str, Any],
         current_features: str, label: str, task: str, featurize: Stage) -> ChampionPlan:
    """Where the champion can be scored: on the current features, on its own (the output of
    the `featurize` stage its lineage names), or nowhere."""
    model_dir = store.registry_path(model, champion, "model")
    meta = store.read_json(posixpath.join(model_dir, MODEL_JSON))
    if (meta.get("label"), meta.get("task")) != (label, task):
        return ChampionPlan(champion, model_dir, not_scored=(
            f"it predicts {meta.get('label')} ({meta.get('task')}), the candidate {label} "
            f"({task})"))
    categorical = tuple(meta.get("categorical_columns", ()))
    entry = version(store, model, champion)
    own = store.find(featurize.name, entry.get("lineage", {}).get("featurize", {})
                     .get("cache_key", ""))
    spec = entry.get("features") or (feature_spec(own.manifest["params"]) if own else None)
    if spec is None:
        return ChampionPlan(champion, model_dir, not_scored="its feature spec is not recorded "
                            "and its featurize output is gone")
    difference = spec_difference(spec, current_spec)
    if difference is None:
        return ChampionPlan(champion, model_dir, current_features, categorical,
                            scored_on="the candidate's features")
    if own is None:
        return ChampionPlan(champion, model_dir, not_scored=(
            f"its features differ from the current ones ({difference}) and its own featurize "
            "output is no longer in the artifact store"))
    return ChampionPlan(champion, model_dir, featurize.output(own).files.data, categorical,
                        scored_on=f"its own features (featurize {own.manifest['cache_key']}; "
                                  f"{difference})")


def spec_difference(champion: dict[str, Any], current: dict[str, Any]) -> str | None:
    """None when the champion's inputs mean the same on the current features, else how not."""
    problems = []
    old = {w["name"]: w for w in champion["windows"]}
    new = {w["name"]: w for w in current["windows"]}
    if removed := [name for name in [*champion["numeric"], *old]
                   if name not in [*current["numeric"], *new]]:
        problems.append(f"current features lack {', '.join(removed)}")
    if added := [name for name in [*current["numeric"], *new]
                 if name not in [*champion["numeric"], *old]]:
        problems.append(f"current features add {', '.join(added)}")
    if changed := [name for name in old if name in new and old[name] != new[name]]:
        problems.append(f"window {', '.join(changed)} is defined differently")
    if missing := [name for name in champion["categorical"] if name not in current["categorical"]]:
        problems.append(f"current features lack categorical {', '.join(missing)}")
    if not problems and [*champion["numeric"], *old] != [*current["numeric"], *new]:
        problems.append("the packed feature order differs")
    return "; ".join(problems) or None
