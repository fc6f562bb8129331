"""Stage 3, featurize: clean rows → the point-in-time training table.

Stops: features computed from the future (label leakage). Every window feature of a row at time t
aggregates only values available in [t - W, t) (see `pipeline.features.windows`), and the stage
proves it on a sample with the time-travel audit (`pipeline.features.audit`) before it publishes.

Data path: one Ray Data task per time chunk reads that chunk's clean rows plus a lookback halo
(`pipeline.features.chunks`), computes the features with the numpy kernel and writes one parquet
file; no rows move between tasks. Output columns: row key, event time, label, label-available time,
entity, numeric and categorical columns as they are, one column per window feature, and `features`,
a fixed_size_list<float32> of the numeric columns then the window features (null → NaN), so the
trainer reads one tensor column instead of stacking columns per batch.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from pipeline.config import PipelineConfig
from pipeline.durations import format_duration
from pipeline.features.audit import (
    AuditFailed,
    SampledFile,
    audit_batch,
    plan_sample,
    read_sample,
)
from pipeline.features.chunks import EPOCH, Chunk, event_time_filter, halo_us, plan_chunks
from pipeline.features.windows import WindowSpec, compute_windows, window_specs
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.telemetry import worker_span

PACKED = "features"
AUDIT_BATCH_SPAN = timedelta(days=14)  # a batch reads its span plus the lookback: fewer, longer
AUDIT_BATCH_ROWS = 250
MISMATCHES_SHOWN = 10


@dataclass(frozen=True)
class Job:
    """What every chunk task needs, shipped once per task."""

    clean: pads.Dataset
    partition: str
    output: str
    filesystem: pafs.FileSystem
    config: PipelineConfig
    specs: tuple[WindowSpec, ...]

    @property
    def feature_columns(self) -> list[str]:
        """The packed column's layout: numeric passthrough columns, then window features."""
        return [*self.config.features.numeric, *(spec.name for spec in self.specs)]

    @property
    def source_columns(self) -> list[str]:
        """Columns the kernel reads from halo rows (the row key only to break ties for `last`)."""
        dataset = self.config.dataset
        ties = [dataset.row_key] if any(s.agg == "last" for s in self.specs) else []
        return list(dict.fromkeys([*ties, dataset.event_time,
                                   *(c for s in self.specs for c in (*s.entity, s.available_at)),
                                   *(s.column for s in self.specs if s.column)]))

    @property
    def repeating_columns(self) -> list[str]:
        return list(dict.fromkeys([*(c for s in self.specs for c in s.entity),
                                   *self.config.features.categorical]))

    @property
    def row_columns(self) -> list[str]:
        """Columns of a chunk's own rows: what the output carries plus what the kernel reads."""
        dataset, features = self.config.dataset, self.config.features
        return list(dict.fromkeys([dataset.row_key, dataset.event_time, dataset.label,
                                   dataset.label_available_at,
                                   *(c for s in self.specs for c in s.entity),
                                   *features.numeric, *features.categorical,
                                   *self.source_columns]))


def run(ctx: StageContext) -> StageResult:
    config, store = ctx.config, ctx.store
    specs = tuple(window_specs(config))
    clean_path = ctx.input_path("validate", "clean")
    filesystem = store.arrow_filesystem()
    partition, days = _day_partitions(filesystem, clean_path)
    clean = pads.dataset(clean_path, format="parquet", filesystem=filesystem,
                         partitioning=pads.partitioning(pa.schema([(partition, pa.string())]),
                                                        flavor="hive"))
    output = posixpath.join(ctx.output, "data")
    store.fs.makedirs(output, exist_ok=True)
    job = Job(clean, partition, output, filesystem, config, specs)
    _check_names(job)
    halo = halo_us(specs, config.dataset.label_available_at, config.validate_.max_label_delay)
    chunks = plan_chunks(days, config.features.chunk // timedelta(microseconds=1), halo)

    carrier = ctx.telemetry.carrier()
    summaries = [json.loads(row["summary"]) for row in ray.data.from_items(
        [asdict(chunk) for chunk in chunks], override_num_blocks=len(chunks),
    ).map(featurize_chunk, fn_kwargs={"job": job, "carrier": carrier}).take_all()] \
        if chunks else []
    audit = run_audit(job, ctx.cache_key, carrier)
    return StageResult(
        rows_in=clean.count_rows(),
        rows_out=sum(s["rows"] for s in summaries),
        schema=_schema(filesystem, output),
        statistics=_statistics(summaries, job.feature_columns),
        details={
            "feature_columns": job.feature_columns,
            "categorical_columns": list(config.features.categorical),
            "null_values_skipped": {spec.name: sum(s["skipped"].get(spec.name, 0)
                                                   for s in summaries)
                                    for spec in specs if spec.column},
            "audit": audit,
            "chunks": len(chunks),
            "chunks_with_rows": sum(1 for s in summaries if s["rows"]),
            "chunk": format_duration(config.features.chunk),
            "halo": format_duration(timedelta(microseconds=halo)),
            "data": "data/",
        },
    )


def featurize_chunk(chunk: dict[str, int], job: Job, carrier: dict) -> dict[str, Any]:
    """One time chunk: read it and its halo, compute the features, write one parquet file."""
    chunk = Chunk(**chunk)
    dataset = job.config.dataset
    start = (EPOCH + timedelta(microseconds=chunk.start_us)).isoformat()
    with worker_span(carrier, "featurize.chunk",
                     {"chunk.index": chunk.index, "chunk.start": start}) as span:
        rows = job.clean.to_table(
            columns=job.row_columns,
            filter=event_time_filter(dataset.event_time, job.partition, chunk.start_us,
                                     chunk.end_us),
        ).sort_by([(dataset.event_time, "ascending"), (dataset.row_key, "ascending")])
        halo = job.clean.to_table(
            columns=job.source_columns,
            filter=event_time_filter(dataset.event_time, job.partition, chunk.halo_start_us,
                                     chunk.start_us),
        )
        sources = pa.concat_tables([halo, rows.select(job.source_columns)])
        result = compute_windows(sources, rows, job.specs, event_time=dataset.event_time,
                                 row_key=dataset.row_key)
        table = training_table(rows, result.columns, job)
        if table.num_rows:  # dictionary pages only where values repeat: 2x faster writes
            pq.write_table(table, posixpath.join(job.output, f"part-{chunk.index:05d}.parquet"),
                           filesystem=job.filesystem, use_dictionary=job.repeating_columns)
        span.set_attributes({"rows": table.num_rows, "rows.halo": halo.num_rows})
    summary = {"rows": table.num_rows, "skipped": result.nulls_skipped,
               "columns": {name: _column_summary(table[name]) for name in job.feature_columns}}
    return {"index": chunk.index, "summary": json.dumps(summary)}


def training_table(rows: pa.Table, features: dict[str, pa.Array], job: Job) -> pa.Table:
    """The output rows: passthrough columns, one column per feature, and the packed tensor."""
    dataset, config = job.config.dataset, job.config.features
    passthrough = dict.fromkeys([dataset.row_key, dataset.event_time, dataset.label,
                                 dataset.label_available_at,
                                 *(c for s in job.specs for c in s.entity),
                                 *config.numeric, *config.categorical])
    columns = {name: rows[name] for name in passthrough}
    columns.update(features)
    matrix = np.column_stack([
        pc.fill_null(pc.cast(columns[name], pa.float32()), np.nan).to_numpy()
        for name in job.feature_columns
    ]) if job.feature_columns else np.zeros((rows.num_rows, 0), np.float32)
    packed = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()),
                                               len(job.feature_columns))
    return pa.table({**columns, PACKED: packed})


