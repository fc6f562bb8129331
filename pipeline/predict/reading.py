"""Reading predict's input: its parquet files in name order, as blocks of whole row groups.

Plain Ray tasks, not Ray Data: `ray.data.read_parquet(...).to_arrow_refs()` spends seconds setting
up its execution even for a one-file input, most of a small input's prediction, and is slower
still on many files. The driver reads every file's footer anyway, to refuse a file that lacks a
column before any row is read; the footers also give the row groups to cut large files by and the
row counts to pack small files together by.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
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
class Part:
    """Consecutive row groups of one input file."""

    path: str
    row_groups: tuple[int, ...]
    rows: int
    partitions: dict[str, str]
    """The `key=value` folders between the input's root and the file (hive partitions)."""


@dataclass(frozen=True)
class Piece:
    """Consecutive parts, read by one task into one block."""

    parts: tuple[Part, ...]

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)


def plan_reads(fs, root: str, uri: str, spec: ModelSpec, least: int = 1) -> list[Piece]:
    """The pieces of the input at `root` (a file, or a folder of them), in file then row order:
    at most READ_ROWS rows each, and at least `least` pieces where the input has as many row
    groups (small files share a piece). Every file must hold the columns the model reads
    (label-time ones aside)."""
    if not fs.exists(root):
        raise ValueError(f"input {uri} does not exist (--input)")
    files = [root] if fs.isfile(root) else sorted(
        found for found in fs.find(root) if found.endswith(".parquet")
        and not posixpath.basename(found).startswith(("_", ".")))
    if not files:
        raise ValueError(f"input {uri} holds no parquet files (--input)")
    parts = []
    for file in files:
        with fs.open(file, "rb") as handle:
            metadata = pq.read_metadata(handle)
        missing = missing_columns(metadata.schema.to_arrow_schema().names, spec)
        if missing:
            raise SchemaError(f"{file}: column(s) {', '.join(missing)} missing (model "
                              f"{spec.model} {spec.version} reads them)")
        partitions = _hive_values(posixpath.relpath(file, root)) if file != root else {}
        groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        parts.extend(Part(file, tuple(run), sum(groups[i] for i in run), partitions)
                     for run in _runs(groups, READ_ROWS))
    limit = min(READ_ROWS, max(1, -(-sum(part.rows for part in parts) // least)))
    return [Piece(tuple(parts[i] for i in run))
            for run in _runs([part.rows for part in parts], limit)]


def _hive_values(relative: str) -> dict[str, str]:
    folders = posixpath.dirname(relative).split("/")
    return dict(unquote(folder).split("=", 1) for folder in folders if "=" in folder)


def _runs(sizes: list[int], limit: int) -> list[list[int]]:
    """Consecutive indices whose sizes add up to at most `limit` (a larger one alone)."""
    runs, run, total = [], [], 0
    for index, size in enumerate(sizes):
        if run and total + size > limit:
            runs.append(run)
            run, total = [], 0
        run.append(index)
        total += size
    return [*runs, run] if run else runs


@ray.remote(num_cpus=1, num_returns=2)
def read_piece(fs, piece: Piece, partition: str) -> tuple[pa.Table, list[str]]:
    """One block: the piece's rows, each file's partition values as string columns, and `PATH`;
    and the block's values of the `partition` column (a hive folder or a column of the files),
    which bound the input's event times."""
    tables = []
    for part in piece.parts:
        with fs.open(part.path, "rb") as handle:
            table = pq.ParquetFile(handle).read_row_groups(list(part.row_groups))
        for name, value in part.partitions.items():
            if name not in table.column_names:
                table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
        tables.append(table.append_column(PATH, pa.array([part.path] * table.num_rows,
                                                         pa.string())))
    block = pa.concat_tables(tables, promote_options="permissive")
    days = pc.unique(block[partition]).drop_null().to_pylist() \
        if partition in block.column_names else []
    return block, sorted(str(day) for day in days)
