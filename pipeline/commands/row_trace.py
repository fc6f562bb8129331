"""`pipeline trace ROW_KEY`: one row through every stage, each fact tagged with the artifact it came from.

It reads only published artifacts, so it explains what the pipeline *did*, not what it would do now.
Each stage explains the row from its own output (`Stage.explain`); this module only finds the
published outputs and assembles their answers. Each line starts with `[stage code-version key]`,
the stage's code version and the first characters of the cache key of the artifact it came from.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.keys import published_outputs
from pipeline.engine.stage import RowQuestion, Stage
from pipeline.stages.dag import STAGES


def trace_row(config: PipelineConfig, row_key: str, stages: tuple[Stage, ...] = STAGES) -> str:
    dataset = config.dataset
    key = typed_key(config, row_key)
    store = ArtifactStore(config.artifact_root, config.storage_options)
    published = published_outputs(config, store, stages)
    lines = [f"row {dataset.row_key}={key!r}  (config {config.name}, {config.digest()})"]
    for stage in stages:
        output = published.get(stage.name)
        if output is None:
            continue
        question = RowQuestion(dataset.row_key, key, stage.params.from_config(config), output,
                               {up.name: published[up.name] for up in stage.inputs}, store)
        manifest = output.artifact.manifest
        tag = f"[{stage.name} {manifest['code_version']} {manifest['cache_key'][:8]}]"
        lines += [f"{tag:<34} {text}" for text in stage.explain(question)]
    missing = [stage.name for stage in stages if stage.name not in published]
    if missing:
        lines.append(f"not run yet for this config: {', '.join(missing)}")
    return "\n".join(lines)


def typed_key(config: PipelineConfig, text: str) -> Any:
    """The row key as the column holds it: an integer for integer keys."""
    column = config.dataset.row_key
    if not config.dataset.columns[column].type.startswith("int"):
        return text
    try:
        return int(text)
    except ValueError:
        raise LookupError(f"{column} is an integer column; {text!r} is not an integer") from None
