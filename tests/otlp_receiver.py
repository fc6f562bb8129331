"""A real OTLP/HTTP receiver on loopback, for tests: decodes protobuf traces and metrics.

It stands in for an OpenTelemetry Collector so the "otlp" exporter is tested over the wire, from the
driver and from Ray worker processes alike. OTLP/HTTP exports are synchronous request/response, so
once `Telemetry.shutdown()` (or a worker span's flush) has returned, the data is already here: tests
read `receiver.spans` directly, with no sleeps or polling.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def any_value(value):
    """Decode an OTLP AnyValue into a Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def attributes(kvs) -> dict:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class OtlpReceiver:
    endpoint: str = ""
    spans: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # paths, in arrival order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_traces(self, body: bytes) -> bytes:
        request = ExportTraceServiceRequest.FromString(body)
        rows = []
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    rows.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex() or None,
                            "attributes": attributes(span.attributes),
                            "status": span.status.code,  # 2 == STATUS_CODE_ERROR
                            "events": [e.name for e in span.events],
                            "resource": resource,
                        }
                    )
        with self.lock:
            self.spans.extend(rows)
        return ExportTraceServiceResponse().SerializeToString()

    def add_metrics(self, body: bytes) -> bytes:
        request = ExportMetricsServiceRequest.FromString(body)
        rows = []
        for rm in request.resource_metrics:
            resource = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        row = {
                            "name": metric.name,
                            "kind": kind,
                            "attributes": attributes(point.attributes),
                            "resource": resource,
                        }
                        if kind == "histogram":
                            row.update(count=point.count, sum=point.sum)
                        else:
                            row["value"] = getattr(point, point.WhichOneof("value"))
                        rows.append(row)
        with self.lock:
            self.metrics.extend(rows)
        return ExportMetricsServiceResponse().SerializeToString()

    def metric_value(self, name: str, **attrs) -> float | None:
        """Latest value of a sum/gauge metric with these attributes (cumulative temporality)."""
        with self.lock:
            hits = [
                m
                for m in self.metrics
                if m["name"] == name and all(m["attributes"].get(k) == v for k, v in attrs.items())
            ]
        return hits[-1].get("value") if hits else None


def _handler(receiver: OtlpReceiver):
    routes = {"/v1/traces": receiver.add_traces, "/v1/metrics": receiver.add_metrics}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            reply = route(body)
            with receiver.lock:
                receiver.requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    return Handler


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Serve OTLP/HTTP on 127.0.0.1:<free port> for the duration of the block."""
    receiver = OtlpReceiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
