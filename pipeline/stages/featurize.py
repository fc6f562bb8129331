"""Stage 3, featurize: clean rows → the point-in-time training table.

Stops: features computed from the future (label leakage). Every window feature of a row at time t
aggregates only values available in [t - W, t) (see `pipeline.features.windows`), and the stage
proves it on a sample with the time-travel audit (`pipeline.features.audit`) before it publishes.

Data path: one Ray task per time chunk reads that chunk's clean rows plus a lookback halo
(`pipeline.features.chunks`) from the files of those days only (`pipeline.features.partitions`),
computes the features with the numpy kernel and writes one parquet file; no rows move between
tasks. Output columns: row key, event time, label, label-available time,
entity, numeric and categorical columns as they are, one column per window feature, and `features`,
a fixed_size_list<float32> of the numeric columns then the window features (null → NaN), so the
trainer reads one tensor column instead of stacking columns per batch.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from pydantic import Field

from pipeline.core.config import Duration, PipelineConfig
from pipeline.core.durations import format_duration
from pipeline.core.formatting import fmt
from pipeline.core.packed import PACKED, pack
from pipeline.core.schema import Roles
from pipeline.core.timestamps import from_us, to_us
from pipeline.engine.stage import (
    Facts,
    Files,
    Folder,
    Params,
    RowQuestion,
    Stage,
    StageContext,
    StageResult,
)
from pipeline.features.audit import (
    PERTURBATION,
    TIME_TRAVEL,
    AuditFailed,
    BatchAudit,
    Kernel,
    SampledFile,
    audit_batch,
    plan_sample,
    read_sample,
)
from pipeline.features.chunks import Chunk, event_time_filter, halo_us, plan_chunks
from pipeline.features.partitions import DayPartitions
from pipeline.features.windows import (
    WindowResult,
    WindowSpec,
    compute_windows,
    window_specs,
)
from pipeline.stages.validate import STAGE as VALIDATE
from pipeline.telemetry import current_span

AUDIT_BATCH_SPAN = timedelta(days=14)  # a batch reads its span plus the lookback: fewer, longer
AUDIT_BATCH_ROWS = 250
MISMATCHES_SHOWN = 10  # of each check
SOURCES_SHOWN = 5


class FeaturizeParams(Params):
    roles: Roles
    windows: tuple[WindowSpec, ...]
    """The window features, resolved: entity, source column, aggregation, window, available-at."""
    numeric: list[str]
    categorical: list[str]
    label_time_columns: list[str]
    """Columns of the schema known only once the label is (the audit blanks them before then)."""
    chunk: Duration
    audit_sample: int = Field(ge=0)
    max_label_delay: Duration

    @classmethod
    def from_config(cls, config: PipelineConfig) -> FeaturizeParams:
        dataset, features = config.dataset, config.features
        return cls(roles=Roles.of(dataset), windows=tuple(window_specs(config)),
                   numeric=features.numeric, categorical=features.categorical,
                   label_time_columns=[name for name, spec in dataset.columns.items()
                                       if spec.known_at == "label"],
                   chunk=features.chunk, audit_sample=features.audit_sample,
                   max_label_delay=config.validate_.max_label_delay)

    @property
    def feature_columns(self) -> list[str]:
        """The packed column's layout: numeric passthrough columns, then window features."""
        return [*self.numeric, *(spec.name for spec in self.windows)]

    @property
    def source_columns(self) -> list[str]:
        """Columns the kernel reads from history rows (the row key orders them, and breaks ties
        for `last`)."""
        roles, specs = self.roles, self.windows
        return list(dict.fromkeys([roles.row_key, roles.event_time,
                                   *(c for s in specs for c in (*s.entity, s.available_at)),
                                   *(s.column for s in specs if s.column)]))

    @property
    def repeating_columns(self) -> list[str]:
        return list(dict.fromkeys([*(c for s in self.windows for c in s.entity),
                                   *self.categorical]))

    @property
    def passthrough_columns(self) -> list[str]:
        """The output's columns besides the features: roles, entities, the model's raw inputs."""
        roles = self.roles
        return list(dict.fromkeys([roles.row_key, roles.event_time, roles.label,
                                   roles.label_available_at,
                                   *(c for s in self.windows for c in s.entity),
                                   *self.numeric, *self.categorical]))

    @property
    def row_columns(self) -> list[str]:
        """Columns of the rows whose features are computed: what the output carries plus what
        the kernel reads."""
        return list(dict.fromkeys([*self.passthrough_columns, *self.source_columns]))