def run_audit(job: Job, cache_key: str, carrier: dict) -> dict[str, Any]:
    """Time-travel audit of a seeded sample of output rows, one Ray task per batch of samples."""
    config, started = job.config, time.perf_counter()
    seed = int(cache_key[:8], 16)
    batches = plan_sample(job.filesystem, job.output, config.features.audit_sample, seed,
                          config.dataset.event_time, AUDIT_BATCH_SPAN, AUDIT_BATCH_ROWS)
    if not job.specs:
        batches = []
    task = ray.remote(num_cpus=1)(_audit_task)
    results = ray.get([task.remote(job, batch, carrier) for batch in batches])
    mismatches = [m for found, _ in results for m in found]
    compared = sum(count for _, count in results)
    if mismatches:
        shown = "\n  ".join(str(m) for m in mismatches[:MISMATCHES_SHOWN])
        raise AuditFailed(
            f"time-travel audit failed: {len(mismatches)} of {compared} recomputed feature values "
            f"differ from the stage's output (recomputed from only the data that existed at each "
            f"row's event time):\n  {shown}")
    sampled = sum(len(f.rows) for batch in batches for f in batch)
    return {"sampled": sampled, "compared": compared, "mismatches": 0, "seed": seed,
            "batches": len(batches), "seconds": round(time.perf_counter() - started, 3)}


def _audit_task(job: Job, files: list[SampledFile], carrier: dict) -> tuple[list, int]:
    with worker_span(carrier, "featurize.audit", {"files": len(files)}) as span:
        dataset = job.config.dataset
        columns = [dataset.row_key, dataset.event_time, *(s.name for s in job.specs)]
        sample = read_sample(job.filesystem, files, columns)
        span.set_attributes({"rows": sample.num_rows})
        return audit_batch(job.clean, job.partition, sample, job.specs, job.config)


def _day_partitions(fs: pafs.FileSystem, path: str) -> tuple[str, list[date]]:
    """The hive partition column of the clean rows and the UTC days it holds."""
    names = [info.base_name for info in fs.get_file_info(pafs.FileSelector(path))
             if info.type == pafs.FileType.Directory and "=" in info.base_name]
    if not names:
        return "day", []
    partition = names[0].split("=", 1)[0]
    return partition, sorted(date.fromisoformat(name.split("=", 1)[1]) for name in names)


def _schema(fs: pafs.FileSystem, output: str) -> dict[str, str]:
    files = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(output)))
    return {f.name: str(f.type) for f in pq.read_schema(files[0], filesystem=fs)} if files else {}


def _check_names(job: Job) -> None:
    taken = set(job.config.dataset.columns) | {PACKED}
    clashes = [spec.name for spec in job.specs if spec.name in taken]
    if clashes:
        raise ValueError(f"feature names {clashes} clash with a column or with {PACKED!r}; "
                         "give them another `name` in features.windows")


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


STAGE = Stage(
    name="featurize",
    inputs=("validate",),
    config_sections=("dataset", "validate", "features"),
    run=run,
    code_modules=("pipeline.stages.featurize", "pipeline.features.windows",
                  "pipeline.features.chunks", "pipeline.features.audit",
                  "pipeline.features.reference"),
)
