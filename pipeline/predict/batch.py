"""Batch prediction: an event table in, the model's predictions out, with featurize's own code.

The input is read by Ray tasks (`reading`), its blocks checked against validate's rules (`rows`)
and duplicate keys found as validate finds them (`pipeline.quality.duplicates`). An exchange hands each
of featurize's time chunks (the model's chunk length, aligned to the epoch) the clean rows in it
and its lookback halo, and one task per chunk reads the halo's history from the history source,
computes the features exactly as a featurize chunk does (`featurize.features_table`: the same
kernel, window specs and halo) and applies the model's saved preprocessing and network; the driver
writes the predictions chunk by chunk, in time order (`output`). An input row stands for its
event: a history row with its key is left out of every chunk, found by a hash join (`join`).
No row key or event time of the input passes through the driver, and no task holds every input
key: their memory does not grow with the input. A small input (`predict.
score_in_driver_max_rows`) is scored by the driver instead, which imports torch while Ray starts,
so that no worker imports it for a few thousand rows: the tasks then compute features only.

A chunk's features are computed for every row known in it (history and input alike), as featurize
computes them for every clean row of its chunk, and kept for the input rows: the kernel is then
handed the same sources and rows featurize was, so a row that featurize saw gets the same bits.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.exceptions
from pydantic import TypeAdapter, ValidationError

from pipeline.core.config import PipelineConfig, Timestamp
from pipeline.core.schema import TableSchema
from pipeline.core.timestamps import from_us, to_us
from pipeline.core.user_code import shipped_folders
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.exchange import exchange, returned, runs
from pipeline.engine.ray_cluster import ensure_ray
from pipeline.engine.warm_imports import import_in_background
from pipeline.features.chunks import Chunk, chunk_starts, chunks_from, halo_us
from pipeline.features.windows import micros
from pipeline.predict.join import history_in_input
from pipeline.predict.output import OutputFile, quarantine_uri
from pipeline.predict.reading import PATH, plan_reads, read_piece
from pipeline.predict.rows import (
    HistorySource,
    check_rows,
    in_time,
    input_schema,
    known_at,
    without_keys,
)
from pipeline.predict.spec import ModelSpec, load_model_spec
from pipeline.quality.duplicates import copies_in_bucket, later_copies, split_keys
from pipeline.stages.featurize.table import features_table, sort_rows

if TYPE_CHECKING:
    from pipeline.model.predictor import Predictor  # torch

PREDICTION = "prediction"
MODEL, MODEL_VERSION = "model", "model_version"


def predict(config: PipelineConfig, reference: str, input_uri: str, output_uri: str,
            as_of: str | None = None) -> str:
    """Score `input_uri` with the model `reference` names; write the predictions to
    `output_uri` and the quarantined rows beside it; return the summary line."""
    started = time.perf_counter()
    options = config.predict.storage_options
    options = config.dataset.storage_options if options is None else options
    store = ArtifactStore(config.artifact_root, config.storage_options)
    spec = load_model_spec(store, reference, config.features.module)
    history = HistorySource(config.predict.history_source or config.dataset.source, options,
                            config.dataset.partition)
    history.check()
    predictions = OutputFile(output_uri, options)
    quarantine = OutputFile(quarantine_uri(output_uri), options)
    for target in (predictions, quarantine):  # refuse before any work
        target.check_replaceable()
    cutoff = _parse_as_of(as_of)

    import_in_background(["pipeline.model.predictor"])  # torch, while Ray starts and reads
    ensure_ray(config.cluster, shipped_folders(config.features.module))
    checked = _checked_input(input_uri, options, spec, config.dataset.partition)
    # both files name the attempt; the predictions, written last, are its commit point
    about = {"model": spec.model, "version": spec.version, "input": input_uri,
             "attempt": uuid.uuid4().hex}
    with quarantine.writer(about) as batches:
        for part in checked.quarantined:
            batches.write(ray.get(part))
        quarantined = batches.rows
    if not checked.rows:
        raise ValueError(f"no row of {input_uri} passed validation: {quarantined:,} quarantined "
                         f"(reasons in {quarantine.uri})")
    as_of_us = checked.last_us if cutoff is None else to_us(cutoff)
    job = ChunkJob(spec, history, as_of_us)
    with predictions.writer({**about, "as_of": from_us(as_of_us).isoformat(),
                             "history_source": history.uri, "quarantined": quarantined}
                            ) as batches:
        in_driver = checked.rows <= config.predict.score_in_driver_max_rows
        for table in _scored(job, store, checked, in_driver):
            batches.write(table)
        rows = batches.rows
    return (f"predicted {rows:,} rows with {spec.model} {spec.version} as of "
            f"{from_us(as_of_us).isoformat()}, {quarantined:,} quarantined, in "
            f"{time.perf_counter() - started:.1f}s: {predictions.uri} (quarantine: "
            f"{quarantine.uri})")


def _parse_as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return TypeAdapter(Timestamp).validate_python(text)
    except ValidationError:
        raise ValueError(f"--as-of {text!r} is not a time: use ISO 8601, e.g. "
                         "2026-01-15T08:00:00 (UTC when no offset is given)") from None


@dataclass(frozen=True)
class CleanRows:
    """What the driver knows of one input block's clean rows: no row, no key."""

    rows: int
    last_us: int
    """The latest event time (0 without rows)."""
    chunk_starts: np.ndarray
    """The starts of the model's chunks that hold them."""


