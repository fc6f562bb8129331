"""The model registry: numbered versions under the artifact root, each traceable to its data and code.

    registry/<model>/v<N>/model/         weights, preprocessing, architecture (copied from train)
    registry/<model>/v<N>/report.html    the evaluation's report (`pipeline.report`), first
    registry/<model>/v<N>/decision.json  the gate's decision (`pipeline.registry.gate`), before the entry
    registry/<model>/v<N>/entry.json     metrics, the decision's verdict, lineage; written last
    registry/<model>/aliases/<alias>/<move>.json   one file per move of an alias (e.g. champion)

A version is complete iff entry.json exists; an alias points only at complete versions. An alias is the latest of its move files: moving it
creates the next numbered file exclusively (never overwrites), so moves are atomic on local disk
and on S3, concurrent moves both land in order, and the files are the alias's history. Registering is idempotent: the evaluate cache key is in
the entry, and registering the same key again returns the existing version instead of a new one.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from pipeline.engine.artifacts import Artifact, ArtifactStore

ENTRY = "entry.json"
CLAIM = "claim.json"
DECISION = "decision.json"
REPORT = "report.html"
ALIASES = "aliases"
CHAMPION = "champion"
_VERSION = re.compile(r"^v(\d+)$")
_MOVE = re.compile(r"^(\d+)\.json$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class AliasMoved(RuntimeError):
    """An alias moved between reading it and moving it (`move_alias(..., if_move=N)`)."""


def models(store: ArtifactStore) -> list[str]:
    """Every model with a registry folder, by name."""
    root = store.registry_path()
    if not store.fs.exists(root):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in store.fs.ls(root, detail=False)
                  if store.fs.isdir(p))


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


def version(store: ArtifactStore, model: str, number: str) -> dict[str, Any]:
    """The entry of a complete version, `v3` or `3`."""
    name = number if number.startswith("v") else f"v{number}"
    path = store.registry_path(model, name, ENTRY)
    if not _VERSION.match(name) or not store.fs.exists(path):
        raise LookupError(f"model {model} has no version {number} under {store.uri(store.root)}")
    return store.read_json(path)


def parse_reference(reference: str) -> tuple[str, str]:
    """`MODEL@REF` → (model, ref); ref is a version (`v3`, `3`) or an alias (`champion`)."""
    model, at, ref = reference.partition("@")
    if not (model and at and ref):
        raise ValueError(f"{reference!r}: expected MODEL@VERSION or MODEL@ALIAS, "
                         "e.g. trip-duration@v1 or trip-duration@champion")
    return model, ref


def resolve(store: ArtifactStore, model: str, ref: str) -> dict[str, Any]:
    """The entry that `ref` names: a version (`v3`, `3`) or an alias (`champion`)."""
    if _VERSION.match(ref) or ref.isdigit():
        return version(store, model, ref)
    moves = alias_history(store, model, ref)
    if not moves:
        raise LookupError(f"model {model} has no alias {ref!r}")
    return version(store, model, moves[-1]["version"])


def decision(store: ArtifactStore, model: str, number: str) -> dict[str, Any] | None:
    """The gate's decision for a version (None for versions registered before decisions)."""
    path = store.registry_path(model, number, DECISION)
    return store.read_json(path) if store.fs.exists(path) else None


def alias_head(store: ArtifactStore, model: str, alias: str) -> tuple[int, str | None]:
    """(number of the alias's latest move, the version it points at); (0, None) if never set."""
    moves = _moves(store, model, alias)
    return (moves[-1][0], store.read_json(moves[-1][1])["version"]) if moves else (0, None)


def alias_history(store: ArtifactStore, model: str, alias: str) -> list[dict[str, Any]]:
    """Every move of an alias, oldest first; the last one is where it points now."""
    return [store.read_json(path) for _, path in _moves(store, model, alias)]


def aliases(store: ArtifactStore, model: str) -> dict[str, str]:
    """Each alias of a model and the version it points at now."""
    root = store.registry_path(model, ALIASES)
    if not store.fs.exists(root):
        return {}
    found = {}
    for path in store.fs.ls(root, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        history = alias_history(store, model, name)
        if history:
            found[name] = history[-1]["version"]
    return found


def move_alias(store: ArtifactStore, model: str, alias: str, target: str,
               reason: str, run_id: str | None = None, if_move: int | None = None) -> dict:
    """Point `alias` at version `target` by creating its next move file exclusively.

    With `if_move`, only if the alias's latest move is still that one (0: never set): a decision
    made against the version it pointed at then must not land on top of a newer move
    (raises AliasMoved).
    """
    if not _ALIAS.match(alias) or _VERSION.match(alias):
        raise ValueError(f"alias {alias!r}: use lowercase letters, digits, - and _, starting "
                         "with a letter, and not a version name like v3")
    entry = version(store, model, target)
    while True:
        number, previous = alias_head(store, model, alias)
        if if_move is not None and number != if_move:
            raise AliasMoved(f"{alias} of {model} moved to {previous} (move {number}) after "
                             f"move {if_move} was read")
        move = {"alias": alias, "version": entry["version"], "previous": previous,
                "reason": reason, "run_id": run_id, "move": number + 1,
                "moved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        path = store.registry_path(model, ALIASES, alias, f"{number + 1:06d}.json")
        if store.create_exclusive(path, move):
            return move


def _moves(store: ArtifactStore, model: str, alias: str) -> list[tuple[int, str]]:
    root = store.registry_path(model, ALIASES, alias)
    if not store.fs.exists(root):
        return []
    found = [(int(match.group(1)), path) for path in store.fs.ls(root, detail=False)
             if (match := _MOVE.match(posixpath.basename(path)))]
    return sorted(found)


def register(store: ArtifactStore, model: str, model_dir: str, entry: dict[str, Any],
             gate_decision: dict[str, Any],
             report: Callable[[str], str] | None = None) -> dict:
    """Copy the model in as the next version, then its report (`report(version)`, HTML), its
    decision, then its entry (last); reuse a same-key version.

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
    identity = {"model": model, "version": f"v{number}"}
    if report is not None:
        store.write_bytes(posixpath.join(target, REPORT), report(f"v{number}").encode())
    store.write_json(posixpath.join(target, DECISION), {**gate_decision, **identity})
    entry = {**entry, **identity, "uri": store.uri(target),
             "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
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
