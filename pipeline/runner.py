"""The DAG runner: cache keys, manifests, atomic publish, spans and row accounting, once for all stages."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.artifacts import Artifact, ArtifactStore
from pipeline.config import PipelineConfig
from pipeline.dag import STAGES, check_order, stage_by_name
from pipeline.datasets import ensure_dataset
from pipeline.node_credentials import find_missing_credentials
from pipeline.provenance import git_commit, versions
from pipeline.ray_cluster import ensure_ray, workers_are_local
from pipeline.registry import CHAMPION, alias_head
from pipeline.shared_storage import check_storage_is_shared
from pipeline.stage import Output, Params, Stage, StageContext, StageResult
from pipeline.stages.evaluate import EvaluateFacts
from pipeline.telemetry import REDACTED, Telemetry, TelemetrySpec, redact, redact_text
from pipeline.terminal.display import PlainDisplay
from pipeline.terminal.progress import progress_inbox
from pipeline.warm_imports import import_in_background


class StageFailed(RuntimeError):
    """A stage could not produce its output; the message says which stage and why."""


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "cached"
    cache_key: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    seconds: float
    artifact: str
    facts: Any = None


@dataclass
class RunSummary:
    run_id: str
    trace_id: str
    stages: list[StageOutcome]
    run_record: str
    champion: str | None = None
    """Where the evaluated model's champion alias points once the run is done."""
    ray_start_seconds: float | None = None
    """Starting or joining Ray, apart from every stage's seconds (None: no stage needed Ray)."""

    @property
    def evaluation(self) -> EvaluateFacts | None:
        """What this run's evaluation found or made (None if it did not get there)."""
        return next((s.facts for s in self.stages if isinstance(s.facts, EvaluateFacts)), None)

    @property
    def model(self) -> dict[str, Any]:
        """The registration this run's evaluation made or found (empty if it did not get there),
        with `promoted` and `champion` as they stand now: a cached evaluation's promotion may
        since have been rolled back."""
        if not self.evaluation:
            return {}
        made = self.evaluation.registration
        serves = self.champion == made.version or (made.promoted and self.champion == made.champion)
        return {**made.model_dump(), "promoted": serves, "champion": self.champion}

    @property
    def rejected(self) -> bool:
        """The run reached the gate and the champion does not serve its model (`pipeline run`
        exits 3: ran fine, not shipped)."""
        return bool(self.model) and not self.model["promoted"]

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "trace_id": self.trace_id,
            "stages": [{k: v for k, v in asdict(s).items() if k != "facts"} for s in self.stages],
            "model_version": self.model.get("version"),
            "promoted": self.model.get("promoted"),
            "rejected": self.rejected,
            "champion": self.model.get("champion"),
            "gate": {"passed": self.evaluation.decision.passed,
                     "reasons": self.evaluation.decision.reasons} if self.evaluation else None,
            "test_metrics": self.model.get("metrics", {}),
            "run_record": self.run_record,
            "ray_start_seconds": self.ray_start_seconds,
        }


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


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


