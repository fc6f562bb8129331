"""`Telemetry`: the driver-side handle for one run (spans, metrics, carriers, final merge).

Call order for the runner:  tel = Telemetry.start(spec) → with tel.span("run"): with
tel.span("stage.x"): ... ship tel.carrier() with Ray work ... → tel.shutdown() (also on failure; a
`with Telemetry.start(spec) as tel:` block does it). tel.spans()/tel.metrics() stay readable after
shutdown.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import metrics, trace

from .jsonl import latest_metric_points, metrics_to_dicts, read_jsonl, read_jsonl_dir
from .propagation import TRACER_NAME, make_carrier
from .redact import span_attributes
from .setup import build_providers
from .spec import TelemetrySpec


def _merge_spans(*groups: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for group in groups:
        for row in group:
            seen.setdefault(row["span_id"], row)
    return sorted(seen.values(), key=lambda r: (r.get("start_ns") or 0, r.get("end_ns") or 0))


class Telemetry:
    def __init__(self, spec: TelemetrySpec, tmp_dir: str | None = None) -> None:
        self.spec = spec
        self._tmp_dir = tmp_dir  # ours to delete: "memory" runs without a run_dir
        self._providers = build_providers(spec, "driver")
        if self._providers is None:
            self._tracer: trace.Tracer = trace.NoOpTracer()
            self._meter: metrics.Meter = metrics.NoOpMeter(TRACER_NAME)
        else:
            self._tracer = self._providers.tracer_provider.get_tracer(TRACER_NAME)
            self._meter = self._providers.meter_provider.get_meter(TRACER_NAME)
        self._final_spans: list[dict] | None = None
        self._final_metrics: list[dict] | None = None
        self.span_started: Callable[[str], None] | None = None
        """Told each span's name as it opens (the run's display shows a stage's current step)."""

    @classmethod
    def start(cls, spec: TelemetrySpec) -> Telemetry:
        tmp_dir = None
        if spec.exporter == "memory" and not spec.run_dir:
            # Worker processes cannot reach the driver's memory: they write files we merge.
            tmp_dir = tempfile.mkdtemp(prefix="raypipe-telemetry-")
            spec = dataclasses.replace(spec, run_dir=tmp_dir)
        if spec.exporter in ("jsonl", "memory"):
            os.makedirs(os.path.join(spec.run_dir, "spans"), exist_ok=True)
        return cls(spec, tmp_dir)

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    @contextmanager
    def span(self, name: str, attributes: Mapping | None = None) -> Iterator[trace.Span]:
        """A span nested under the current one; an exception is recorded (ERROR) and re-raised."""
        if self.span_started is not None:
            self.span_started(name)
        with self._tracer.start_as_current_span(
            name,
            attributes=span_attributes(attributes) if self._providers else None,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            yield span

    def carrier(self) -> dict:
        """`{"traceparent", "spec"}` of the current span: pass it to Ray work and `worker_span`."""
        return make_carrier(self.spec)

    def counter(self, name: str, unit: str = "1", description: str = "") -> metrics.Counter:
        return self._meter.create_counter(name, unit=unit, description=description)

    def gauge(self, name: str, unit: str = "1", description: str = "") -> metrics._Gauge:
        """A value that is set, not added up (the latest one is exported)."""
        return self._meter.create_gauge(name, unit=unit, description=description)

    def _collect_spans(self) -> list[dict]:
        if self.spec.exporter not in ("jsonl", "memory"):
            return []
        files = read_jsonl_dir(os.path.join(self.spec.run_dir, "spans"))
        memory = self._providers.memory_spans.rows() if self._providers.memory_spans else []
        return _merge_spans(memory, files)

    def _collect_metrics(self) -> list[dict]:
        if self.spec.exporter not in ("jsonl", "memory"):
            return []
        rows = read_jsonl_dir(os.path.join(self.spec.run_dir, "metrics"))
        if self._providers.memory_metrics is not None:
            rows += metrics_to_dicts(self._providers.memory_metrics.get_metrics_data())
        else:
            path = os.path.join(self.spec.run_dir, "metrics.jsonl")
            rows += read_jsonl(path) if os.path.exists(path) else []
        return latest_metric_points(rows)

    def spans(self) -> list[dict]:
        """Every finished span of the run, driver and workers ("memory"/"jsonl"; else [])."""
        if self._final_spans is not None:
            return list(self._final_spans)
        if self._providers is not None:
            self._providers.tracer_provider.force_flush()
        return self._collect_spans()

    def metrics(self) -> list[dict]:
        """Latest cumulative value per (process, metric, attributes) ("memory"/"jsonl"; else [])."""
        if self._final_metrics is not None:
            return list(self._final_metrics)
        if self._providers is not None and self._providers.memory_metrics is None:
            self._providers.meter_provider.force_flush()
        return self._collect_metrics()

    def shutdown(self) -> None:
        """Flush and close exporters, then merge worker files. Safe to call twice."""
        if self._final_spans is not None:
            return
        if self._providers is not None:
            self._providers.flush()
            self._final_metrics = self._collect_metrics()  # memory reader dies with the provider
            self._providers.shutdown(flush=False)
        else:
            self._final_metrics = []
        self._final_spans = self._collect_spans()
        if self._tmp_dir:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
