"""Stage 1, ingest: the configured time range of the source, frozen into an immutable snapshot.

Stops: training on data that changed under you. The cache key includes a fingerprint of every source
file in range (path, size, modification stamp), so a changed or late-arriving file is a new snapshot,
and the snapshot's own content fingerprint pins every later stage to exactly these bytes.
"""

from __future__ import annotations

import hashlib
import posixpath
from datetime import datetime, timedelta

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.datasource import Partitioning

from pipeline.artifacts import arrow_filesystem
from pipeline.config import PipelineConfig
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.telemetry import worker_span


class SourceError(ValueError):
    """The source cannot be snapshotted; the message names the file and what is wrong."""


def partition_days(start: datetime, end: datetime) -> list[str]:
    """Partition values (YYYY-MM-DD) whose day overlaps [start, end)."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def source_files(config: PipelineConfig) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    """Partition pruning: only the parquet files of partitions inside the configured range."""
    dataset = config.dataset
    fs, root = fsspec.core.url_to_fs(dataset.source, **dataset.storage_options)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise SourceError(f"source {dataset.source} does not exist")
    wanted = {f"{dataset.partition}={day}" for day in partition_days(dataset.start, dataset.end)}
    files = []
    for entry in sorted(fs.ls(root, detail=False)):
        if posixpath.basename(entry.rstrip("/")) in wanted:
            files += sorted(p for p in fs.find(entry) if p.endswith(".parquet"))
    if not files:
        raise SourceError(
            f"source {dataset.source} has no parquet files in partitions "
            f"{dataset.partition}={min(wanted)}..{max(wanted)}"
        )
    return fs, root, files


def source_fingerprint(config: PipelineConfig) -> dict[str, str]:
    fs, root, files = source_files(config)
    digest = hashlib.sha256()
    for path in files:
        info = fs.info(path)
        stamp = next((info[k] for k in ("ETag", "etag", "mtime", "LastModified", "created")
                      if k in info), "")
        digest.update(f"{posixpath.relpath(path, root)}|{info.get('size')}|{stamp}\n".encode())
    return {"source": config.dataset.source, "files": str(len(files)),
            "source_fingerprint": digest.hexdigest()}


def _check_columns(fs: fsspec.AbstractFileSystem, files: list[str], wanted: list[str]) -> int:
    """Fail on a file that lacks a schema column (schema drift), naming it; return the row count."""
    rows = 0
    for path in files:
        with fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
        missing = sorted(set(wanted) - set(metadata.schema.names))
        if missing:
            raise SourceError(f"{path}: column(s) {', '.join(missing)} missing from the file "
                              "(schema drift: the config's dataset.columns expects them)")
        rows += metadata.num_rows
    return rows


def run(ctx: StageContext) -> StageResult:
    dataset = ctx.config.dataset
    fs, root, files = source_files(ctx.config)
    columns = list(dataset.columns)
    rows_in = _check_columns(fs, files, columns)
    # row order is part of the snapshot's bytes, hence of its fingerprint and every later key
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    snapshot = ray.data.read_parquet(
        files,
        filesystem=arrow_filesystem(fs),
        columns=columns,  # column projection: only what the schema declares travels on
        partitioning=Partitioning("hive", base_dir=root, filesystem=arrow_filesystem(fs)),
    )
    snapshot = snapshot.map_batches(_traced_block, fn_args=(ctx.telemetry.carrier(),),
                                    batch_format="pyarrow", batch_size=None)
    snapshot.write_parquet(posixpath.join(ctx.output, "data"),
                           filesystem=ctx.store.arrow_filesystem(), min_rows_per_file=250_000)
    rows_out, schema = _written(ctx)
    return StageResult(
        rows_in=rows_in,
        rows_out=rows_out,
        schema=schema,
        details={"source": dataset.source, "files_read": len(files),
                 "partitions": sorted({posixpath.basename(posixpath.dirname(f)) for f in files}),
                 "time_range": [dataset.start.isoformat(), dataset.end.isoformat()]},
    )


def _traced_block(block: pa.Table, carrier: dict) -> pa.Table:
    """Pass a read block through unchanged, inside a span that says how much it carried."""
    with worker_span(carrier, "ingest.read_block", {"rows": block.num_rows,
                                                    "bytes": block.nbytes}):
        return block


def _written(ctx: StageContext) -> tuple[int, dict[str, str]]:
    rows, schema = 0, {}
    for path in sorted(ctx.store.fs.find(posixpath.join(ctx.output, "data"))):
        with ctx.store.fs.open(path, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
        rows += metadata.num_rows
        schema = {f.name: str(f.type) for f in metadata.schema.to_arrow_schema()}
    return rows, schema


STAGE = Stage(
    name="ingest",
    inputs=(),
    config_sections=("dataset",),
    run=run,
    code_modules=("pipeline.stages.ingest",),
    external_inputs=source_fingerprint,
)