class FeaturizeFiles(Files):
    data = Folder("data")
    """One parquet file per time chunk: passthrough columns, one column per feature, the packed
    tensor (`pipeline.core.packed`)."""


class FeaturizeFacts(Facts):
    feature_columns: list[str]
    """The packed tensor's layout, in order."""
    categorical_columns: list[str]
    packed_column: str
    null_values_skipped: dict[str, int]
    audit: dict[str, Any]
    chunks: int
    chunks_with_rows: int
    chunk: str
    halo: str
    longest_window: str | None = None
    """A row this long after the first event has complete windows (None: no window features)."""


@dataclass(frozen=True)
class Job:
    """What every chunk task needs, shipped once per task."""

    clean: DayPartitions
    output: str
    filesystem: pafs.FileSystem
    params: FeaturizeParams
    kernel: Kernel
    """The window kernel: the chunks compute with it and the audit's perturbation check
    recomputes with it, so a kernel that is wrong by design cannot hide behind a second one."""


def run(ctx: StageContext[FeaturizeParams, FeaturizeFiles]) -> StageResult[FeaturizeFacts]:
    params, store = ctx.params, ctx.store
    validated = ctx.input(VALIDATE)
    clean_path = validated.files.clean
    filesystem = store.arrow_filesystem()
    with ctx.telemetry.span("featurize.plan") as span:
        clean = DayPartitions.discover(filesystem, clean_path)
        output = ctx.files.data
        store.fs.makedirs(output, exist_ok=True)
        job = Job(clean, output, filesystem, params, compute_windows)
        halo = halo_us(params.windows, params.roles.label_available_at, params.max_label_delay)
        chunks = plan_chunks(clean.days, to_us(params.chunk), halo)
        rows_in = validated.rows_out  # the clean rows
        span.set_attributes({"chunks": len(chunks), "rows": rows_in})

    # plain tasks, one per chunk: a Ray Data pipeline over the chunk list would add start-up
    # time for no gain (a chunk is already the unit of work)
    with ctx.telemetry.span("featurize.compute", {"chunks": len(chunks)}):
        task = ctx.task(featurize_chunk, "featurize.chunk")
        shared_job = ray.put(job)
        summaries = [json.loads(row["summary"]) for row in
                     ray.get([task.remote(asdict(chunk), shared_job) for chunk in chunks])]
    with ctx.telemetry.span("featurize.audit_sample"):
        audit = run_audit(job, ctx)
    return StageResult(
        rows_in=rows_in,
        rows_out=sum(s["rows"] for s in summaries),
        schema=_schema(filesystem, output),
        statistics=_statistics(summaries, params.feature_columns),
        facts=FeaturizeFacts(
            feature_columns=params.feature_columns,
            categorical_columns=list(params.categorical),
            packed_column=PACKED,
            null_values_skipped={spec.name: sum(s["skipped"].get(spec.name, 0)
                                                for s in summaries)
                                 for spec in params.windows if spec.column},
            audit=audit,
            chunks=len(chunks),
            chunks_with_rows=sum(1 for s in summaries if s["rows"]),
            chunk=format_duration(params.chunk),
            halo=format_duration(timedelta(microseconds=halo)),
            longest_window=format_duration(timedelta(microseconds=max(
                spec.window_us for spec in params.windows))) if params.windows else None,
        ),
    )


