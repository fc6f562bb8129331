"""Spans and metrics as plain dicts, and the exporters that write them as JSON lines or keep them.

One dict shape is used everywhere (the driver's jsonl files, the worker files, `Telemetry.spans()`,
the profile report), so a run can be analysed from its files alone, without a collector:

    {name, trace_id, span_id, parent_span_id, start_ns, end_ns, attributes, status,
     status_description, events, kind, pid, host, node (the Ray node id; None for the driver
     before Ray starts), resource}

Each process appends to its own file (`spans/driver.jsonl`, `spans/worker-<host>-<pid>.jsonl`), so
processes never interleave lines; within a process a per-path lock keeps threads from doing so.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .redact import redact

_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _attrs(attributes: Any) -> dict:
    return {str(k): _jsonable(v) for k, v in dict(attributes or {}).items()}


def span_to_dict(span: ReadableSpan) -> dict:
    ctx, parent = span.context, span.parent
    resource = _attrs(span.resource.attributes) if span.resource else {}
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": _attrs(span.attributes),
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": _attrs(e.attributes)}
            for e in span.events
        ],
        "kind": span.kind.name,
        "pid": resource.get("process.pid"),
        "host": resource.get("host.name"),
        "node": resource.get("ray.node.id"),
        "resource": resource,
    }


def metrics_to_dicts(data: MetricsData | None) -> list[dict]:
    """Flatten OTel MetricsData into one dict per data point (cumulative values)."""
    rows: list[dict] = []
    for rm in data.resource_metrics if data else ():
        resource = _attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    row = {
                        "name": metric.name,
                        "unit": metric.unit,
                        "description": metric.description,
                        "attributes": _attrs(redact(dict(point.attributes or {}))),
                        "time_ns": point.time_unix_nano,
                        "pid": resource.get("process.pid"),
                        "host": resource.get("host.name"),
                        "resource": resource,
                    }
                    if isinstance(metric.data, Histogram):
                        row.update(
                            kind="histogram",
                            count=point.count,
                            sum=point.sum,
                            min=point.min,
                            max=point.max,
                            bucket_counts=list(point.bucket_counts),
                            explicit_bounds=list(point.explicit_bounds),
                        )
                    elif isinstance(metric.data, (Sum, Gauge)):
                        row.update(
                            kind="sum" if isinstance(metric.data, Sum) else "gauge",
                            value=point.value,
                        )
                    else:  # exponential histograms etc.: keep what is printable
                        row.update(
                            kind=type(metric.data).__name__.lower(),
                            value=getattr(point, "sum", None),
                        )
                    rows.append(row)
    return rows


def append_jsonl(path: str, rows: Iterable[dict]) -> None:
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not lines:
        return
    with _PATH_LOCKS_GUARD:
        lock = _PATH_LOCKS.setdefault(path, threading.Lock())
    with lock:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()


def read_jsonl(path: str) -> list[dict]:
    """Read one jsonl file; a torn last line (a killed writer) is skipped, not fatal."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


def read_jsonl_dir(directory: str) -> list[dict]:
    if not os.path.isdir(directory):
        return []
    rows: list[dict] = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jsonl"):
            rows.extend(read_jsonl(os.path.join(directory, name)))
    return rows


def latest_metric_points(rows: Iterable[dict]) -> list[dict]:
    """Metric rows are cumulative snapshots: keep the newest per (process, name, attributes)."""
    latest: dict[tuple, dict] = {}
    for row in rows:
        key = (
            row.get("host"),
            row.get("pid"),
            row["name"],
            json.dumps(row.get("attributes", {}), sort_keys=True),
        )
        if key not in latest or (row.get("time_ns") or 0) >= (latest[key].get("time_ns") or 0):
            latest[key] = row
    return list(latest.values())


class JsonlSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        append_jsonl(self.path, (span_to_dict(s) for s in spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class MemorySpanExporter(SpanExporter):
    """Keeps finished spans as dicts in this process (the driver side of the "memory" exporter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[dict] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = [span_to_dict(s) for s in spans]
        with self._lock:
            self._rows.extend(rows)
        return SpanExportResult.SUCCESS

    def rows(self) -> list[dict]:
        with self._lock:
            return list(self._rows)

    def shutdown(self) -> None:
        pass


class JsonlMetricExporter(MetricExporter):
    """Appends one JSON line per metric data point each time the reader collects."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs):
        append_jsonl(self.path, metrics_to_dicts(metrics_data))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        pass
