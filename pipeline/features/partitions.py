"""The clean table's day partitions, so that a task opens only the days it reads.

A pyarrow dataset over every file of a long history is slow to ship: a task unpickles all of
its fragments, and each scan then prunes every one of them. Featurize's chunk and audit tasks each read a few weeks, so each gets the list of files
per day (plain strings, cheap to ship) and opens a dataset of only the days it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs


@dataclass(frozen=True)
class DayPartitions:
    """A hive-partitioned parquet table by day (`partition=YYYY-MM-DD` folders)."""

    root: str
    partition: str
    filesystem: pafs.FileSystem
    schema: pa.Schema
    """The table's columns and the partition column (a string)."""
    files: dict[str, tuple[str, ...]]
    """Day (ISO) → its parquet files."""

    @classmethod
    def discover(cls, filesystem: pafs.FileSystem, root: str) -> DayPartitions:
        """The table under `root`; its partition column is named by its folders ("day" when it
        has none)."""
        folders = [info.base_name for info in filesystem.get_file_info(pafs.FileSelector(root))
                   if info.type == pafs.FileType.Directory and "=" in info.base_name]
        partition = folders[0].split("=", 1)[0] if folders else "day"
        whole = pads.dataset(root, format="parquet", filesystem=filesystem,
                             partitioning=_hive(partition))
        files: dict[str, list[str]] = {}
        for fragment in whole.get_fragments():
            day = pads.get_partition_keys(fragment.partition_expression)[partition]
            files.setdefault(day, []).append(fragment.path)
        return cls(root, partition, filesystem, whole.schema,
                   {day: tuple(paths) for day, paths in sorted(files.items())})

    @property
    def days(self) -> list[date]:
        return [date.fromisoformat(day) for day in self.files]

    def between(self, first: date, last: date) -> pads.Dataset:
        """A dataset of the files of days `first` to `last` (both included) only."""
        low, high = first.isoformat(), last.isoformat()
        paths = [path for day, paths in self.files.items() if low <= day <= high
                 for path in paths]
        return pads.dataset(paths, format="parquet", filesystem=self.filesystem,
                            schema=self.schema, partitioning=_hive(self.partition),
                            partition_base_dir=self.root)


def _hive(partition: str) -> pads.Partitioning:
    return pads.partitioning(pa.schema([(partition, pa.string())]), flavor="hive")
