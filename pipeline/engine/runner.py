"""The DAG runner: cache keys, manifests, atomic publish, spans and row accounting, once for all stages."""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.user_code import shipped_folders
from pipeline.engine.artifacts import Artifact, ArtifactStore
from pipeline.engine.dag import check_order, stage_by_name
from pipeline.engine.keys import StageKey, published_outputs, stage_key
from pipeline.engine.node_credentials import find_missing_credentials, remote_failure
from pipeline.engine.observer import RunObserver
from pipeline.engine.progress import progress_inbox
from pipeline.engine.provenance import git_commit, versions
from pipeline.engine.ray_cluster import ensure_ray, workers_are_local
from pipeline.engine.shared_storage import check_storage_is_shared
from pipeline.engine.stage import Output, Stage, StageContext, StageResult
from pipeline.engine.summary import RUN_ID_TIME, RunSummary, StageOutcome
from pipeline.engine.warm_imports import import_in_background
from pipeline.telemetry import REDACTED, Telemetry, TelemetrySpec, redact, redact_text


class StageFailed(RuntimeError):
    """A stage could not produce its output; the message says which stage and why."""


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime(RUN_ID_TIME) + "-" + uuid.uuid4().hex[:6]


class Runner:
    def __init__(self, config: PipelineConfig, stages: tuple[Stage, ...],
                 display: RunObserver | None = None):
        check_order(stages)
        self.config = config
        self.stages = stages
        self._planned: list[Stage] = list(stages)  # what `run` computes or finds cached
        self.store = ArtifactStore(config.artifact_root, config.storage_options)
        self.display = display or RunObserver()
        self.run_id = new_run_id()
        self._ray_start_seconds: float | None = None

    def run(self, only: str | None = None) -> RunSummary:
        """Run the whole DAG, or with `only` one stage from its predecessors' published outputs."""
        stages = [stage_by_name(only, self.stages)] if only else self.stages
        self._planned = stages
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
                                 self._ray_start_seconds, self._outcome(outcomes))
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
                ensure_ray(self.config.cluster, shipped_folders(self.config.features.module))
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

    def _outcome(self, outcomes: list[StageOutcome]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for outcome in outcomes:
            if outcome.facts is not None:
                merged.update(outcome.facts.run_outcome(self.store))
        return merged

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
    """Why a stage failed, as its root cause: a worker without storage credentials in one
    sentence that names its node; any other failure in a Ray worker as the worker's own
    exception and where it ran (Ray's text for it is the worker's whole traceback, with
    terminal escapes)."""
    credentials = find_missing_credentials(exc)
    if credentials:
        return credentials
    remote = remote_failure(exc)
    if remote is None:
        return str(exc)
    cause, where = remote
    ours = type(cause).__module__.startswith("pipeline.")  # its message says it all
    return f"{cause if ours else f'{type(cause).__name__}: {cause}'} (in {where})"