class Runner:
    def __init__(self, config: PipelineConfig, echo: Callable[[str], None] = print,
                 stages: tuple[Stage, ...] = STAGES, display: PlainDisplay | None = None):
        check_order(stages)
        self.config = config
        self.stages = stages
        self._planned: list[Stage] = list(stages)  # what `run` computes or finds cached
        self.store = ArtifactStore(config.artifact_root, config.storage_options)
        self.display = display or PlainDisplay(echo)
        self.run_id = new_run_id()
        self._ray_start_seconds: float | None = None

    def run(self, only: str | None = None) -> RunSummary:
        """Run the whole DAG, or with `only` one stage from its predecessors' published outputs."""
        stages = [stage_by_name(only, self.stages)] if only else self.stages
        self._planned = stages
        if only is None or not stages[0].inputs:
            self._prepare_source()
        run_dir = self._run_dir()
        telemetry = Telemetry.start(self._telemetry_spec(run_dir))
        telemetry.span_started = self.display.phase
        self.telemetry = telemetry  # after the run, telemetry.spans() holds the run's spans
        outcomes: list[StageOutcome] = []
        record_path = self.store.run_path(self.run_id, "run.json")
        trace_id, error, started_at = "", None, datetime.now(timezone.utc)
        try:
            with telemetry.span("run", {"run.id": self.run_id, "config.name": self.config.name,
                                        "config.digest": self.config.digest()}) as root:
                trace_id = format(root.get_span_context().trace_id, "032x")
                published: dict[str, Output] = {}
                if only:
                    published = self._published_upstream(stages[0])
                for stage in stages:
                    outcome, output = self._run_stage(stage, published, telemetry, trace_id)
                    published[stage.name] = output
                    outcomes.append(outcome)
                    self.display.stage_done(outcome)
        except BaseException as exc:  # an interrupted run is recorded as failed too
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            telemetry.shutdown()
            summary = RunSummary(self.run_id, trace_id, outcomes, self.store.uri(record_path),
                                 self._champion(outcomes), self._ray_start_seconds)
            self._write_run_record(record_path, summary, run_dir, error, started_at)
        return summary

    # -- one stage ---------------------------------------------------------------------------
    def _run_stage(self, stage: Stage, upstream: dict[str, Output], telemetry: Telemetry,
                   trace_id: str) -> tuple[StageOutcome, Output]:
        inputs = {up.name: upstream[up.name] for up in stage.inputs}
        try:  # the key reads external inputs too (the source listing), which can fail
            key = stage_key(stage, self.config, inputs, self.store)
        except Exception as exc:
            raise StageFailed(f"stage {stage.name} failed: {_reason(exc)}") from exc
        if self.store.find(stage.name, key.key) is None and (
                stage.needs_ray is None or stage.needs_ray(key.params, inputs)):
            self._start_ray(telemetry, stage)
        started = time.perf_counter()
        with telemetry.span(f"stage.{stage.name}", {"stage.name": stage.name,
                                                     "stage.cache_key": key.key,
                                                     "stage.code_version": stage.code_version}) as span:
            artifact = self.store.find(stage.name, key.key) or self._compute_once(
                stage, key, inputs, telemetry, trace_id)
            status = "ran" if artifact.manifest["run_id"] == self.run_id else "cached"
            rows = artifact.manifest["rows"]
            ran = status == "ran"
            io = {"bytes.read": sum(i.artifact.manifest["bytes"] for i in inputs.values())
                  if ran else 0,
                  "bytes.written": artifact.manifest["bytes"] if ran else 0}
            span.set_attributes({"stage.status": status, "rows.in": rows["in"],
                                 "rows.out": rows["out"], "rows.quarantined": rows["quarantined"],
                                 **io})
            if ran:
                labels = {"stage": stage.name}
                telemetry.counter("pipeline.rows.processed", "rows", "rows read by a stage").add(
                    rows["in"], labels)
                telemetry.counter("pipeline.bytes.read", "By", "artifact bytes read").add(
                    io["bytes.read"], labels)
                telemetry.counter("pipeline.bytes.written", "By", "artifact bytes written").add(
                    io["bytes.written"], labels)
        output = stage.output(artifact)
        outcome = StageOutcome(stage.name, status, key.key, rows["in"], rows["out"], rows["quarantined"],
                               round(time.perf_counter() - started, 3),
                               self.store.uri(artifact.uri), output.facts)
        return outcome, output

    def _compute_once(self, stage: Stage, key: StageKey, inputs: dict[str, Output],
                      telemetry: Telemetry, trace_id: str) -> Artifact:
        """Compute under the key's lock; a concurrent run that held it may have published it."""
        def waiting(why: str) -> None:
            self.display.note(f"{stage.name:<10} waiting  ({why})")

        with self.store.compute_lock(stage.name, key.key, waiting):
            return self.store.find(stage.name, key.key) or self._compute(
                stage, key, inputs, telemetry, trace_id)

    def _start_ray(self, telemetry: Telemetry, first: Stage) -> None:
        """Start or join Ray before the first stage that computes, in its own span, so that no
        stage's time includes it; a fully cached run never starts Ray. Joined to a cluster, a
        local path that its nodes could not share is refused before any work."""
        import ray

        if not ray.is_initialized():
            # Ray's start is mostly waiting on the processes it spawns: import meanwhile what
            # the stages from `first` on import in the driver (those before it were cached: an
            # evaluate-only rerun does not import torch for a cached train)
            later = self._planned[self._planned.index(first):]
            import_in_background(m for s in later for m in s.driver_imports)
            with telemetry.span("ray.start", {"cluster.address": self.config.cluster.address
                                              or "local"}):
                started = time.perf_counter()
                ensure_ray(self.config.cluster)
                self._ray_start_seconds = round(time.perf_counter() - started, 3)
                check_storage_is_shared(self.config)

    @cached_property
    def _workers_are_local(self) -> bool:
        """Asked of Ray once per run, when the first stage computes (Ray has started by then)."""
        return workers_are_local(self.config.cluster)

    def _compute(self, stage: Stage, key: StageKey, inputs: dict[str, Output],
                 telemetry: Telemetry, trace_id: str) -> Artifact:
        if stage.resources:
            _check_resources(stage, stage.resources(key.params), local=not self.config.cluster.address)
        staging = self.store.begin(stage.name, key.key, self.run_id)
        progress = progress_inbox(local=self._workers_are_local) \
            if self.display.wants_progress and _ray_is_up() else None  # no Ray: no worker spans
        self.display.stage_running(stage.name, key.key, progress)
        started_at = datetime.now(timezone.utc)
        started = time.perf_counter()
        context = StageContext(key.params, self.store, inputs, stage.files(staging), telemetry,
                               self.run_id, key.key, key.external,
                               progress.outbox if progress else None)
        try:
            result = stage.run(context)
            if not isinstance(result.facts, stage.facts):
                raise TypeError(f"returned {type(result.facts).__name__} facts, declared "
                                f"{stage.facts.__name__}")
        except Exception as exc:
            self.store.abandon(staging)
            raise StageFailed(f"stage {stage.name} failed: {_reason(exc)}") from exc
        _check_accounting(stage.name, result)
        with telemetry.span("artifact.publish"):  # fingerprint (reads every file), manifest
            fingerprint, size = self.store.fingerprint(staging)
            manifest = self._manifest(stage, key, inputs, result, fingerprint, size, started_at,
                                      time.perf_counter() - started, trace_id)
            return self.store.publish(stage.name, key.key, staging, manifest)

    def _manifest(self, stage: Stage, key: StageKey, inputs: dict[str, Output],
                  result: StageResult, fingerprint: str, size: int, started_at: datetime,
                  seconds: float, trace_id: str) -> dict[str, Any]:
        return redact({
            "stage": stage.name,
            "cache_key": key.key,
            "code_version": stage.code_version,
            "run_id": self.run_id,
            "trace_id": trace_id,
            "inputs": {name: {"uri": self.store.uri(i.artifact.uri),
                              "fingerprint": i.artifact.fingerprint,
                              "cache_key": i.artifact.manifest["cache_key"]}
                       for name, i in inputs.items()},
            "external_inputs": key.external,
            "params": key.params.key_payload(),
            "rows": {"in": result.rows_in, "out": result.rows_out,
                     "quarantined": result.rows_quarantined},
            "schema": result.schema,
            "statistics": result.statistics,
            "details": result.facts.model_dump(mode="json"),
            "fingerprint": fingerprint,
            "bytes": size,
            "timings": {"started_at": started_at.isoformat(), "seconds": round(seconds, 3)},
            "versions": versions(),
            "git_commit": git_commit(),
        })

    def _published_upstream(self, target: Stage) -> dict[str, Output]:
        """The published outputs `target` reads, found by walking the DAG's cache keys."""
        published = published_outputs(self.config, self.store, self.stages, until=target.name)
        missing = next((s.name for s in self.stages if s.name not in published), None)
        if missing != target.name:
            raise StageFailed(
                f"stage {target.name} needs the output of {missing} for this config, and there "
                f"is none yet: run `pipeline stage {missing}` or `pipeline run` first"
            )
        return published

    def _prepare_source(self) -> None:
        """Generate the configured synthetic dataset when its source is missing."""
        dataset, generate = self.config.dataset, self.config.dataset.generate
        if generate and ensure_dataset(dataset.source, generate.kind, generate.rows, dataset.start,
                                       dataset.end, generate.seed, dataset.storage_options,
                                       generate.cancelled_share):
            self.display.note(f"generated {generate.rows:,} {generate.kind} rows at "
                              f"{dataset.source}")

    def _champion(self, outcomes: list[StageOutcome]) -> str | None:
        """Where the champion of the model this run evaluated points now."""
        facts = next((o.facts for o in outcomes if isinstance(o.facts, EvaluateFacts)), None)
        return alias_head(self.store, facts.registration.model, CHAMPION)[1] if facts else None

    # -- run record --------------------------------------------------------------------------
    def _telemetry_spec(self, run_dir: Path) -> TelemetrySpec:
        config = self.config
        attributes = {
            "run.id": self.run_id,
            "config.name": config.name,
            "config.digest": config.digest(),
            **{f"stage.{s.name}.version": s.code_version for s in self.stages},
            **config.telemetry.resource_attributes,
        }
        return TelemetrySpec(exporter=config.telemetry.exporter,
                             endpoint=config.telemetry.endpoint,
                             service_name=config.telemetry.service_name,
                             resource_attributes=attributes, run_dir=str(run_dir))

    def _recorded_config(self) -> dict[str, Any]:
        return redact(_masked_env_vars(self.config.model_dump(mode="json", by_alias=True)))

    def _run_dir(self) -> Path:
        """Local folder for this run's span and metric files (uploaded to the root at the end)."""
        if self.store.is_local:
            path = Path(self.store.run_path(self.run_id))
        else:
            path = Path.home() / ".cache" / "raypipe" / "runs" / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _write_run_record(self, record_path: str, summary: RunSummary, run_dir: Path,
                          error: str | None, started_at: datetime) -> None:
        if not self.store.is_local:
            self.store.fs.put(str(run_dir) + "/", self.store.run_path(self.run_id),
                              recursive=True)
            shutil.rmtree(run_dir, ignore_errors=True)
        finished_at = datetime.now(timezone.utc)
        self.store.write_json(record_path, {
            **summary.as_json(),
            "config": self._recorded_config(),
            "config_digest": self.config.digest(),
            "started_at": started_at.isoformat(),
            "finished_at": finished_at.isoformat(),
            "seconds": round((finished_at - started_at).total_seconds(), 3),
            "status": "failed" if error else "ok",
            "complete": error is None,
            "error": redact_text(error) if error else None,
            "versions": versions(),
            "git_commit": git_commit(),
        })
        self.store.write_json(self.store.latest_run_path(), {"run_id": self.run_id})