def featurize_chunk(chunk: dict[str, int], job: Job) -> dict[str, Any]:
    """One time chunk: read it and its halo, compute the features, write one parquet file."""
    chunk = Chunk(**chunk)
    params = job.params
    roles = params.roles
    clean = job.clean.between(from_us(chunk.halo_start_us).date(),
                              from_us(chunk.end_us - 1).date())
    partition = job.clean.partition
    rows = sort_rows(clean.to_table(
        columns=params.row_columns,
        filter=event_time_filter(roles.event_time, partition, chunk.start_us, chunk.end_us),
    ), roles)
    halo = sort_rows(clean.to_table(
        columns=params.source_columns,
        filter=event_time_filter(roles.event_time, partition, chunk.halo_start_us,
                                 chunk.start_us),
    ), roles)
    sources = pa.concat_tables([halo, rows.select(params.source_columns)])
    table, result = features_table(rows, sources, params, job.kernel)
    if table.num_rows:  # dictionary pages only where values repeat: faster writes
        pq.write_table(table, posixpath.join(job.output, f"part-{chunk.index:05d}.parquet"),
                       filesystem=job.filesystem, use_dictionary=params.repeating_columns)
    current_span().set_attributes({"chunk.index": chunk.index,
                                   "chunk.start": from_us(chunk.start_us).isoformat(),
                                   "rows": table.num_rows, "rows.halo": halo.num_rows})
    columns = params.feature_columns
    summary = {"rows": table.num_rows, "skipped": result.nulls_skipped,
               "columns": {name: _column_summary(table[name]) for name in columns}}
    return {"index": chunk.index, "summary": json.dumps(summary)}


def sort_rows(rows: pa.Table, roles: Roles) -> pa.Table:
    """Rows in the one order the kernel is handed them: by event time, then row key.

    The kernel's float sums depend on the order of its sources, so this order, not the layout of
    the files they came from, is what makes a feature value reproducible (`pipeline predict`
    recomputes the same values from other files)."""
    return rows.sort_by([(roles.event_time, "ascending"), (roles.row_key, "ascending")])


def features_table(rows: pa.Table, sources: pa.Table, params: FeaturizeParams,
                   kernel: Kernel = compute_windows) -> tuple[pa.Table, WindowResult]:
    """`rows` with their point-in-time features over `sources` (both in `sort_rows` order): the
    passthrough columns, one column per feature and the packed tensor."""
    result = kernel(sources, rows, params.windows, event_time=params.roles.event_time,
                    row_key=params.roles.row_key)
    columns = {name: rows[name] for name in params.passthrough_columns}
    columns.update(result.columns)
    packed = pack([columns[name] for name in params.feature_columns], rows.num_rows)
    return pa.table({**columns, PACKED: packed}), result


def run_audit(job: Job, ctx: StageContext) -> dict[str, Any]:
    """Time-travel audit of a seeded sample of output rows, one Ray task per batch of samples:
    the reference recomputation and the perturbation check (`pipeline.features.audit`)."""
    params, started = job.params, time.perf_counter()
    seed = int(ctx.cache_key[:8], 16)
    batches = plan_sample(job.filesystem, job.output, params.audit_sample, seed,
                          params.roles.event_time, AUDIT_BATCH_SPAN, AUDIT_BATCH_ROWS)
    if not params.windows:
        batches = []
    task = ctx.task(_audit_task, "featurize.audit")
    results: list[BatchAudit] = ray.get([task.remote(job, batch) for batch in batches])
    mismatches = [m for result in results for m in result.mismatches]
    compared = {TIME_TRAVEL: sum(r.time_travel for r in results),
                PERTURBATION: sum(r.perturbation for r in results)}
    if mismatches:
        raise AuditFailed(_audit_failure(mismatches, compared))
    sampled = sum(len(f.rows) for batch in batches for f in batch)
    return {"sampled": sampled, "compared": compared[TIME_TRAVEL],
            "perturbed": compared[PERTURBATION], "mismatches": 0, "seed": seed,
            "batches": len(batches), "seconds": round(time.perf_counter() - started, 3)}


def _audit_failure(mismatches: list, compared: dict[str, int]) -> str:
    by_check = {check: [m for m in mismatches if m.check == check] for check in compared}
    found = {check: len(found) for check, found in by_check.items()}
    shown = "\n  ".join(str(m) for found in by_check.values() for m in found[:MISMATCHES_SHOWN])
    return (f"time-travel audit failed: {found[TIME_TRAVEL]} of {compared[TIME_TRAVEL]} feature "
            "values recomputed from only the data that existed at each row's event time differ "
            f"from the stage's output, and {found[PERTURBATION]} of {compared[PERTURBATION]} "
            "changed when the row's own label-time values were nulled and every row not yet "
            f"available at its event time dropped (perturbation check):\n  {shown}")


def _audit_task(job: Job, files: list[SampledFile]) -> BatchAudit:
    params = job.params
    columns = [params.roles.row_key, params.roles.event_time, *(s.name for s in params.windows)]
    sample = read_sample(job.filesystem, files, columns)
    current_span().set_attributes({"files": len(files), "rows": sample.num_rows})
    return audit_batch(job.clean, sample, params.windows, params.roles,
                       set(params.label_time_columns), params.max_label_delay, job.kernel)


