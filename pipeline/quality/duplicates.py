"""Duplicate row keys found over Ray tasks, without the keys passing through the driver.

A row whose key was seen earlier in the table is a duplicate; the first occurrence (first input,
then row order) is kept, so the result is deterministic. The search is a hash partition of the key
column (`pipeline.engine.exchange`): tasks over runs of inputs split their (input, row, key) triples into
buckets by a hash of the key, one task per bucket finds the later copies, and only their positions
come back to the driver: its memory does not grow with the table. Buckets hold about
`KEYS_PER_BUCKET` keys each, so neither does a bucket task's.

Validate reads its inputs' keys from the snapshot's files, predict from the blocks its tasks read;
both search with `later_copies`, splitting with `split_keys` and merging with `copies_in_bucket`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from pipeline.engine.exchange import exchange, returned, runs

KEYS_PER_BUCKET = 1_000_000
"""A bucket's keys, hashed in one table: pandas' `duplicated` slows per key once the table
outgrows the CPU's cache (each probe then misses it), so large inputs are split into buckets."""
MAX_BUCKETS = 256  # runs x buckets objects pass through the object store


def key_buckets(rows: int, least: int = 1) -> int:
    """How many buckets `rows` keys are hashed into: about `KEYS_PER_BUCKET` each, at least
    `least`, at most `MAX_BUCKETS`."""
    return max(1, least, min(-(-rows // KEYS_PER_BUCKET), MAX_BUCKETS))


def _bucket_of(keys: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Each key's bucket: the same key gets the same bucket in every task and process."""
    return pd.util.hash_array(keys.to_numpy(zero_copy_only=False)) % buckets


def by_bucket(values, keys: pa.Array | pa.ChunkedArray, buckets: int) -> list:
    """`values` (a table or an array) cut into `buckets` by the bucket of each row's key."""
    bucket = _bucket_of(keys, buckets)
    return [values.filter(pa.array(bucket == b)) for b in range(buckets)]


def split_keys(keys: Sequence[pa.Array | pa.ChunkedArray], first: int,
               buckets: int) -> pa.Table | list[pa.Table]:
    """The (input, row, key) triples of a run of inputs' key columns (input indices from
    `first`), split into `buckets` by a hash of the key (one table when `buckets` is 1)."""
    triples = pa.concat_tables([
        pa.table({"input": pa.array(np.full(len(column), index, np.int32)),
                  "row": pa.array(np.arange(len(column), dtype=np.int64)),
                  "key": column})
        for index, column in enumerate(keys, start=first)])
    return returned(by_bucket(triples, triples["key"], buckets))


def copies_in_bucket(*parts: pa.Table) -> pa.Table:
    """(input, row) of every key's copies after its first, over one bucket of every input: the
    parts come in input order, each in row order, so their concatenation is in table order."""
    rows = pa.concat_tables(parts)
    later = pd.Series(rows["key"].to_numpy(zero_copy_only=False)).duplicated(keep="first")
    return rows.filter(pa.array(later.to_numpy())).select(["input", "row"])


def later_copies(split, merge, inputs: Sequence, rows: int,
                 leading: tuple = ()) -> list[np.ndarray]:
    """Per input, the sorted row positions of keys seen earlier in the table of `rows` rows.

    `split.remote(*leading, buckets, first, *run)` returns `split_keys` of a run of `inputs`
    (file paths, object refs: whatever `split` reads keys from); `merge` is a Ray task running
    `copies_in_bucket`.
    """
    cpus = int(ray.available_resources().get("CPU", 1))
    buckets = key_buckets(rows, least=min(len(inputs), cpus))
    split_args = [(*leading, buckets, int(run[0]), *(inputs[i] for i in run))
                  for run in runs(len(inputs), rows, buckets, least=cpus)]
    found = pa.concat_tables(ray.get(exchange(split, merge, split_args, buckets)))
    where, positions = found["input"].to_numpy(), found["row"].to_numpy()
    return [np.sort(positions[where == i]) for i in range(len(inputs))]
