"""Hive-partitioned parquet on any fsspec filesystem, published atomically by a ``_SUCCESS`` marker.

Object stores have no atomic directory rename, so completeness is signalled the way Hadoop and Spark
do it: every data file first, the marker last. A reader (or a retry) that finds no marker must treat
whatever is there as garbage; pyarrow's dataset discovery skips the ``_``-prefixed marker itself.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

MARKER = "_SUCCESS"


def write_partitioned(
    table: pa.Table,
    uri: str,
    partition_col: str = "day",
    storage_options: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Replace whatever is at ``uri`` with ``table`` as ``uri/<col>=<value>/part-0.parquet`` files.

    The old marker goes first and the new one (holding ``metadata`` as JSON) last, so at no moment
    does a half-old, half-new directory look complete.
    """
    fs, root = fsspec.core.url_to_fs(uri.rstrip("/"), **(storage_options or {}))
    if fs.exists(root):
        if fs.exists(f"{root}/{MARKER}"):
            fs.rm(f"{root}/{MARKER}")
        fs.rm(root, recursive=True)
    column = table[partition_col]
    if column.null_count:
        raise ValueError(f"partition column {partition_col!r} has {column.null_count} null values")
    codes = pc.dictionary_encode(column).combine_chunks()
    order = np.argsort(codes.indices.to_numpy(), kind="stable")
    grouped = table.drop_columns([partition_col]).take(pa.array(order))
    sorted_codes = codes.indices.to_numpy()[order]
    for code, value in enumerate(codes.dictionary.to_pylist()):
        first, stop = np.searchsorted(sorted_codes, [code, code + 1])
        directory = f"{root}/{partition_col}={value}"
        fs.makedirs(directory, exist_ok=True)
        with fs.open(f"{directory}/part-0.parquet", "wb") as f:
            pq.write_table(grouped.slice(first, stop - first), f)
    fs.pipe_file(f"{root}/{MARKER}", json.dumps(metadata or {}, sort_keys=True).encode())


def read_marker(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The metadata a complete dataset was published with, or None while it is absent or partial."""
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    try:
        return json.loads(fs.cat_file(f"{root}/{MARKER}") or b"{}")
    except FileNotFoundError:
        return None


def dataset_exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    return read_marker(uri, storage_options) is not None


def open_dataset(uri: str, storage_options: dict[str, Any] | None = None) -> ds.Dataset:
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return ds.dataset(root, format="parquet", partitioning="hive", filesystem=fs)
