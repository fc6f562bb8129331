"""Build OTel tracer/meter providers for one process from a `TelemetrySpec`.

Providers are returned as objects and never installed globally: tests start several runs in one
process, and a library must not take over the host application's global provider. The same builder
serves the driver (role "driver") and each Ray worker process (role "worker"); only the file names
and the span processor differ.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Status

from .jsonl import JsonlMetricExporter, JsonlSpanExporter, MemorySpanExporter
from .redact import redact, redact_text
from .spec import TelemetrySpec

OTLP_METRIC_INTERVAL_MS = 10_000  # live metrics for a collector; files get one final snapshot


def process_label(role: str) -> str:
    """File stem for this process: `driver`, or `worker-<host>-<pid>` (unique per process)."""
    if role == "driver":
        return "driver"
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())
    return f"worker-{host}-{os.getpid()}"


def span_file(spec: TelemetrySpec, role: str) -> str:
    return os.path.join(spec.run_dir, "spans", f"{process_label(role)}.jsonl")


def metric_file(spec: TelemetrySpec, role: str) -> str:
    if role == "driver":
        return os.path.join(spec.run_dir, "metrics.jsonl")
    return os.path.join(spec.run_dir, "metrics", f"{process_label(role)}.jsonl")


def make_resource(spec: TelemetrySpec, role: str) -> Resource:
    attrs = {
        str(k): v if isinstance(v, (str, bool, int, float)) else str(v)
        for k, v in spec.resource_attributes.items()
    }
    attrs.update(
        {
            "service.name": spec.service_name,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
            "raypipe.process.role": role,
        }
    )
    node = _ray_node_id()
    if node:  # hosts can share a name (containers); Ray's node id tells nodes apart
        attrs["ray.node.id"] = node
    return Resource.create(redact(attrs))


def _ray_node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray, e.g. a driver before `ray.init`)."""
    import sys

    ray = sys.modules.get("ray")  # never import Ray just to ask
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def _otlp_url(spec: TelemetrySpec, signal: str) -> str | None:
    # None lets the exporter read OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT etc.
    return f"{spec.endpoint.rstrip('/')}/v1/{signal}" if spec.endpoint else None


class RedactingSpanExporter(SpanExporter):
    """Wraps any exporter so span, event and resource attributes leave the process redacted.

    Redacting at export (not when attributes are set) also catches `span.set_attribute` calls and
    exception messages that the code under a span produced.
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    @staticmethod
    def _copy(span: ReadableSpan) -> ReadableSpan:
        events = [Event(e.name, redact(dict(e.attributes or {})), e.timestamp) for e in span.events]
        status = span.status
        if status.description:  # "ValueError: <message>" may quote a URL with a key in it
            status = Status(status.status_code, redact_text(status.description))
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=redact(dict(span.attributes or {})),
            events=events,
            links=span.links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def export(self, spans) -> SpanExportResult:
        return self.inner.export([self._copy(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@dataclass
class Providers:
    """One process's tracer + meter provider for one spec."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    memory_spans: MemorySpanExporter | None = None
    memory_metrics: InMemoryMetricReader | None = None

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self, flush: bool = True) -> None:
        if flush:  # file metric readers have no periodic thread: collect once more
            self.flush()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


class TeeSpanExporter(SpanExporter):
    """Exports to several exporters: OTLP for the collector, plus the run folder's jsonl copy
    that `pipeline profile` reads."""

    def __init__(self, *exporters: SpanExporter) -> None:
        self.exporters = exporters

    def export(self, spans) -> SpanExportResult:
        results = [exporter.export(spans) for exporter in self.exporters]
        ok = all(result == SpanExportResult.SUCCESS for result in results)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        for exporter in self.exporters:
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(exporter.force_flush(timeout_millis) for exporter in self.exporters)


def _span_exporter(
    spec: TelemetrySpec, role: str
) -> tuple[SpanExporter, MemorySpanExporter | None]:
    if spec.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=_otlp_url(spec, "traces"))
        if spec.run_dir:
            return TeeSpanExporter(otlp, JsonlSpanExporter(span_file(spec, role))), None
        return otlp, None
    if spec.exporter == "console":
        return ConsoleSpanExporter(service_name=spec.service_name), None
    if spec.exporter == "memory" and role == "driver":
        memory = MemorySpanExporter()
        return memory, memory
    # "jsonl", and the worker side of "memory": the driver merges these files
    return JsonlSpanExporter(span_file(spec, role)), None


def _metric_reader(spec: TelemetrySpec, role: str) -> MetricReader:
    if spec.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        # Workers export when each task's outermost span closes: a periodic thread there would
        # outlive the run in a long-lived Ray worker and retry a collector that has gone.
        interval = OTLP_METRIC_INTERVAL_MS if role == "driver" else math.inf
        return PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=_otlp_url(spec, "metrics")), interval
        )
    if spec.exporter == "memory" and role == "driver":
        return InMemoryMetricReader()
    if spec.exporter == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter(), math.inf)
    # math.inf: no background thread; Providers.flush/shutdown collect explicitly
    return PeriodicExportingMetricReader(JsonlMetricExporter(metric_file(spec, role)), math.inf)


class SystemIdGenerator(IdGenerator):
    """Span and trace ids from the OS's randomness. The SDK's default draws from the global
    `random` module, which the training loop seeds for reproducible weights (in the driver, in
    local mode): every reseed would then repeat the ids that followed the last one, and spans of
    one trace would share ids."""

    def generate_span_id(self) -> int:
        return secrets.randbits(64) or 1

    def generate_trace_id(self) -> int:
        return secrets.randbits(128) or 1


def build_providers(spec: TelemetrySpec, role: str) -> Providers | None:
    """Providers for `spec` in this process, or None for the "none" exporter (no cost at all)."""
    if spec.exporter == "none":
        return None
    resource = make_resource(spec, role)
    exporter, memory = _span_exporter(spec, role)
    exporter = RedactingSpanExporter(exporter)
    # Network export is batched; local files and memory are cheap enough to write synchronously.
    batched = spec.exporter == "otlp"
    processor = BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter)
    tracer_provider = TracerProvider(resource=resource, id_generator=SystemIdGenerator())
    tracer_provider.add_span_processor(processor)
    reader = _metric_reader(spec, role)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    memory_metrics = reader if isinstance(reader, InMemoryMetricReader) else None
    return Providers(tracer_provider, meter_provider, memory, memory_metrics)
