"""The contract between the DAG runner and a stage: typed ports.

A stage declares
- `params`: a pydantic model built from only the config it reads (`Params.from_config`). `run` is
  handed that model and never the config, and the cache key hashes it, so the key changes exactly
  when what the stage reads changes;
- `files` and `facts`: its output, a file layout (`Folder`s named once, for the writer and every
  reader) and the typed facts the manifest's `details` holds;
- `inputs`: the upstream stages it reads; their outputs arrive typed (`ctx.input(FEATURIZE)`);
- `explain`: what its own output says about one row, which `pipeline trace` assembles.

Its code version is derived, never declared: the hash of its module and of every module of the
package that module imports, transitively (`pipeline.engine.code_version`). Everything cross-cutting
(cache keys, manifests, atomic publish, spans, row accounting) belongs to the runner, so no stage
can forget it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from pipeline.engine.code_version import code_version
from pipeline.engine.node_credentials import naming_node
from pipeline.telemetry import traced

if TYPE_CHECKING:
    from pipeline.core.config import PipelineConfig
    from pipeline.engine.artifacts import Artifact, ArtifactStore
    from pipeline.telemetry import Telemetry


class Params(BaseModel):
    """What a stage reads from the config, and all it is handed of it.

    A field declared with `Field(exclude=True)` (credentials) is usable by the stage but is never
    part of the cache key or a manifest: rotating a key is not new data.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> Params:
        raise NotImplementedError(f"{cls.__name__} must say how it is built from the config")

    def key_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Facts(BaseModel):
    """A stage's typed facts about its output: the manifest's `details`, read back typed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def headline(self) -> str:
        """A few words for the stage's result line (the top quarantine reasons, ...); '' for none."""
        return ""

    def run_outcome(self, store: ArtifactStore) -> dict[str, Any]:
        """What this output means for the run as a whole, once the run is done: merged into the
        run's summary, its JSON and its run record (`rejected: true` there makes `pipeline run`
        exit 3). Most stages add nothing."""
        return {}


def top_reasons(counts: Mapping[str, int], shown: int = 3) -> str:
    """`reason count, ...` for the most frequent reasons, then how many others there are."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    words = ", ".join(f"{reason} {count:,}" for reason, count in ranked[:shown])
    return words + (f", +{len(ranked) - shown} more" if len(ranked) > shown else "")


class Folder:
    """A path below a stage's output directory, spelled once for its writer and its readers."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, files: Files | None, owner: type | None = None) -> Any:
        return self if files is None else posixpath.join(files.root, self.name)


class Files:
    """The file layout of one stage output directory; subclasses declare `Folder`s."""

    def __init__(self, root: str) -> None:
        self.root = root


P = TypeVar("P", bound=Params)
F = TypeVar("F", bound=Files)
D = TypeVar("D", bound=Facts)


@dataclass(frozen=True)
class Output(Generic[F, D]):
    """A published stage output as a downstream stage sees it: where its files are, what it says."""

    artifact: Artifact
    files: F
    facts: D

    @property
    def rows_out(self) -> int:
        return self.artifact.manifest["rows"]["out"]


@dataclass
class StageResult(Generic[D]):
    rows_in: int
    rows_out: int
    facts: D
    rows_quarantined: int = 0
    schema: dict[str, str] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext(Generic[P, F]):
    params: P
    store: ArtifactStore
    inputs: Mapping[str, Output]
    files: F
    """The staging directory's layout: what the stage writes, published when run returns."""
    telemetry: Telemetry
    run_id: str
    cache_key: str
    external: Mapping[str, str] = field(default_factory=dict)
    """The external inputs its cache key hashed (`Stage.external_inputs`): the stage works from
    these, not from a second look that could see something newer."""
    progress: Any = None
    """The outbox of the driver's progress inbox (`pipeline.engine.progress`), or None: where
    worker spans report."""

    def input(self, stage: Stage[Any, Any, Any]) -> Output:
        return self.inputs[stage.name]

    def traced(self, work: Callable, span: str | None) -> Callable:
        """`work` run in Ray (a task, a Ray Data function or class, a Train loop) inside a span
        of this stage (see `pipeline.telemetry.traced`); a node without object-storage
        credentials is named (`pipeline.engine.node_credentials`)."""
        carrier = self.telemetry.carrier()
        if self.progress is not None:
            carrier["progress"] = self.progress
        return traced(naming_node(work), span, carrier)

    def task(self, work: Callable, span: str | None) -> Any:
        """`work` as a one-CPU Ray task run inside a span of this stage. Stages use plain tasks
        over their part files rather than Ray Data where a pass is one map: a Ray Data
        execution pays for planning and start-up that a plain task does not. The tasks spread
        over the nodes: each reads its own files from shared storage, so no node holds their
        data, and a warm worker on one node must not take every short task while another
        node's CPUs wait."""
        import ray

        return ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(self.traced(work, span))


@dataclass(frozen=True)
class RowQuestion:
    """`pipeline trace`'s question to one stage: what does your output say about this row?"""

    key_column: str
    key: Any
    params: Params
    output: Output
    inputs: Mapping[str, Output]
    store: ArtifactStore

    def input(self, stage: Stage[Any, Any, Any]) -> Output:
        return self.inputs[stage.name]

    def where(self) -> pc.Expression:
        """The filter that picks this row out of a table."""
        return pc.field(self.key_column) == self.key

    def rows(self, path: str, partitioning: str | None = None) -> pa.Table:
        """Every copy of this row in the parquet file or folder at `path` of the store."""
        import pyarrow.dataset as pads

        return pads.dataset(path, filesystem=self.store.arrow_filesystem(), format="parquet",
                            partitioning=partitioning).to_table(filter=self.where())


@dataclass(frozen=True, eq=False)
class Stage(Generic[P, F, D]):
    name: str
    params: type[P]
    files: type[F]
    facts: type[D]
    run: Callable[[StageContext[P, F]], StageResult[D]]
    explain: Callable[[RowQuestion], list[str]]
    inputs: tuple[Stage[Any, Any, Any], ...] = ()
    external_inputs: Callable[[P, Mapping[str, Output], ArtifactStore], dict[str, str]] | None = None
    """Fingerprints of what the stage reads besides its upstream outputs (the source dataset, the
    registry's champion), given its params, its upstream outputs and the artifact store."""
    resources: Callable[[P], dict[str, float]] | None = None
    """Ray resources the stage needs at once (train's worker group), checked before it starts."""
    driver_imports: tuple[str, ...] = ()
    """Modules that take seconds to import and that the stage imports in the driver (torch):
    imported in the background while Ray starts (`pipeline.engine.warm_imports`)."""
    needs_ray: Callable[[P, Mapping[str, Output]], bool] | None = None
    """Whether computing the stage with these params and upstream outputs uses Ray (None:
    always). The runner starts or joins Ray only before a stage that does: an evaluate that
    scores a small test period in the driver runs without it."""

    @property
    def code_version(self) -> str:
        return code_version(self.run.__module__, self.upstream_modules)

    @property
    def upstream_modules(self) -> frozenset[str]:
        """The modules of every stage this one reads from, directly or not."""
        return frozenset(m for up in self.inputs for m in (up.run.__module__,
                                                            *up.upstream_modules))

    def output(self, artifact: Artifact) -> Output[F, D]:
        return Output(artifact, self.files(artifact.uri),
                      self.facts.model_validate(artifact.manifest["details"]))
