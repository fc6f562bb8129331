"""Predict's output files: written whole or not at all, never over a file predict did not write.

Batches go to a hidden temporary file beside the target (`.<name>.<id>.tmp`), which is moved onto
the target only after the last batch: a rename on local disk, one object copy on object stores. A
crash leaves at most the temporary file, whose name says it is unfinished. Every file predict writes
carries a `raypipe.predict` entry in its parquet metadata; an existing target without one is the
user's, and is refused with the reason, before any work and again just before the move.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

WRITTEN_BY = b"raypipe.predict"


def quarantine_uri(output: str) -> str:
    """The quarantine file beside the predictions: `preds.parquet` → `preds.quarantine.parquet`."""
    stem = output[:-len(".parquet")] if output.endswith(".parquet") else output
    return f"{stem}.quarantine.parquet"


class OutputFile:
    """One parquet file at a URI that predict may (re)write."""

    def __init__(self, uri: str, storage_options: dict[str, Any]):
        self.uri = uri
        self.fs, self.path = fsspec.core.url_to_fs(uri, **storage_options)

    def check_replaceable(self) -> None:
        """Refuse a target that exists and was not written by predict."""
        if not self.fs.exists(self.path):
            return
        if self.fs.isdir(self.path) or not self._written_by_predict():
            raise ValueError(f"{self.uri} already exists and was not written by `pipeline "
                             "predict`: refusing to overwrite it (choose another --output)")

    def _written_by_predict(self) -> bool:
        try:
            with self.fs.open(self.path, "rb") as handle:
                metadata = pq.read_schema(handle).metadata or {}
        except (pa.ArrowInvalid, OSError):
            return False
        return WRITTEN_BY in metadata

    @contextmanager
    def writer(self, about: dict[str, Any], empty: pa.Schema | None = None) -> Iterator[_Batches]:
        """Collect batches into the temporary file; on a clean exit, move it onto the target.
        `about` goes into the file's metadata; `empty` is the schema of a file with no batch."""
        self.check_replaceable()
        directory = posixpath.dirname(self.path)
        self.fs.makedirs(directory, exist_ok=True)
        temporary = posixpath.join(directory, f".{posixpath.basename(self.path)}."
                                              f"{uuid.uuid4().hex[:12]}.tmp")
        batches = _Batches(self.fs, temporary, {WRITTEN_BY: json.dumps(about).encode()})
        try:
            yield batches
            batches.close(empty)
            self.check_replaceable()
            self.fs.mv(temporary, self.path)
        finally:
            batches.abort()
            if self.fs.exists(temporary):
                self.fs.rm(temporary)


class _Batches:
    """A parquet writer opened on the first batch, so the file takes that batch's schema."""

    def __init__(self, fs, path: str, metadata: dict[bytes, bytes]):
        self.fs, self.path, self.metadata = fs, path, metadata
        self.handle = None
        self.parquet: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self.parquet is None:
            self._open(table.schema)
        self.parquet.write_table(table.cast(self.parquet.schema))
        self.rows += table.num_rows

    def _open(self, schema: pa.Schema) -> None:
        self.handle = self.fs.open(self.path, "wb")
        self.parquet = pq.ParquetWriter(self.handle, schema.with_metadata(self.metadata))

    def close(self, empty: pa.Schema | None) -> None:
        if self.parquet is None:
            if empty is None:
                raise ValueError("nothing to write, and no schema for an empty file")
            self._open(empty)
        self.parquet.close()
        self.handle.close()
        self.parquet = self.handle = None

    def abort(self) -> None:
        """Close what is still open after a failure (the temporary file is then removed)."""
        if self.parquet is not None:
            self.parquet.close()
            self.handle.close()
