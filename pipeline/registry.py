"""The model registry: numbered versions under the artifact root, each traceable to its data and code.

    registry/<model>/v<N>/model/        weights, preprocessing, architecture (copied from train)
    registry/<model>/v<N>/entry.json    metrics, promotion decision and reason, lineage; written last

A version is complete iff entry.json exists. Registering is idempotent: the evaluate cache key is in
the entry, and registering the same key again returns the existing version instead of a new one.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from pipeline.artifacts import Artifact, ArtifactStore

ENTRY = "entry.json"
CLAIM = "claim.json"
_VERSION = re.compile(r"^v(\d+)$")


def versions(store: ArtifactStore, model: str) -> list[dict[str, Any]]:
    """Complete versions of a model, oldest first."""
    root = store.registry_path(model)
    if not store.fs.exists(root):
        return []
    found = []
    for path in store.fs.ls(root, detail=False):
        match = _VERSION.match(posixpath.basename(path.rstrip("/")))
        entry = posixpath.join(path, ENTRY)
        if match and store.fs.exists(entry):
            found.append((int(match.group(1)), store.read_json(entry)))
    return [entry for _, entry in sorted(found, key=lambda item: item[0])]


def register(store: ArtifactStore, model: str, model_dir: str, entry: dict[str, Any]) -> dict:
    """Copy the model in as the next version and write its entry last; reuse a same-key version.

    The version number is claimed with an exclusive create of `v<N>/claim.json`, so two runs
    registering at once get two numbers and never overwrite each other; an unfinished version
    keeps its number (never reused).
    """
    for existing in versions(store, model):
        if existing["evaluate_cache_key"] == entry["evaluate_cache_key"]:
            return existing
    root = store.registry_path(model)
    taken = [int(m.group(1)) for p in (store.fs.ls(root, detail=False)
                                       if store.fs.exists(root) else [])
             if (m := _VERSION.match(posixpath.basename(p.rstrip("/"))))]
    number = max(taken, default=0) + 1
    claim = {"evaluate_cache_key": entry["evaluate_cache_key"], "run_id": entry.get("run_id")}
    while not store.create_exclusive(store.registry_path(model, f"v{number}", CLAIM), claim):
        number += 1
    target = store.registry_path(model, f"v{number}")
    store.fs.copy(model_dir.rstrip("/") + "/", posixpath.join(target, "model"), recursive=True)
    entry = {**entry, "model": model, "version": f"v{number}", "uri": store.uri(target)}
    store.write_json(posixpath.join(target, ENTRY), entry)
    return entry


def lineage(store: ArtifactStore, artifact: Artifact) -> dict[str, dict[str, str]]:
    """Every upstream stage output that fed an artifact: cache key, fingerprint, code version."""
    found: dict[str, dict[str, str]] = {}
    pending = [artifact]
    while pending:
        current = pending.pop()
        manifest = current.manifest
        found[current.stage] = {"cache_key": manifest["cache_key"],
                                "fingerprint": manifest["fingerprint"],
                                "code_version": manifest["code_version"],
                                "uri": store.uri(current.uri)}
        if manifest.get("external_inputs"):
            found[current.stage]["source"] = manifest["external_inputs"]
        for stage, source in manifest["inputs"].items():
            upstream = store.find(stage, source["cache_key"])
            if upstream is not None and stage not in found:
                pending.append(upstream)
    return found
