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
from dataclasses import asdict
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from pipeline.core.durations import format_duration
from pipeline.core.formatting import fmt
from pipeline.core.packed import PACKED
from pipeline.core.schema import Roles
from pipeline.core.timestamps import from_us, to_us
from pipeline.core.user_code import UserCodeError
from pipeline.engine.stage import RowQuestion, Stage, StageContext, StageResult
from pipeline.features.chunks import Chunk, event_time_filter, halo_us, plan_chunks
from pipeline.features.partitions import DayPartitions
from pipeline.features.windows import WindowSpec, compute_windows
from pipeline.stages.featurize.audit_tasks import SOURCES_SHOWN, run_audit
from pipeline.stages.featurize.spec import FeaturizeFacts, FeaturizeFiles, FeaturizeParams, Job
from pipeline.stages.featurize.table import features_table, sort_rows
from pipeline.stages.validate import STAGE as VALIDATE
from pipeline.telemetry import current_span


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
    try:
        table, result = features_table(rows, sources, params, job.kernel)
    except UserCodeError as exc:  # which rows the team's function had
        raise UserCodeError(f"{exc} in featurize chunk {chunk.index} (events from "
                            f"{from_us(chunk.start_us).date()})") from exc
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
    if params.row_features:
        own = question.rows(clean, "hive").slice(0, 1).to_pylist()[0]
        for spec in params.row_features:
            inputs = ", ".join(f"{name} = {fmt(own[name])}" for name in spec.inputs)
            lines.append(f"{spec.name} = {fmt(values[spec.name])}: row feature of the row's own "
                         f"{inputs}")
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
