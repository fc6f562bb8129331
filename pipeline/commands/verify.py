"""`pipeline verify`: check that every published output under an artifact root still holds what
its manifest says, and every registry version its model.

A stage output counts as published once its manifest exists (`pipeline.engine.artifacts`), and
its manifest records the content fingerprint of its files. Verify recomputes that fingerprint
(reading every file) and names each output whose manifest no longer parses or whose files no
longer match: a file deleted by hand or by an object store's lifecycle rule, a file cut short or
changed. It only reads; the way forward for a damaged output is to move its folder away, so that
the next run recomputes it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from pipeline.engine.artifacts import MANIFEST, ArtifactStore, DamagedArtifact
from pipeline.registry.store import ENTRY

MODEL = "model"


@dataclass(frozen=True)
class Finding:
    where: str
    problem: str | None
    """None: the output holds what its manifest says."""


def verify_root(store: ArtifactStore) -> list[Finding]:
    """One finding per published stage output and registry version, in path order."""
    findings = []
    for manifest in sorted(store.fs.glob(store.path("stages", "*", "*", MANIFEST))):
        findings.append(_stage_output(store, posixpath.dirname(manifest)))
    for entry in sorted(store.fs.glob(store.registry_path("*", "v*", ENTRY))):
        version = posixpath.dirname(entry)
        model = store.fs.find(posixpath.join(version, MODEL))
        findings.append(Finding(store.uri(version), None if model else
                                "the version's model folder is gone or empty"))
    return findings


def _stage_output(store: ArtifactStore, folder: str) -> Finding:
    where = store.uri(folder)
    try:
        manifest = store.read_json(posixpath.join(folder, MANIFEST))
    except DamagedArtifact as exc:
        return Finding(where, f"{MANIFEST} is damaged ({exc.damage})")
    fingerprint, size = store.fingerprint(folder)
    if fingerprint == manifest["fingerprint"]:
        return Finding(where, None)
    return Finding(where, f"its files no longer match its manifest ({size:,} bytes now, "
                          f"{manifest['bytes']:,} published): a file was deleted or changed")


def render_findings(findings: list[Finding]) -> tuple[str, bool]:
    """The report (a line per damaged output, then the count) and whether all is well."""
    damaged = [f for f in findings if f.problem]
    lines = [f"damaged: {f.where}: {f.problem}" for f in damaged]
    lines.append(f"checked {len(findings)} published outputs and versions: "
                 f"{len(findings) - len(damaged)} ok, {len(damaged)} damaged"
                 + ("; move a damaged folder away to have the next run recompute it"
                    if damaged else ""))
    return "\n".join(lines), not damaged
