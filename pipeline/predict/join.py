"""Which history rows an input row stands for: a hash join of keys over Ray tasks.

An input row stands for its event wherever the history has it: a history row with the key of a
clean input row is left out of every chunk, also of a chunk the input row is not in (a corrected
event moved to another time). One task per chunk hashes the keys of the history it reads into
buckets, one task per run of clean blocks the input's keys, and one task per bucket keeps, chunk
by chunk, the history keys the input has. No task holds every input key, and the driver none.
The key tasks read the history's key and event-time columns apart from the chunk tasks' read of
whole rows: two columns read twice, so that no chunk's history waits in the object store between
the two rounds.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.engine.exchange import refs_of, returned, runs
from pipeline.features.chunks import Chunk
from pipeline.predict.rows import HistorySource
from pipeline.predict.spec import ModelSpec
from pipeline.quality.duplicates import by_bucket, key_buckets


def history_in_input(history: HistorySource, spec: ModelSpec, as_of_us: int,
                     chunks: list[Chunk], keys: list[ray.ObjectRef],
                     rows: int) -> list[list[ray.ObjectRef]]:
    """Per chunk, the keys of the history rows it reads (event time in its halo and itself,
    before `as_of_us`) that one of the `rows` clean input rows has too (`keys`: one table of
    them per block), as one object per key bucket."""
    buckets = key_buckets(rows)
    read = _history_keys.options(num_returns=buckets)
    history_side = [read.remote(history, spec, chunk.halo_start_us,
                                min(chunk.end_us, as_of_us), buckets) for chunk in chunks]
    split = _input_keys.options(num_returns=buckets)
    input_side = [split.remote(buckets, *(keys[i] for i in run))
                  for run in runs(len(keys), rows, buckets)]
    history_side, input_side = ([refs_of(refs, buckets) for refs in side]
                                for side in (history_side, input_side))
    join = _keys_in_both.options(num_returns=len(chunks))
    found = [join.remote(len(input_side), *(refs[bucket] for refs in input_side),
                         *(refs[bucket] for refs in history_side)) for bucket in range(buckets)]
    found = [refs_of(refs, len(chunks)) for refs in found]
    return [[refs[index] for refs in found] for index in range(len(chunks))]


@ray.remote(num_cpus=1)
def _history_keys(history: HistorySource, spec: ModelSpec, start_us: int, end_us: int,
                  buckets: int) -> pa.Array | list[pa.Array]:
    """The keys of the history rows in [start_us, end_us), cut into buckets by hash."""
    keys = history.keys(spec, start_us, end_us).combine_chunks()
    return returned(by_bucket(keys, keys, buckets))


@ray.remote(num_cpus=1)
def _input_keys(buckets: int, *tables: pa.Table) -> pa.Array | list[pa.Array]:
    """The keys of a run of clean blocks, cut into buckets by hash."""
    keys = pa.concat_tables(tables).column(0).combine_chunks()
    return returned(by_bucket(keys, keys, buckets))


@ray.remote(num_cpus=1)
def _keys_in_both(inputs: int, *pieces: pa.Array) -> pa.Array | list[pa.Array]:
    """One bucket: of each chunk's history keys (the pieces after the first `inputs`), those
    among the input's keys (the first `inputs` pieces)."""
    input_keys = pa.chunked_array(pieces[:inputs], type=pieces[0].type)
    return returned([keys.filter(pc.is_in(keys, value_set=input_keys))
                     for keys in pieces[inputs:]])
