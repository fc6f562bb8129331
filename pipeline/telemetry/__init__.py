"""OpenTelemetry for raypipe: one trace per run, across the driver, Ray tasks and Train workers.

Driver:  tel = Telemetry.start(spec); with tel.span("run"): ...; tel.carrier(); tel.shutdown()
Worker:  with worker_span(carrier, "featurize.chunk", attributes={...}): ...
Report:  profile_run(run_dir, png_path)  (see profile.py)
"""

from .driver import Telemetry
from .profile import (
    Profile,
    StageProfile,
    build_profile,
    load_run_spans,
    profile_run,
    render_table,
    render_timeline_png,
)
from .propagation import flush_worker, make_carrier, worker_meter, worker_span
from .redact import REDACTED, is_secret_key, redact, redact_text
from .spec import EXPORTERS, TelemetrySpec

__all__ = [
    "EXPORTERS",
    "REDACTED",
    "Profile",
    "StageProfile",
    "Telemetry",
    "TelemetrySpec",
    "build_profile",
    "flush_worker",
    "is_secret_key",
    "load_run_spans",
    "make_carrier",
    "profile_run",
    "redact",
    "redact_text",
    "render_table",
    "render_timeline_png",
    "worker_meter",
    "worker_span",
]
