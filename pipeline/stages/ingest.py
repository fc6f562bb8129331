"""Stage 1, ingest: the configured time range of the source, frozen into an immutable snapshot.

Stops: training on data that changed under you. The cache key includes a fingerprint of every source
file in range (path, size, modification stamp), so a changed or late-arriving file is a new snapshot,
and the snapshot's own content fingerprint pins every later stage to exactly these bytes.

How: the driver lists the partitions in range and checks every file's footer (a bad file fails
here, named, before anything is written); Ray tasks then copy consecutive groups of files, the
declared columns only, into numbered part files. Plain pyarrow in a few large tasks: Ray Data's
per-file and per-execution start-up cost more than the copy itself (see benchmarks/ingest.py).
"""

from __future__ import annotations

import hashlib
import posixpath
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from pydantic import Field

from pipeline.core.config import PipelineConfig, Timestamp
from pipeline.core.formatting import row_text
from pipeline.engine.artifacts import arrow_filesystem
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
from pipeline.telemetry import current_span


class IngestParams(Params):
    source: str
    storage_options: dict = Field(default_factory=dict, exclude=True)
    partition: str
    start: Timestamp
    end: Timestamp
    columns: dict[str, str]
    """Declared column name → type: what the snapshot projects and checks each file against."""

    @classmethod
    def from_config(cls, config: PipelineConfig) -> IngestParams:
        dataset = config.dataset
        return cls(source=dataset.source, storage_options=dataset.storage_options,
                   partition=dataset.partition, start=dataset.start, end=dataset.end,
                   columns={name: spec.type for name, spec in dataset.columns.items()})


class IngestFiles(Files):
    data = Folder("data")


class IngestFacts(Facts):
    source: str
    files_read: int
    partitions: list[str]
    time_range: list[str]


GROUP_BYTES = 32 * 2**20
"""Uncompressed source bytes per copy task and snapshot part (about: a file is never split)."""
_FOOTER_READERS = 16
_BATCH_ROWS = 131_072


class SourceError(ValueError):
    """The source cannot be snapshotted; the message names the file and what is wrong."""