def _masked_env_vars(config: dict[str, Any]) -> dict[str, Any]:
    """Every runtime_env env var value masked, whatever its name: workers get credentials this
    way, and a name that does not look secret (GH_PAT) is no proof that the value is not."""
    env_vars = config.get("cluster", {}).get("runtime_env", {}).get("env_vars")
    if env_vars:
        config["cluster"]["runtime_env"]["env_vars"] = {name: REDACTED for name in env_vars}
    return config


def published_outputs(config: PipelineConfig, store: ArtifactStore,
                      stages: tuple[Stage, ...] = STAGES,
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


def _ray_is_up() -> bool:
    import ray

    return ray.is_initialized()


def _check_resources(stage: Stage, needed: dict[str, float], local: bool) -> None:
    """Fail fast, with the numbers, when a local Ray can never meet what a stage asks for at once
    (Ray Train would retry its worker group forever). A cluster may autoscale: not checked."""
    import ray

    have = ray.cluster_resources()
    short = {name: amount for name, amount in needed.items() if have.get(name, 0) < amount}
    if local and short:
        asked = ", ".join(f"{amount:g} {name}" for name, amount in needed.items())
        owned = ", ".join(f"{have.get(name, 0):g} {name}" for name in needed)
        raise StageFailed(f"stage {stage.name} needs {asked} at once (train.num_workers × "
                          f"resources per worker), the local Ray has {owned}: lower "
                          "train.num_workers or raise cluster.num_cpus")


def _check_accounting(stage: str, result: StageResult) -> None:
    if result.rows_in != result.rows_out + result.rows_quarantined:
        raise StageFailed(
            f"stage {stage} lost rows: {result.rows_in} in != {result.rows_out} out + "
            f"{result.rows_quarantined} quarantined"
        )



def _reason(exc: Exception) -> str:
    """Why a stage failed: a worker without storage credentials in one sentence that names its
    node (Ray's text for a remote failure is the worker's whole traceback)."""
    return find_missing_credentials(exc) or str(exc)
