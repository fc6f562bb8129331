"""OpenTelemetry for raypipe: one trace per run, across the driver, Ray tasks and Train workers.

Driver:  tel = Telemetry.start(spec); with tel.span("run"): ...; tel.carrier(); tel.shutdown()
Worker:  traced(fn, "featurize.chunk", carrier) runs fn inside a span that joins the driver's trace;
         inside it, worker_span(None, name) nests and current_span() sets attributes.
The `pipeline profile` report that reads these spans is `pipeline.commands.profile`.
"""

from .driver import Telemetry
from .propagation import current_span, make_carrier, traced, worker_meter, worker_span
from .redact import REDACTED, is_secret_key, redact, redact_text
from .spec import EXPORTERS, TelemetrySpec

__all__ = [
    "EXPORTERS",
    "REDACTED",
    "Telemetry",
    "TelemetrySpec",
    "current_span",
    "is_secret_key",
    "make_carrier",
    "redact",
    "redact_text",
    "traced",
    "worker_meter",
    "worker_span",
]
