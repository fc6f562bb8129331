"""Carry the trace across process boundaries: driver → Ray task / Ray Data UDF / Train worker.

The carrier is a plain dict `{"traceparent": "00-<trace>-<span>-01", "spec": TelemetrySpec}`:
picklable, small, and explicit, so it works the same for `task.remote(carrier)`,
`map_batches(fn, fn_kwargs={"carrier": c})` and `train_loop_config={"carrier": c}`. Ray's own
(alpha) tracing hook is not used: it monkeypatches every remote call and ties us to its internals.

Each worker process lazily builds one provider set per spec (cached, fork-safe via the pid in the
key) and flushes it when the outermost `worker_span` closes, so a task's spans are exported before
its result is returned and nothing is lost if Ray later kills the idle worker.
"""

from __future__ import annotations

import contextvars
import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .redact import span_attributes
from .setup import Providers, build_providers
from .spec import TelemetrySpec

TRACER_NAME = "raypipe"
_PROPAGATOR = TraceContextTextMapPropagator()
_UNEXPORTED = TracerProvider()  # no processor: spans that record attributes and go nowhere
_WORKER_PROVIDERS: dict[tuple[int, TelemetrySpec], Providers | None] = {}
_WORKER_LOCK = threading.Lock()
# worker_spans open in this context: the outermost one flushes (even when nested in a driver span)
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("raypipe_worker_span_depth", default=0)
# the carrier of the outermost open worker_span: nested spans and meters in the same work reuse it
_ACTIVE: contextvars.ContextVar[Mapping | None] = contextvars.ContextVar("raypipe_carrier",
                                                                         default=None)


def make_carrier(spec: TelemetrySpec, ctx: otel_context.Context | None = None) -> dict:
    """The W3C traceparent of the current (or given) context, plus the spec to rebuild exporters."""
    carrier: dict = {}
    if spec.exporter != "none":
        _PROPAGATOR.inject(carrier, context=ctx)
    carrier["spec"] = spec
    return carrier


def worker_providers(spec: TelemetrySpec) -> Providers | None:
    """This process's providers for `spec` (built once; None for the "none" exporter)."""
    key = (os.getpid(), spec)
    with _WORKER_LOCK:
        if key not in _WORKER_PROVIDERS:
            # No shutdown at exit: every outermost worker_span flushes what it recorded, and a
            # final OTLP export at exit would keep retrying a collector that has gone (a
            # local-mode training loop builds these in the driver, which outlives the collector).
            _WORKER_PROVIDERS[key] = build_providers(spec, "worker")
        return _WORKER_PROVIDERS[key]


def _parent(carrier: Mapping) -> otel_context.Context | None:
    """The context to start a worker span in (None: the current one).

    A span already open in this process for the same trace is the natural parent (nested
    worker_span calls nest); otherwise the parent is the remote span named by the carrier.
    """
    current = trace.get_current_span().get_span_context()
    remote_ctx = _PROPAGATOR.extract(carrier)
    remote = trace.get_current_span(remote_ctx).get_span_context()
    if current.is_valid and (not remote.is_valid or current.trace_id == remote.trace_id):
        return None
    return remote_ctx


@contextmanager
def worker_span(
    carrier: Mapping | None, name: str, attributes: Mapping | None = None
) -> Iterator[trace.Span]:
    """A span in a Ray worker process, child of the driver span that made `carrier`.

    On an exception the span records it and gets StatusCode.ERROR, and the exception propagates.
    With `carrier=None` inside traced work, the span nests under the work's span.
    """
    carrier = carrier if carrier is not None else _ACTIVE.get()
    spec = (carrier or {}).get("spec")
    providers = worker_providers(spec) if spec is not None else None
    progress = (carrier or {}).get("progress")
    if providers is None and progress is None:
        yield trace.INVALID_SPAN
        return
    # without an exporter, a span that only records: its attributes are the progress event
    tracer = (providers.tracer_provider if providers else _UNEXPORTED).get_tracer(TRACER_NAME)
    token = _DEPTH.set(_DEPTH.get() + 1)
    active = _ACTIVE.set(carrier)
    span = trace.INVALID_SPAN
    try:
        with tracer.start_as_current_span(
            name, context=_parent(carrier), attributes=span_attributes(attributes)
        ) as span:
            yield span
    finally:
        _ACTIVE.reset(active)
        _DEPTH.reset(token)
        if _DEPTH.get() == 0 and providers is not None:  # outermost: export before returning
            providers.flush()
        if progress is not None:
            _report_progress(progress, name, span)


def _report_progress(outbox, name: str, span: trace.Span) -> None:
    """Tell the driver's progress display that this span's work is done (`outbox` is a
    `pipeline.engine.progress.Outbox`; a lost event only makes the display lag)."""
    attributes = dict(getattr(span, "attributes", None) or {})
    outbox.push({"name": name, "attributes": attributes})


def worker_meter(carrier: Mapping | None = None) -> metrics.Meter:
    """An OTel Meter for metrics recorded in a worker; flushed with the outermost worker_span.

    Files ("jsonl"/"memory") get cumulative snapshots in run_dir/metrics/worker-*.jsonl. Without a
    carrier, inside traced work, it is the work's meter.
    """
    carrier = carrier if carrier is not None else _ACTIVE.get()
    spec = (carrier or {}).get("spec")
    providers = worker_providers(spec) if spec is not None else None
    if providers is None:
        return metrics.NoOpMeter(TRACER_NAME)
    return providers.meter_provider.get_meter(TRACER_NAME)


def traced(work: Callable, name: str | None, carrier: Mapping) -> Callable:
    """`work` (a function, or a class for Ray Data's actor pool) run inside a worker span `name`,
    a child of the span that made `carrier`. Picklable, so it ships to any Ray process; inside it,
    `worker_span(None, ...)` nests and `current_span()` is that span. With `name=None` no span is
    opened: long-running work (a training loop) opens its own, each exported as it closes."""
    if isinstance(work, type):
        class Traced(work):  # a Ray Data callable class: each call is one span
            def __call__(self, *args, **kwargs):
                with _work_context(carrier, name):
                    return super().__call__(*args, **kwargs)

        Traced.__name__ = Traced.__qualname__ = work.__name__
        return Traced

    @functools.wraps(work)
    def run(*args, **kwargs):
        with _work_context(carrier, name):
            return work(*args, **kwargs)

    return run


@contextmanager
def _work_context(carrier: Mapping, name: str | None) -> Iterator[None]:
    if name is not None:
        with worker_span(carrier, name):
            yield
        return
    token = _ACTIVE.set(carrier)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current_span() -> trace.Span:
    """The innermost open span of this process (a no-op span outside one)."""
    return trace.get_current_span()
