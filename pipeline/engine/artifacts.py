"""Where stage outputs live: an fsspec artifact root with atomic, manifest-last publishing.

Layout under the root (spelled here and nowhere else):
    stages/<stage>/<cache_key>/            a published output; complete iff manifest.json exists
    stages/<stage>/_staging/<key>-<run>/   work in progress, never read by anyone else
    stages/<stage>/_locks/<key>.lock       held (flock, local disk) while a run computes a key
    runs/<run_id>/run.json                 one record per `pipeline run` (spans/, metrics beside it)
    runs/latest.json                       the id of the latest run
    train_runs/<cache_key>/                Ray Train checkpoints of a train attempt (resume point)
    registry/<model>/v<N>/claim.json       the version number, claimed exclusively by one run
    registry/<model>/v<N>/report.html      the evaluation's report (before the decision)
    registry/<model>/v<N>/entry.json       registered models (entry.json written last)
    registry/<model>/aliases/<alias>/<N>.json   the N-th move of an alias such as champion

Object stores have no atomic directory rename, so completeness is defined by the manifest alone: data
is moved into place first and manifest.json is written last, as one object. A run killed anywhere
before that leaves a directory without a manifest, which readers treat as absent and the next run
removes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.fs as pafs

MANIFEST = "manifest.json"
MODEL_JSON = "model.json"
"""A saved model's description (`pipeline.model.predictor`), which readers that do not load the
model read without importing torch."""


@dataclass(frozen=True)
class Artifact:
    """A published stage output: its location and its manifest."""

    stage: str
    uri: str
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def arrow_filesystem(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """The pyarrow view of an fsspec filesystem, for Ray Data and pyarrow.dataset."""
    if "file" in fs.protocol or "local" in fs.protocol:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


class DamagedArtifact(ValueError):
    """A file of a published artifact that no longer reads as it was written."""

    def __init__(self, uri: str, damage: str) -> None:
        self.uri, self.damage = uri, damage
        super().__init__(f"{uri} is damaged ({damage}): it was whole when the pipeline wrote it. "
                         "Move its folder away to have the stage recompute it, or restore it "
                         "from a backup")


class ArtifactStore:
    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.fs, self.root = fsspec.core.url_to_fs(root, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]

    # -- paths -------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def relative(self, path: str) -> str:
        """`path` below the root, relative to it: what an artifact records of another one, so
        that its bytes do not depend on where the root is (a copied root keeps fingerprints)."""
        prefix = self.root + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under the artifact root {self.root}")
        return path[len(prefix):]

    def uri(self, path: str) -> str:
        """A URI other libraries (Ray Data, pyarrow) can open; plain paths stay plain."""
        return path if self.is_local else f"{self.protocol}://{path}"

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def arrow_filesystem(self) -> pafs.FileSystem:
        return arrow_filesystem(self.fs)

    def stage_path(self, stage: str, key: str) -> str:
        return self.path("stages", stage, key)

    def run_path(self, run_id: str, *parts: str) -> str:
        return self.path("runs", run_id, *parts)

    def latest_run_path(self) -> str:
        return self.path("runs", "latest.json")

    def train_runs_path(self) -> str:
        return self.path("train_runs")

    def registry_path(self, *parts: str) -> str:
        """registry/, or registry/<model>/..., e.g. registry_path(model, "v3", "entry.json")."""
        return self.path("registry", *parts)

    def parquet_files(self, folder: str) -> list[str]:
        """The parquet files below `folder`, sorted: the order every reader takes them in."""
        return sorted(p for p in self.fs.find(folder) if p.endswith(".parquet"))

    # -- publish protocol --------------------------------------------------------------------
    def find(self, stage: str, key: str) -> Artifact | None:
        """The published output for this key, or None (an unfinished directory counts as none)."""
        final = self.stage_path(stage, key)
        manifest_path = posixpath.join(final, MANIFEST)
        if not self.fs.exists(manifest_path):
            return None
        return Artifact(stage, final, self.read_json(manifest_path))

    def begin(self, stage: str, key: str, run_id: str) -> str:
        """A fresh, empty staging directory for one attempt at producing (stage, key).

        Called under the key's compute lock. On local disk every earlier attempt at this key held
        that lock while it lived, so their staging folders belong to dead runs: removed here.
        """
        staging = self.path("stages", stage, "_staging", f"{key}-{run_id}")
        if self.is_local:
            for stale in Path(posixpath.dirname(staging)).glob(f"{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        elif self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)
        self.fs.makedirs(staging, exist_ok=True)
        return staging

    def publish(self, stage: str, key: str, staging: str, manifest: dict[str, Any]) -> Artifact:
        """Move the staged files into place, then write the manifest: the commit point."""
        final = self.stage_path(stage, key)
        if self.fs.exists(final):  # leftovers of a killed attempt: no manifest, never read
            self.fs.rm(final, recursive=True)
        self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
        if self.is_local:
            self.fs.mv(staging, final, recursive=True)
        else:
            # Object stores have no directories: a recursive mv would also try to copy the
            # pseudo-directory keys (S3 answers NoSuchKey), so copy the objects one by one.
            objects = self.fs.find(staging)
            if objects:  # an output may be its manifest alone (register's)
                self.fs.copy(objects, [final + path[len(staging):] for path in objects])
                self.fs.rm(objects)
        self.write_json(posixpath.join(final, MANIFEST), manifest)
        return Artifact(stage, final, manifest)

    @contextmanager
    def compute_lock(self, stage: str, key: str, waiting: Callable[[str], None]) -> Iterator[None]:
        """Held while one run computes (stage, key), so a concurrent run waits, then reuses it.

        Local disk: an exclusive flock on `stages/<stage>/_locks/<key>.lock`, released by the
        kernel when the holder exits, even on SIGKILL. Object stores have no locks: two runs of
        one key may both compute it (stages are deterministic; the later publish rewrites the same
        files), and registry versions stay exclusive (`create_exclusive`).
        """
        if not self.is_local:
            yield
            return
        path = Path(self.path("stages", stage, "_locks", f"{key}.lock"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                waiting(f"another run ({handle.read().strip() or 'unknown'}) is computing it")
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create_exclusive(self, path: str, payload: Any) -> bool:
        """Write a JSON object only if nothing is at `path` yet; False if something was.

        O_EXCL on local disk; a conditional PUT (If-None-Match: *) on S3.
        """
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def abandon(self, staging: str) -> None:
        if self.fs.exists(staging):
            self.fs.rm(staging, recursive=True)

    # -- content -----------------------------------------------------------------------------
    def fingerprint(self, directory: str) -> tuple[str, int]:
        """Content hash of every file below a directory (and their total bytes).

        File *names* are left out (parallel writers name files by random ids); each file counts by
        its sub-folder and its bytes, so equal content gives an equal fingerprint.
        """
        file_digests, total = [], 0
        for path in self.fs.find(directory):
            relative = posixpath.relpath(path, directory)
            if relative == MANIFEST:
                continue
            digest = hashlib.sha256(posixpath.dirname(relative).encode())
            with self.fs.open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
                    total += len(block)
            file_digests.append(digest.hexdigest())
        return hashlib.sha256("".join(sorted(file_digests)).encode()).hexdigest(), total

    def write_json(self, path: str, payload: Any) -> None:
        self.write_bytes(path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file at once: a reader sees the old file or the new one, never half."""
        if self.is_local:  # write-then-rename so a reader never sees half a file
            temporary = path + ".tmp"
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with self.fs.open(temporary, "wb") as handle:
                handle.write(data)
            self.fs.mv(temporary, path)
        else:  # a single object PUT is atomic on object stores
            self.fs.pipe_file(path, data)

    def read_json(self, path: str) -> Any:
        """A JSON file the pipeline wrote whole; one that no longer parses (a disk or a hand
        damaged it since) is named, with the way forward."""
        with self.fs.open(path, "rb") as handle:
            text = handle.read()
        try:
            return json.loads(text)
        except ValueError as exc:
            where = f" at line {exc.lineno}, column {exc.colno}" if hasattr(exc, "lineno") else ""
            raise DamagedArtifact(self.uri(path), f"{getattr(exc, 'msg', exc)}{where}") from None
