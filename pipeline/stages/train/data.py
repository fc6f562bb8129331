"""The train stage's data path: one Ray task per featurize part file reads it and decides each
row's split; rounds of tasks over those tables write `splits/`, fit the preprocessing on the
training split and encode each split once, the training rows in a seeded global shuffle (an
exchange of Ray tasks). Only the encoded splits become Ray Datasets."""

from __future__ import annotations

import math
import posixpath
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.exchange import PIECE_ROWS, exchange, returned, runs
from pipeline.engine.stage import StageContext
from pipeline.model.preprocessing import FitStatistics, Preprocessor
from pipeline.model.splits import SPLITS, with_splits
from pipeline.stages.featurize import FeaturizeFacts
from pipeline.stages.train.spec import TrainFiles, TrainParams


# Each pass over the rows is one round of plain Ray tasks over the part files' tables (see
# `StageContext.task`); only the encoded splits become Ray Datasets, for Ray Train to shard.
def split_rows(ctx: StageContext[TrainParams, TrainFiles], path: str,
               facts: FeaturizeFacts) -> list[ray.ObjectRef]:
    """The featurize output, one table per part file, in file then row order: only the columns
    training reads, each row with its split decided once (`split`, `reason` columns)."""
    roles = ctx.params.roles
    columns = list(dict.fromkeys([roles.row_key, roles.event_time, roles.label_available_at,
                                  roles.label, facts.packed_column, *facts.categorical_columns]))
    files = ctx.store.parquet_files(path)
    read = ctx.task(_read_with_splits, "train.read_file")
    return [read.remote(ctx.store, file, columns, ctx.params) for file in files]


def _read_with_splits(store: ArtifactStore, path: str, columns: list[str],
                      params: TrainParams) -> pa.Table:
    with store.fs.open(path, "rb") as handle:
        table = pq.read_table(handle, columns=columns)
    roles = params.roles
    return with_splits(table, event_time=roles.event_time,
                       label_available_at=roles.label_available_at, split=params.split,
                       label=roles.label)


def _in_split(batch: pa.Table, name: str) -> pa.Table:
    return batch.filter(pc.equal(batch["split"], name))


def write_splits(ctx: StageContext[TrainParams, TrainFiles], parts: list[ray.ObjectRef],
                 directory: str) -> tuple[Counter, str]:
    """Write (row key, split, reason) for every row, a numbered file per part (the same bytes on
    a rerun); return the counts per split and per reason, and the row key's type."""
    ctx.store.fs.makedirs(directory, exist_ok=True)
    write = ctx.task(_write_split_part, None)
    written = ray.get([write.remote(ctx.store, part, directory, index, ctx.params.roles.row_key)
                       for index, part in enumerate(parts)])
    counts: Counter = Counter({name: 0 for name in SPLITS})
    for part_counts, _ in written:
        counts.update(part_counts)
    return counts, written[0][1] if written else "null"


def _write_split_part(store: ArtifactStore, part: pa.Table, directory: str, index: int,
                      row_key: str) -> tuple[dict[str, int], str]:
    table = part.select([row_key, "split", "reason"])
    if table.num_rows:
        with store.fs.open(posixpath.join(directory, f"part-{index:05d}.parquet"), "wb") as sink:
            pq.write_table(table, sink)
    label = pc.coalesce(table["split"], table["reason"])
    counts = dict(zip(*(x.to_pylist() for x in pc.value_counts(label).flatten())))
    return counts, str(table.schema.field(row_key).type)


def fit_preprocessing(ctx: StageContext[TrainParams, TrainFiles], parts: list[ray.ObjectRef],
                      facts: FeaturizeFacts) -> tuple[Preprocessor, float]:
    """Standardisation and vocabularies from the training split's rows only (statistics per
    part, merged here), and the training split's mean label."""
    params = ctx.params
    label, categorical = params.roles.label, facts.categorical_columns
    statistics = ctx.task(_fit_statistics, None)
    merged = None
    for part in ray.get([statistics.remote(part, label, categorical) for part in parts]):
        if part is not None:
            merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise ValueError("the training split is empty: check split.train_until against the data")
    preprocessor = merged.finish(facts.feature_columns, categorical, label, params.train.task)
    return preprocessor, merged.label_mean


def _fit_statistics(part: pa.Table, label: str, categorical: list[str]) -> FitStatistics | None:
    train = _in_split(part, "train")
    return FitStatistics.of(train, categorical, label) if train.num_rows else None


def encode_split(ctx: StageContext[TrainParams, TrainFiles], parts: list[ray.ObjectRef],
                 name: str, preprocessor: Preprocessor,
                 shuffle: tuple[int, int, int] | None = None) -> ray.data.Dataset:
    """One split's rows, encoded once for every epoch, and shuffled when `shuffle` gives a seed,
    the split's row count and the number of training workers (see `shuffled`)."""
    encode = ctx.task(_encode_part, None)
    encoded = [encode.remote(part, name, preprocessor, ctx.params.roles.label) for part in parts]
    if shuffle is not None:
        encoded = shuffled(ctx, encoded, *shuffle)
    ray.wait(encoded, num_returns=len(encoded), fetch_local=False)  # done before fit starts
    from ray.data import from_arrow_refs  # not at the top: slow, it would delay Ray's start

    return from_arrow_refs(encoded)


def _encode_part(part: pa.Table, name: str, preprocessor: Preprocessor, label: str) -> pa.Table:
    rows = _in_split(part, name)
    missing = rows[label].null_count + int(
        pc.sum(pc.is_nan(rows[label].cast(pa.float64()))).as_py() or 0)
    if missing:
        raise ValueError(f"{missing} rows of the {name} split have no label ({label}); "
                         "validate should have quarantined them")
    return preprocessor.encode(rows)


def shuffled(ctx: StageContext, tables: list[ray.ObjectRef], seed: int, rows: int,
             workers: int) -> list[ray.ObjectRef]:
    """`tables`' rows in a seeded global shuffle, an exchange (`pipeline.engine.exchange`) as Ray Data's
    `random_shuffle` does it, without its planning: dealers over runs of consecutive tables deal
    their rows at random among the buckets; each bucket gathers its pieces from every dealer and
    permutes them. The same seed and tables give the same order.

    About sqrt(rows / PIECE_ROWS) buckets and as many dealers, so that a piece holds about
    PIECE_ROWS rows however many small tables the split comes in; at least one bucket per
    training worker (Ray Train deals the blocks among them), at most one per table.
    """
    if not tables:
        return tables
    buckets = min(len(tables), max(1, workers, math.isqrt(rows // PIECE_ROWS)))
    deals = [(buckets, (seed, index), *(tables[i] for i in run))
             for index, run in enumerate(runs(len(tables), rows, buckets, least=buckets))]
    return exchange(ctx.task(_deal, None), ctx.task(_gather_bucket, None), deals, buckets,
                    lambda bucket: ((seed, buckets + bucket),))


def _deal(buckets: int, seed: tuple[int, int], *tables: pa.Table):
    table = pa.concat_tables(tables)
    bucket = np.random.default_rng(seed).integers(buckets, size=table.num_rows)
    pieces = [table.filter(pa.array(bucket == index)) for index in range(buckets)]
    return returned(pieces)


def _gather_bucket(seed: tuple[int, int], *pieces: pa.Table) -> pa.Table:
    table = pa.concat_tables(pieces)
    return table.take(pa.array(np.random.default_rng(seed).permutation(table.num_rows)))
