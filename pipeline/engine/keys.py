"""Cache keys: a stage's key from its name, code version, parameters, inputs' fingerprints and
external inputs; and the outputs a config's stages have published, found by walking their keys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipeline.core.config import PipelineConfig
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import Output, Params, Stage


@dataclass(frozen=True)
class StageKey:
    """A stage's cache key and what went into it."""

    key: str
    params: Params
    external: dict[str, str]


def stage_key(stage: Stage, config: PipelineConfig, inputs: dict[str, Output],
              store: ArtifactStore) -> StageKey:
    """hash(stage name, code version, the parameters it reads, its inputs' fingerprints, its
    external inputs)."""
    params = stage.params.from_config(config)
    external = stage.external_inputs(params, inputs, store) if stage.external_inputs else {}
    payload = {
        "stage": stage.name,
        "code": stage.code_version,
        "params": params.key_payload(),
        "inputs": {name: output.artifact.fingerprint for name, output in sorted(inputs.items())},
        "external": external,
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    return StageKey(key, params, external)


def published_outputs(config: PipelineConfig, store: ArtifactStore,
                      stages: tuple[Stage, ...],
                      until: str | None = None) -> dict[str, Output]:
    """The outputs this config's stages have published, in DAG order, up to the first missing one
    (or up to, not including, stage `until`)."""
    published: dict[str, Output] = {}
    for stage in stages:
        if stage.name == until:
            break
        key = stage_key(stage, config, {up.name: published[up.name] for up in stage.inputs},
                        store)
        artifact = store.find(stage.name, key.key)
        if artifact is None:
            break
        published[stage.name] = stage.output(artifact)
    return published
