"""The contract between the DAG runner and a stage.

A stage is a pure description (name, inputs, the config sections it reads, the modules that are its
code) plus one `run(ctx)` function that reads its input artifacts and writes into `ctx.output`.
Everything cross-cutting (cache keys, manifests, atomic publish, spans, row accounting) belongs to
the runner, so no stage can forget it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.artifacts import Artifact, ArtifactStore
    from pipeline.config import PipelineConfig
    from pipeline.telemetry import Telemetry


@dataclass
class StageContext:
    config: PipelineConfig
    store: ArtifactStore
    inputs: dict[str, Artifact]
    output: str
    """Staging directory (a path on `store.fs`) the stage writes into; published when run returns."""
    telemetry: Telemetry
    run_id: str
    cache_key: str

    def input_path(self, stage: str, *parts: str) -> str:
        return posixpath.join(self.inputs[stage].uri, *parts)


@dataclass
class StageResult:
    rows_in: int
    rows_out: int
    rows_quarantined: int = 0
    schema: dict[str, str] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    """Stage-specific facts for the manifest: quarantine reasons, audit report, metrics, version."""


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]
    config_sections: tuple[str, ...]
    run: Callable[[StageContext], StageResult]
    code_modules: tuple[str, ...]
    """Modules whose code defines this stage's output; their source is its code version."""
    external_inputs: Callable[[PipelineConfig], dict[str, str]] | None = None
    """Fingerprints of inputs that come from outside the artifact store (the source dataset)."""

    @property
    def code_version(self) -> str:
        return code_version(self.code_modules)


@cache
def code_version(modules: tuple[str, ...]) -> str:
    """Hash of the modules' syntax trees without docstrings: editing a comment is not a cache miss."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        digest.update(name.encode())
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:12]