def partition_days(start: datetime, end: datetime) -> list[str]:
    """Partition values (YYYY-MM-DD) whose day overlaps [start, end)."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def source_files(params: IngestParams) -> tuple[fsspec.AbstractFileSystem, str, list[str]]:
    """Partition pruning: only the parquet files of partitions inside the configured range.

    Each way a source can hold nothing to read is its own SourceError, saying what was found."""
    dataset, source = params, params.source
    fs, root = fsspec.core.url_to_fs(source, **dataset.storage_options)
    root = root.rstrip("/")
    if not fs.isdir(root):
        state = "is a file, not a folder of partitions" if fs.exists(root) else "does not exist"
        raise SourceError(f"source {source} {state} (dataset.source)")
    folders = sorted(posixpath.basename(e["name"].rstrip("/"))
                     for e in fs.ls(root, detail=True) if e["type"] == "directory")
    prefix = f"{dataset.partition}="
    partitions = [name for name in folders if name.startswith(prefix)]
    if not partitions:
        others = sorted({name.split("=", 1)[0] + "=..." for name in folders if "=" in name})
        if others:
            raise SourceError(f"source {source} has no {prefix}... folders (dataset.partition "
                              f"is {dataset.partition!r}); it has {', '.join(others)} folders")
        if not any(path.endswith(".parquet") for path in fs.find(root)):
            raise SourceError(f"source {source} holds no parquet files (dataset.source)")
        raise SourceError(f"source {source} holds parquet files but no {prefix}... folders; "
                          "ingest reads hive-partitioned parquet (dataset.partition)")
    days = partition_days(dataset.start, dataset.end)
    in_range = [name for name in partitions if name.removeprefix(prefix) in days]
    if not in_range:
        raise SourceError(f"source {source} has no partition in {prefix}{days[0]}..{days[-1]} "
                          f"(dataset.start, dataset.end); it holds {partitions[0]}.."
                          f"{partitions[-1].removeprefix(prefix)}")
    files = [path for name in in_range for path in sorted(fs.find(f"{root}/{name}"))
             if path.endswith(".parquet")]
    if not files:
        raise SourceError(f"source {source} has no parquet files in partitions "
                          f"{in_range[0]}..{in_range[-1].removeprefix(prefix)}")
    return fs, root, files


def source_fingerprint(params: IngestParams) -> dict[str, str]:
    fs, root, files = source_files(params)
    digest = hashlib.sha256()
    for path in files:
        info = fs.info(path)
        stamp = next((info[k] for k in ("ETag", "etag", "mtime", "LastModified", "created")
                      if k in info), "")
        digest.update(f"{posixpath.relpath(path, root)}|{info.get('size')}|{stamp}\n".encode())
    return {"source": params.source, "files": str(len(files)),
            "source_fingerprint": digest.hexdigest()}


def _check_columns(fs: fsspec.AbstractFileSystem, files: list[str],
                   declared: dict[str, str]) -> tuple[int, pa.Schema, list[int]]:
    """Fail before anything is written, naming the file and column: a file that is not parquet,
    lacks a schema column (schema drift), types a column differently from another file (a time
    zone included), or holds a kind that cannot be read as the declared type. Return the row
    count (0 is an error), the snapshot's schema (the declared columns as the files type them)
    and each file's uncompressed size from its footer. Footers are read by a thread pool through
    Arrow's filesystem (native reads locally; on object storage each one is a round trip), and
    each is dropped once read: only the declared columns' types and two counts stay, so no
    footer outlives its read."""
    kinds = {"int": pa.types.is_integer, "float": lambda t: pa.types.is_floating(t)
             or pa.types.is_integer(t), "string": lambda t: pa.types.is_string(t)
             or pa.types.is_large_string(t), "bool": pa.types.is_boolean,
             "timestamp": lambda t: pa.types.is_timestamp(t) or pa.types.is_integer(t)}

    source = arrow_filesystem(fs)

    def footer(path: str) -> tuple[dict[str, pa.DataType], int, int]:
        """The types of the declared columns the file has, its rows and uncompressed bytes."""
        try:
            with source.open_input_file(path) as handle:
                metadata = pq.ParquetFile(handle).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{path}: not a readable parquet file ({exc})") from None
        schema = metadata.schema.to_arrow_schema()
        return ({name: schema.field(name).type for name in declared if name in schema.names},
                metadata.num_rows,
                sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)))

    with ThreadPoolExecutor(max_workers=_FOOTER_READERS) as pool:
        footers = list(pool.map(footer, files))
    rows, seen = 0, {}  # column -> (type, file) where it was first typed
    for path, (types, file_rows, _) in zip(files, footers):
        missing = sorted(set(declared) - set(types))
        if missing:
            raise SourceError(f"{path}: column(s) {', '.join(missing)} missing from the file "
                              "(schema drift: the config's dataset.columns expects them)")
        for name in declared:
            kind = types[name]
            if pa.types.is_null(kind):  # an all-null column reads as any type
                continue
            if not kinds[declared[name].rstrip("0123456789")](kind):
                raise SourceError(f"{path}: column {name!r} is {kind}, which cannot be read as "
                                  f"its declared type {declared[name]} (dataset.columns)")
            first_kind, first_path = seen.setdefault(name, (kind, path))
            if kind != first_kind:
                raise SourceError(f"{path}: column {name!r} is {kind}, but {first_kind} in "
                                  f"{first_path} (schema drift between source files)")
        rows += file_rows
    if rows == 0:
        raise SourceError(f"source files in range hold 0 rows (all {len(files)} under "
                          f"{posixpath.commonpath(files)} are empty): nothing to snapshot")
    sizes = [size for _, _, size in footers]
    return rows, pa.schema([(name, seen.get(name, (pa.null(),))[0]) for name in declared]), sizes


def file_groups(sizes: list[int]) -> list[slice]:
    """Consecutive runs of the (sorted) file list, one Ray task and one snapshot part each, of
    about GROUP_BYTES of uncompressed data: a task's start-up is paid per tens of megabytes
    rather than per file, the parts keep source order, and the snapshot is the same bytes
    however many CPUs were free when it was taken (its fingerprint, and every key after it,
    with it)."""
    total = sum(sizes)
    count = max(1, min(len(sizes), -(-total // GROUP_BYTES)))
    share, groups, start, filled = total / count, [], 0, 0
    for index, size in enumerate(sizes):
        filled += size
        if filled >= share * (len(groups) + 1) and len(groups) < count - 1:
            groups.append(slice(start, index + 1))
            start = index + 1
    groups.append(slice(start, len(sizes)))
    return [group for group in groups if group.start < group.stop]


def run(ctx: StageContext[IngestParams, IngestFiles]) -> StageResult[IngestFacts]:
    params, store = ctx.params, ctx.store
    with ctx.telemetry.span("ingest.list") as span:
        fs, _, files = source_files(params)
        span.set_attribute("files", len(files))
    with ctx.telemetry.span("ingest.check_footers", {"files": len(files)}):
        rows_in, schema, sizes = _check_columns(fs, files, params.columns)
    store.fs.makedirs(ctx.files.data, exist_ok=True)
    groups = file_groups(sizes)
    with ctx.telemetry.span("ingest.copy", {"tasks": len(groups)}):  # waits for workers too
        copy = ctx.task(_copy_files, "ingest.copy_files")
        written = ray.get([copy.remote(fs, files[group], schema, store, ctx.files.data, index)
                           for index, group in enumerate(groups)])
    return StageResult(
        rows_in=rows_in,
        rows_out=sum(written),
        schema={field.name: str(field.type) for field in schema},
        facts=IngestFacts(
            source=params.source, files_read=len(files),
            partitions=sorted({posixpath.basename(posixpath.dirname(f)) for f in files}),
            time_range=[params.start.isoformat(), params.end.isoformat()]),
    )


def _copy_files(fs: fsspec.AbstractFileSystem, files: list[str], schema: pa.Schema, store,
                directory: str, index: int) -> int:
    """Stream the declared columns of `files`, in order, into the snapshot's part `index`.
    Batches are buffered up to _BATCH_ROWS rows per row group, so a task holds about one row
    group at a time and many small source files still make a few large row groups (a row group
    per source batch would give every small file its own tiny group, slow to write and to read).
    Files are read through Arrow's own filesystem (native I/O locally, fsspec elsewhere)."""
    rows, pending, pending_rows = 0, [], 0
    source = arrow_filesystem(fs)
    path = posixpath.join(directory, f"part-{index:05d}.parquet")
    with store.fs.open(path, "wb") as sink, pq.ParquetWriter(sink, schema) as writer:
        def flush() -> None:
            nonlocal pending, pending_rows
            if pending:
                writer.write_table(pa.Table.from_batches(pending).cast(schema),
                                   row_group_size=_BATCH_ROWS)
            pending, pending_rows = [], 0

        for name in files:
            with source.open_input_file(name) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=_BATCH_ROWS,
                                                                 columns=schema.names):
                    batch = batch.select(schema.names)
                    if pending and batch.schema != pending[0].schema:
                        flush()  # all-null columns type differently per file: cast per group
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    rows += batch.num_rows
                    if pending_rows >= _BATCH_ROWS:
                        flush()
        flush()
    current_span().set_attributes({"files": len(files), "rows": rows, "part": index})
    return rows


def explain(question: RowQuestion) -> list[str]:
    """The row as the snapshot froze it (every copy: duplicates are validate's business)."""
    files: IngestFiles = question.output.files
    rows = question.rows(files.data)
    if not rows.num_rows:
        raise LookupError(f"{question.key_column}={question.key!r} is not in the snapshot of "
                          f"{question.params.source} between {question.params.start.date()} and "
                          f"{question.params.end.date()}")
    return [f"source holds: {row_text(row)}" for row in rows.to_pylist()]


STAGE = Stage(
    name="ingest",
    params=IngestParams,
    files=IngestFiles,
    facts=IngestFacts,
    run=run,
    explain=explain,
    external_inputs=lambda params, _inputs, _store: source_fingerprint(params),
)