@dataclass
class CheckedInput:
    clean: list[ray.ObjectRef]
    """Clean rows, one table per input block, in input order."""
    keys: list[ray.ObjectRef]
    """The clean rows' keys, one table per block."""
    quarantined: list[ray.ObjectRef]
    """Quarantined rows with their reasons, one table per block."""
    blocks: list[CleanRows]

    @property
    def rows(self) -> int:
        return sum(block.rows for block in self.blocks)

    @property
    def last_us(self) -> int:
        return max(block.last_us for block in self.blocks if block.rows)

    def chunks(self, spec: ModelSpec) -> list[Chunk]:
        """featurize's chunks (the model's chunk length and halo) that hold clean rows."""
        params = spec.features
        halo = halo_us(params.windows, params.roles.label_available_at, params.max_label_delay)
        starts = np.unique(np.concatenate([block.chunk_starts for block in self.blocks]))
        return chunks_from(starts, to_us(params.chunk), halo)


def _checked_input(uri: str, options: dict, spec: ModelSpec, partition: str) -> CheckedInput:
    """Read the input (`reading`) and hold each block to validate's rules. Duplicates need one
    global view: validate's distributed search (`pipeline.quality.duplicates`) over the blocks
    in input order (the first occurrence wins)."""
    fs, root = fsspec.core.url_to_fs(uri, **options)
    pieces = plan_reads(fs, root, uri, spec, least=int(ray.available_resources().get("CPU", 1)))
    rows = sum(piece.rows for piece in pieces)
    if not rows:
        raise ValueError(f"input {uri} holds no rows")
    reads = [read_piece.remote(fs, piece, partition) for piece in pieces]
    blocks = [block for block, _ in reads]
    days = sorted({day for found in ray.get([days for _, days in reads]) for day in found})
    duplicates = later_copies(_block_keys, _copies_in_bucket, blocks, rows,
                              (spec.table.row_key,))
    schema = input_schema(spec, (days[0], days[-1]) if days else None)
    chunk_us = to_us(spec.features.chunk)
    parts = [_check_block.options(num_returns=4).remote(
        block, duplicates[i], schema, spec.max_label_delay, chunk_us)
        for i, block in enumerate(blocks)]
    try:
        summaries = ray.get([part[3] for part in parts])
    except ray.exceptions.RayTaskError:
        _collect(part[i] for part in parts for i in range(3))
        raise
    clean, quarantined, keys = ([part[i] for part in parts] for i in range(3))
    return CheckedInput(clean, keys, quarantined, summaries)


def _collect(refs: Iterable[ray.ObjectRef]) -> None:
    """Read the other results of failed tasks, which Ray would otherwise log as unhandled
    errors: a failure stays one line."""
    for ref in refs:
        with contextlib.suppress(ray.exceptions.RayTaskError):
            ray.get(ref)


@ray.remote(num_cpus=1)
def _block_keys(row_key: str, buckets: int, first: int,
                *blocks: pa.Table) -> pa.Table | list[pa.Table]:
    return split_keys([block[row_key] for block in blocks], first, buckets)


_copies_in_bucket = ray.remote(num_cpus=1)(copies_in_bucket)


@ray.remote(num_cpus=1)
def _check_block(block: pa.Table, duplicates: np.ndarray, schema: TableSchema,
                 max_label_delay: timedelta,
                 chunk_us: int) -> tuple[pa.Table, pa.Table, pa.Table, CleanRows]:
    """(clean rows, quarantined rows, the clean rows' keys, what the driver needs of them);
    `duplicates`: the positions of the block's rows whose key came earlier in the input."""
    duplicate = np.zeros(block.num_rows, dtype=bool)
    duplicate[duplicates] = True
    clean, quarantined = check_rows(block, duplicate, schema, max_label_delay, PATH)
    times = micros(clean[schema.event_time])
    return clean, quarantined, clean.select([schema.row_key]), CleanRows(
        clean.num_rows, int(times.max(initial=0)), chunk_starts(times, chunk_us))


@dataclass(frozen=True)
class ChunkJob:
    """What every chunk task needs, shipped once per task."""

    spec: ModelSpec
    history: HistorySource
    as_of_us: int


