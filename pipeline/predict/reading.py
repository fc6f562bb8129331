"""Reading predict's input: its parquet files in name order, as blocks of whole row groups.

Plain Ray tasks, not Ray Data: `ray.data.read_parquet(...).to_arrow_refs()` made the same blocks
after 1.8 to 3.0 s of execution set-up on a one-file input (2-core machine, Ray already running),
most of a small input's prediction. The driver reads every file's footer anyway, to refuse a file
that lacks a column before any row is read; the footers also give the row groups to cut files by.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline.predict.rows import missing_columns
from pipeline.predict.spec import ModelSpec
from pipeline.quality.rules import SchemaError

PATH = "path"
"""A column added to every block: the file each row came from."""
READ_ROWS = 1_000_000
"""The rows one read task takes at most (whole row groups, at least one)."""


@dataclass(frozen=True)
class Piece:
    """Consecutive row groups of one input file, read by one task into one block."""

    path: str
    row_groups: tuple[int, ...]
    rows: int
    partitions: dict[str, str]
    """The `key=value` folders between the input's root and the file (hive partitions)."""


def plan_reads(fs, root: str, uri: str, spec: ModelSpec) -> list[Piece]:
    """The pieces of the input at `root` (a file, or a folder of them), in file then row order;
    every file must hold the columns the model reads (label-time ones aside)."""
    if not fs.exists(root):
        raise ValueError(f"input {uri} does not exist (--input)")
    files = [root] if fs.isfile(root) else sorted(
        found for found in fs.find(root) if found.endswith(".parquet")
        and not posixpath.basename(found).startswith(("_", ".")))
    if not files:
        raise ValueError(f"input {uri} holds no parquet files (--input)")
    pieces = []
    for file in files:
        with fs.open(file, "rb") as handle:
            metadata = pq.read_metadata(handle)
        missing = missing_columns(metadata.schema.to_arrow_schema().names, spec)
        if missing:
            raise SchemaError(f"{file}: column(s) {', '.join(missing)} missing (model "
                              f"{spec.model} {spec.version} reads them)")
        partitions = _hive_values(posixpath.relpath(file, root)) if file != root else {}
        groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        pieces.extend(Piece(file, run, sum(groups[i] for i in run), partitions)
                      for run in _runs(groups))
    return pieces


def _hive_values(relative: str) -> dict[str, str]:
    folders = posixpath.dirname(relative).split("/")
    return dict(unquote(folder).split("=", 1) for folder in folders if "=" in folder)


def _runs(groups: list[int]) -> list[tuple[int, ...]]:
    """Consecutive row-group indices of at most READ_ROWS rows each (a larger group alone)."""
    runs, run, rows = [], [], 0
    for index, count in enumerate(groups):
        if run and rows + count > READ_ROWS:
            runs.append(tuple(run))
            run, rows = [], 0
        run.append(index)
        rows += count
    return [*runs, tuple(run)] if run else runs


@ray.remote(num_cpus=1)
def read_piece(fs, piece: Piece) -> pa.Table:
    """One block: the piece's rows, its partition values as string columns, and `PATH`."""
    with fs.open(piece.path, "rb") as handle:
        table = pq.ParquetFile(handle).read_row_groups(list(piece.row_groups))
    for name, value in piece.partitions.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
    return table.append_column(PATH, pa.array([piece.path] * table.num_rows, pa.string()))
