"""Where a run's telemetry can go: the one list the config validates and the exporters honour."""

from typing import Literal, get_args

Exporter = Literal["none", "console", "jsonl", "otlp", "memory"]
EXPORTERS: tuple[str, ...] = get_args(Exporter)
