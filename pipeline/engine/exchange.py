"""An all-to-all exchange in two rounds of Ray tasks, as a shuffle or a hash partition does it.

Each split task takes a run of consecutive inputs and cuts their rows into `buckets` pieces; each
merge task gathers one bucket's piece from every split task, in run order. Validate's duplicate
search (pieces by a hash of the row key) and train's shuffle (pieces at random) are both one.

The number of split tasks is what keeps the driver's memory flat: Ray hands a task result under
100 KB to the memory of the process that called the task, not to the object store, so pieces of a
few hundred rows would put most of the exchanged table in the driver. Runs are made long enough
that a piece holds about `PIECE_ROWS` rows, whatever the number and size of the inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import ray

PIECE_ROWS = 20_000
"""The rows a piece should hold at least: 20k rows of a key or a feature row are well over 100 KB."""


def runs(inputs: int, rows: int, buckets: int, least: int = 1) -> list[np.ndarray]:
    """Consecutive runs of input indices, one per split task: as many as keep a piece (a run's
    rows over `buckets`) at `PIECE_ROWS` rows or more, at least `least`, at most one per input."""
    count = min(inputs, max(1, least, rows // (buckets * PIECE_ROWS)))
    return np.array_split(np.arange(inputs), count)


def returned(values: list):
    """What a task called with `num_returns=len(values)` returns: Ray stores a single return as
    one object, so one value is returned bare."""
    return values if len(values) > 1 else values[0]


def refs_of(refs, count: int) -> list[ray.ObjectRef]:
    """The object refs of a task called with `num_returns=count`, as a list even for one."""
    return [refs] if count == 1 else refs


def exchange(split, merge, split_args: Sequence[tuple], buckets: int,
             merge_args: Callable[[int], tuple] = lambda bucket: ()) -> list[ray.ObjectRef]:
    """One merge result per bucket: `split.remote(*args)` for each of `split_args` returns
    `buckets` pieces (`returned`); `merge.remote(*merge_args(bucket),
    *pieces)` gets that bucket's piece of every split, in order."""
    split = split.options(num_returns=buckets)
    pieces = [split.remote(*args) for args in split_args]
    pieces = [refs_of(refs, buckets) for refs in pieces]
    return [merge.remote(*merge_args(bucket), *(refs[bucket] for refs in pieces))
            for bucket in range(buckets)]
