"""Hive-partitioned parquet on any fsspec filesystem, published atomically by a ``_SUCCESS`` marker.

Object stores have no atomic directory rename, so completeness is signalled the way Hadoop and Spark
do it: every data file first, the marker last. A reader that finds no marker must not trust what is
there; pyarrow's dataset discovery skips the ``_``-prefixed markers themselves.

Writing never destroys what it did not create. It goes only into a location that is absent or empty,
and its very first act is a ``_GENERATING`` marker, so a later attempt can prove that an unfinished
folder (that marker, no ``_SUCCESS``) is its own and replace it. Anything else is refused.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

MARKER = "_SUCCESS"
GENERATING = "_GENERATING"


class SourceNotEmpty(ValueError):
    """The target location holds data this writer did not create, so it will not write there."""


def write_partitioned(
    table: pa.Table,
    uri: str,
    partition_col: str = "day",
    storage_options: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``table`` as ``uri/<col>=<value>/part-0.parquet`` files, ``_SUCCESS`` (holding
    ``metadata`` as JSON) last.

    ``uri`` must be absent, empty, or an unfinished attempt of this writer (see
    ``check_target``); otherwise SourceNotEmpty is raised and nothing is touched.
    """
    fs, root = fsspec.core.url_to_fs(uri.rstrip("/"), **(storage_options or {}))
    column = table[partition_col]
    if column.null_count:
        raise ValueError(f"partition column {partition_col!r} has {column.null_count} null values")
    _claim(fs, root, uri, partition_col, metadata or {})
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
    fs.rm(f"{root}/{GENERATING}")


def check_target(uri: str, partition_col: str = "day",
                 storage_options: dict[str, Any] | None = None) -> None:
    """Raise SourceNotEmpty unless ``write_partitioned`` may write at ``uri``; touches nothing."""
    fs, root = fsspec.core.url_to_fs(uri.rstrip("/"), **(storage_options or {}))
    _entries_we_may_replace(fs, root, uri, partition_col)


def _entries_we_may_replace(fs, root: str, uri: str, partition_col: str) -> list[str]:
    """The entries under ``root``: none, or an unfinished attempt of ours (our ``_GENERATING``
    marker, no ``_SUCCESS``, nothing but ``<partition_col>=...`` folders beside it)."""
    if fs.isfile(root):
        raise SourceNotEmpty(f"{uri} is a file, not a folder; point dataset.source at a new "
                             "location to generate data there")
    entries = [posixpath.basename(e.rstrip("/")) for e in fs.ls(root, detail=False)] \
        if fs.exists(root) else []
    if entries and not _own_unfinished_attempt(entries, partition_col):
        raise SourceNotEmpty(
            f"{uri} is not empty and is not an unfinished generation of ours (a {GENERATING} "
            f"marker without {MARKER}), so nothing there is touched; point dataset.source at a "
            "new location to generate data, or remove dataset.generate to use this folder as "
            "real data"
        )
    return entries


def _claim(fs, root: str, uri: str, partition_col: str, metadata: dict[str, Any]) -> None:
    """Leave ``root`` a folder holding only our ``_GENERATING`` marker, or refuse.

    The marker is written before the old attempt's files are removed, so a kill at any moment
    leaves a folder that is still recognisably ours."""
    stale = [name for name in _entries_we_may_replace(fs, root, uri, partition_col)
             if name != GENERATING]
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/{GENERATING}", json.dumps(metadata, sort_keys=True).encode())
    for name in stale:
        fs.rm(f"{root}/{name}", recursive=True)


def _own_unfinished_attempt(entries: list[str], partition_col: str) -> bool:
    return GENERATING in entries and MARKER not in entries and all(
        name == GENERATING or name.startswith(f"{partition_col}=") for name in entries)


def read_marker(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The metadata a complete dataset was published with, or None while it is absent or partial."""
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    try:
        return json.loads(fs.cat_file(f"{root}/{MARKER}") or b"{}")
    except (FileNotFoundError, NotADirectoryError):
        return None


def dataset_exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    return read_marker(uri, storage_options) is not None


def open_dataset(uri: str, storage_options: dict[str, Any] | None = None) -> ds.Dataset:
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return ds.dataset(root, format="parquet", partitioning="hive", filesystem=fs)