def _schema(fs: pafs.FileSystem, output: str) -> dict[str, str]:
    files = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(output)))
    return {f.name: str(f.type) for f in pq.read_schema(files[0], filesystem=fs)} if files else {}


def _column_summary(column: pa.ChunkedArray) -> dict[str, Any]:
    values = pc.cast(column, pa.float64())
    bounds = pc.min_max(values).as_py()
    return {"nulls": column.null_count, "sum": pc.sum(values).as_py() or 0.0,
            "min": bounds["min"], "max": bounds["max"]}


def _statistics(summaries: list[dict], columns: list[str]) -> dict[str, dict[str, Any]]:
    """Per feature over all output rows: share of nulls, mean, min and max."""
    rows = sum(s["rows"] for s in summaries)
    statistics = {}
    for name in columns:
        parts = [s["columns"][name] for s in summaries if s["rows"]]
        nulls = sum(p["nulls"] for p in parts)
        present = rows - nulls
        lows = [p["min"] for p in parts if p["min"] is not None]
        highs = [p["max"] for p in parts if p["max"] is not None]
        statistics[name] = {
            "null_share": round(nulls / rows, 6) if rows else None,
            "mean": sum(p["sum"] for p in parts) / present if present else None,
            "min": min(lows, default=None),
            "max": max(highs, default=None),
        }
    return statistics


def explain(question: RowQuestion) -> list[str]:
    """Each feature's value, its window, and the clean rows (keys, available-at) that fed it."""
    params: FeaturizeParams = question.params
    roles = params.roles
    store = question.store
    rows = question.rows(question.output.files.data)
    if rows.num_rows == 0:
        return ["featurize: no features (the row did not pass validation)"]
    values = rows.slice(0, 1).to_pylist()[0]
    t = values[roles.event_time]
    label = values[roles.label]
    lines = [f"event time t = {fmt(t)}; label {roles.label} = {fmt(label)}, available at "
             f"{fmt(values[roles.label_available_at])}" if label is not None else
             f"event time t = {fmt(t)}; label {roles.label} = null (unlabeled: history only)"]
    clean = question.input(VALIDATE).files.clean
    for spec in params.windows:
        lines.append(_window_line(store, clean, roles, spec, values, t))
    return lines


def _window_line(store, clean: str, roles: Roles, spec: WindowSpec, values: dict[str, Any],
                 t) -> str:
    start = t - spec.window
    where = (pc.field(spec.available_at) >= start) & (pc.field(spec.available_at) < t)
    for entity in spec.entity:
        where &= pc.field(entity) == values[entity]
    if spec.column:
        where &= pc.field(spec.column).is_valid()
    fed = pads.dataset(clean, filesystem=store.arrow_filesystem(), format="parquet",
                       partitioning="hive").to_table(filter=where).sort_by(spec.available_at)
    keys = fed[roles.row_key].to_pylist()
    times = fed[spec.available_at].to_pylist()
    shown = ", ".join(f"{k}@{fmt(a)}" for k, a in list(zip(keys, times))[-SOURCES_SHOWN:])
    more = f" (+{len(keys) - SOURCES_SHOWN} earlier)" if len(keys) > SOURCES_SHOWN else ""
    entity = ",".join(f"{e}={values[e]}" for e in spec.entity)
    return (f"{spec.name} = {_value_text(spec, values[spec.name])}: window [{fmt(start)}, {fmt(t)}) "
            f"of {format_duration(spec.window)} on {spec.available_at}, {entity}, from "
            f"{len(keys)} source rows: {shown or 'none'}{more}")


def _value_text(spec: WindowSpec, value: Any) -> str:
    """A feature value with its unit; "no history" spelled out (null, or 0 for a count)."""
    if value is None:
        return "null (no history in the window)"
    if spec.agg == "count" and value == 0:
        return "0 (no history in the window)"
    if spec.agg == "time_since_last":
        return f"{fmt(value)} s"
    return fmt(value)


STAGE = Stage(
    name="featurize",
    params=FeaturizeParams,
    files=FeaturizeFiles,
    facts=FeaturizeFacts,
    run=run,
    explain=explain,
    inputs=(VALIDATE,),
)