def _scored(job: ChunkJob, store: ArtifactStore, checked: CheckedInput,
            in_driver: bool) -> Iterator[pa.Table]:
    """Features then predictions, one plain task per chunk, yielded in chunk order; `in_driver`:
    the tasks compute the features and the driver predicts.

    Each chunk task gets the input rows its chunk and halo hold, and only those: an exchange
    (`pipeline.engine.exchange`) whose split tasks cut runs of clean blocks by chunk window; and the keys
    of the history rows it reads that the input holds too (`join`).

    Plain tasks run on Ray's already started workers, where a Ray Data pipeline with a one-actor
    pool would plan an execution and start a new process for the model on every call.
    """
    chunks = checked.chunks(job.spec)
    windows = [(chunk.halo_start_us, chunk.end_us) for chunk in chunks]
    event_time = job.spec.features.roles.event_time
    split_args = [(event_time, windows, *(checked.clean[i] for i in run))
                  for run in runs(len(checked.clean), checked.rows, len(chunks))]

    known = history_in_input(job.history, job.spec, job.as_of_us, chunks, checked.keys,
                             checked.rows)

    def per_chunk(task, *args) -> list[ray.ObjectRef]:
        return exchange(_rows_by_chunk, ray.remote(num_cpus=1)(task), split_args, len(chunks),
                        lambda index: (asdict(chunks[index]), job, known[index], *args))

    if not in_driver:
        for ref in per_chunk(_score_chunk, store):
            yield ray.get(ref)
        return
    from pipeline.model.predictor import load_predictor

    refs = per_chunk(_features_of_chunk)
    predictor = load_predictor(store.fs, job.spec.model_dir)
    for ref in refs:
        yield _predictions(ray.get(ref), job.spec, predictor)


@ray.remote(num_cpus=1)
def _rows_by_chunk(event_time: str, windows: list[tuple[int, int]],
                   *tables: pa.Table) -> pa.Table | list[pa.Table]:
    """The rows of a run of clean blocks that each chunk reads: event time in [halo start, end)
    of the chunk (a row in a later chunk's halo goes to it too)."""
    rows = pa.concat_tables(tables)
    times = micros(rows[event_time])
    return returned([rows.filter(pa.array((times >= start) & (times < end)))
                     for start, end in windows])


def _score_chunk(chunk: dict[str, int], job: ChunkJob, known: list[ray.ObjectRef],
                 store: ArtifactStore, *nearby: pa.Table) -> pa.Table:
    from pipeline.model.predictor import load_predictor  # torch: only where a model runs

    features = _features_of_chunk(chunk, job, known, *nearby)
    predictor = load_predictor(store.fs, job.spec.model_dir) if features.num_rows else None
    return _predictions(features, job.spec, predictor)


def _features_of_chunk(chunk: dict[str, int], job: ChunkJob, known: list[ray.ObjectRef],
                       *nearby: pa.Table) -> pa.Table:
    """`known`: the history keys the input holds too (`join`); `nearby`: the input
    rows of the chunk and its halo."""
    return _chunk_features(Chunk(**chunk), job, pa.concat_tables(nearby),
                           pa.chunked_array(ray.get(known)))


def _predictions(features: pa.Table, spec: ModelSpec, predictor: Predictor | None) -> pa.Table:
    """The output rows of one chunk: keys, time, prediction, model, and the features kept."""
    roles, rows = spec.features.roles, features.num_rows
    predicted = predictor.predict(features) if rows else []
    columns = {roles.row_key: features[roles.row_key],
               roles.event_time: features[roles.event_time],
               PREDICTION: pa.array(predicted, pa.float64()),
               MODEL: pa.array([spec.model] * rows, pa.string()),
               MODEL_VERSION: pa.array([spec.version] * rows, pa.string())}
    columns.update({name: features[name] for name in spec.output_feature_columns})
    return pa.table(columns)


def _chunk_features(chunk: Chunk, job: ChunkJob, nearby: pa.Table,
                    known: pa.ChunkedArray) -> pa.Table:
    """The input rows of one chunk with their features, computed as featurize computes a chunk:
    for every row known in it, over the rows known in it and its halo (`nearby`: the input
    rows there; history rows with a key in `known` are left out)."""
    spec, params = job.spec, job.spec.features
    event_time, row_key = params.roles.event_time, params.roles.row_key
    scored = in_time(nearby, event_time, chunk.start_us, chunk.end_us)
    history = without_keys(job.history.rows(spec, chunk.halo_start_us,
                                            min(chunk.end_us, job.as_of_us)), row_key, known)
    sources = sort_rows(known_at(pa.concat_tables([history, nearby]), job.as_of_us, spec),
                        params.roles)
    rows = sort_rows(pa.concat_tables(
        [in_time(history, event_time, chunk.start_us, chunk.end_us), scored]), params.roles)
    table, _ = features_table(rows.select(params.row_columns),
                              sources.select(params.source_columns), params)
    return table.filter(pc.is_in(table[row_key], value_set=scored[row_key]))
