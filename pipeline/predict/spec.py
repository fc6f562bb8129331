"""The registered model's own feature spec: what `pipeline predict` computes for it.

Everything that shapes a feature value comes from the model's lineage, not from today's config:
featurize's parameters (window specs, chunk length, label delay) from the manifest of the featurize
output the model was trained on, validate's rules from the validate output before it, and the
preprocessing saved with the model. A config edited since training cannot skew what is served.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pipeline.core.schema import TableSchema
from pipeline.engine.artifacts import MANIFEST, MODEL_JSON, ArtifactStore
from pipeline.engine.code_version import user_code_version
from pipeline.registry.store import parse_reference, resolve
from pipeline.stages.featurize import FeaturizeParams
from pipeline.stages.validate import ValidateParams


@dataclass(frozen=True)
class ModelSpec:
    model: str
    version: str
    model_dir: str
    features: FeaturizeParams
    table: TableSchema
    """validate's schema and rules, as they were when the model's data was validated."""
    max_label_delay: timedelta

    @property
    def label_time_columns(self) -> set[str]:
        """Columns known only once the label is: blanked until then, optional in the input."""
        roles = self.features.roles
        return {*self.features.label_time_columns, roles.label, roles.label_available_at}

    @property
    def output_feature_columns(self) -> list[str]:
        """The model's inputs, as named columns: numeric, categorical, row features, then window
        features."""
        params = self.features
        return list(dict.fromkeys([*params.numeric, *params.categorical,
                                   *(spec.name for spec in params.row_features),
                                   *(spec.name for spec in params.windows)]))


def load_model_spec(store: ArtifactStore, reference: str,
                    user_module: str | None = None) -> ModelSpec:
    """The registry entry `reference` names, with the feature spec it was trained with; its user
    feature code found at `user_module` (the config's `features.module`)."""
    model, ref = parse_reference(reference)
    entry = resolve(store, model, ref)
    name = f"model {model} {entry['version']}"
    features = _with_user_code(
        FeaturizeParams.model_validate(_params(store, entry, "featurize", name)), user_module, name)
    validate = ValidateParams.model_validate(_params(store, entry, "validate", name))
    model_dir = posixpath.join(entry["uri"], "model")
    _check_layout(store, model_dir, features, name)
    return ModelSpec(model, entry["version"], model_dir, features, validate.table,
                     validate.max_label_delay)


def _params(store: ArtifactStore, entry: dict[str, Any], stage: str, name: str) -> dict:
    upstream = entry.get("lineage", {}).get(stage)
    if upstream is None:
        raise ValueError(f"{name} has no {stage} output in its lineage, so its features cannot "
                         "be recomputed as it was trained")
    path = posixpath.join(upstream["uri"], MANIFEST)
    if not store.fs.exists(path):
        raise ValueError(f"{name} was trained on {stage} output {upstream['uri']}, whose "
                         f"{MANIFEST} is gone: its feature spec cannot be read")
    return store.read_json(path)["params"]


def _with_user_code(features: FeaturizeParams, user_module: str | None,
                    name: str) -> FeaturizeParams:
    """The feature spec with the place of its user code, which must be the code it was trained
    with: a feature is served only by the code that computed it for training."""
    if features.user_code is None:
        return features
    if user_module is None:
        raise ValueError(f"{name} computes features with user code (version "
                         f"{features.user_code}): set features.module in the config")
    now = user_code_version(user_module)
    if now != features.user_code:
        raise ValueError(f"{name} was trained on features of user code version "
                         f"{features.user_code}, but features.module ({user_module}) is version "
                         f"{now}: predict with the code it was trained with")
    return features.model_copy(update={"user_module": user_module})


def _check_layout(store: ArtifactStore, model_dir: str, features: FeaturizeParams,
                  name: str) -> None:
    """The model's saved input layout must be the one its featurize output describes."""
    saved = store.read_json(posixpath.join(model_dir, MODEL_JSON))
    expected = {"feature_columns": features.feature_columns,
                "categorical_columns": list(features.categorical)}
    for key, columns in expected.items():
        if saved.get(key) != columns:
            raise ValueError(f"{name}: {model_dir}/{MODEL_JSON} lists {key} {saved.get(key)}, "
                             f"but its featurize output computes {columns}")
