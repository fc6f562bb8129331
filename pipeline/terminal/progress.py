"""Live progress from Ray workers to the driver: every finished worker span, by name and attributes.

The stages already describe their Ray work as worker spans (`ingest.read_block`, `validate.file`,
`featurize.chunk`, `train.epoch`, `evaluate.score_file`, ...), with the rows and losses as
attributes. When a run shows progress, the runner puts a `ProgressInbox` actor handle in the
stage's carrier; each worker span, as it closes, sends `{"name", "attributes"}` to it
(`pipeline.telemetry.propagation`), whatever the telemetry exporter. The driver drains the inbox
a few times a second. A worker never waits on it: a lost event only makes the display lag.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

POLL_SECONDS = 0.5

_INBOX: dict[str, Any] = {}  # Ray connection -> this driver's inbox


def progress_inbox() -> Any:
    """This driver's inbox actor (created once per Ray connection, ended with it)."""
    import ray

    context = ray.get_runtime_context()
    job = f"{context.gcs_address}/{context.get_node_id()}/{context.get_job_id()}"
    if job not in _INBOX:
        @ray.remote(num_cpus=0)
        class ProgressInbox:
            def __init__(self) -> None:
                self.events: list[dict] = []

            def push(self, event: dict) -> None:
                self.events.append(event)

            def drain(self) -> list[dict]:
                events, self.events = self.events, []
                return events

        _INBOX.clear()
        _INBOX[job] = ProgressInbox.remote()
    return _INBOX[job]


class ProgressPoller:
    """A driver thread that hands the inbox's events to `apply`, until `stop()`."""

    def __init__(self, inbox: Any, apply: Callable[[dict], None]) -> None:
        self.inbox, self.apply = inbox, apply
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raypipe-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(POLL_SECONDS):
            self.drain()

    def drain(self) -> None:
        import ray

        try:
            events = ray.get(self.inbox.drain.remote(), timeout=10)
        except Exception:  # progress is best effort; the run's result does not depend on it
            return
        for event in events:
            self.apply(event)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self.drain()
