"""A run's spans as its folder holds them: read, deduplicated, and placed in the run's trace.

Spans are the dicts the telemetry exporters write (`pipeline.telemetry.jsonl`): stage spans are
named `stage.<name>`, the root span `run`. `pipeline profile` and its timeline read them here.
"""

from __future__ import annotations

import os

from pipeline.telemetry.jsonl import read_jsonl_dir

STAGE_PREFIX = "stage."
ROOT_NAME = "run"


def load_run_spans(run_dir: str) -> list[dict]:
    """All spans of a run directory (driver.jsonl + worker-*.jsonl), deduplicated, by start time."""
    rows = {r["span_id"]: r for r in read_jsonl_dir(os.path.join(run_dir, "spans"))}
    return sorted(rows.values(), key=lambda r: (r["start_ns"], r["end_ns"]))


def wall_seconds(span: dict) -> float:
    return max(0, (span["end_ns"] or span["start_ns"]) - span["start_ns"]) / 1e9


def stage_of(span: dict, by_id: dict[str, dict]) -> str | None:
    """Name of the nearest `stage.*` ancestor (or the span itself), following parent ids."""
    seen = set()
    while span is not None and span["span_id"] not in seen:
        seen.add(span["span_id"])
        if span["name"].startswith(STAGE_PREFIX):
            return span["attributes"].get("stage.name") or span["name"][len(STAGE_PREFIX) :]
        span = by_id.get(span.get("parent_span_id"))
    return None


def run_trace(spans: list[dict]) -> tuple[dict | None, list[dict]]:
    """The latest root `run` span and the spans of its trace (all spans if there is no root)."""
    roots = [s for s in spans if s["name"] == ROOT_NAME and not s.get("parent_span_id")]
    roots = roots or [s for s in spans if s["name"] == ROOT_NAME]
    if not roots:
        return None, spans
    root = max(roots, key=lambda s: s["start_ns"])
    return root, [s for s in spans if s["trace_id"] == root["trace_id"]]
