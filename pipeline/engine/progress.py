"""Live progress from Ray workers to the driver: every finished worker span, by name and attributes.

The stages already describe their Ray work as worker spans (`ingest.copy_files`, `validate.file`,
`featurize.chunk`, `train.epoch`, `evaluate.score_file`, ...), with the rows and losses as
attributes. When a run shows progress, the runner puts an inbox's outbox in the stage's carrier;
each worker span, as it closes, pushes `{"name", "attributes"}` through it
(`pipeline.telemetry.propagation`), whatever the telemetry exporter. The driver drains the inbox
a few times a second, and once more when the stage's work is done. A worker waits on it only
where the inbox is an actor, for the actor to take the event (at most `PUSH_WAIT_S`).

Two inboxes, one contract:
- on a Ray of this machine alone, a UDP socket of the driver on 127.0.0.1: workers send it
  datagrams carrying a per-process token (anything else is dropped). No process to start: an
  actor would take one of the few workers Ray prestarts, and starting it would compete with the
  first stage's tasks;
- joined to a cluster, whose workers may be on other hosts, an actor (`ProgressInbox`) that the
  workers push to and the driver drains through Ray.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

POLL_SECONDS = 0.5
PUSH_WAIT_S = 2.0
_LOOPBACK = "127.0.0.1"
_DATAGRAM_BYTES = 65_507  # the most one UDP datagram over IPv4 carries

_ACTOR_INBOX: dict[str, ActorInbox] = {}  # Ray connection -> this driver's inbox
_LOOPBACK_INBOX: list[LoopbackInbox] = []  # this process's one socket


class Outbox(Protocol):
    """What a worker holds (in its carrier): `push` an event, never waiting, never raising."""

    def push(self, event: dict) -> None: ...


class Inbox(Protocol):
    outbox: Outbox

    def drain(self) -> list[dict]:
        """The events pushed since the last drain."""


def progress_inbox(local: bool) -> Inbox:
    """This driver's inbox: over loopback when `local` (every Ray worker runs on this machine),
    else an actor, created once per Ray connection and ended with it."""
    if local and not _LOOPBACK_INBOX:
        with contextlib.suppress(OSError):  # no IPv4 loopback here: the actor will do
            _LOOPBACK_INBOX.append(LoopbackInbox())
    if local and _LOOPBACK_INBOX:
        return _LOOPBACK_INBOX[0]
    import ray

    context = ray.get_runtime_context()
    job = f"{context.gcs_address}/{context.get_node_id()}/{context.get_job_id()}"
    if job not in _ACTOR_INBOX:
        _ACTOR_INBOX.clear()
        _ACTOR_INBOX[job] = ActorInbox()
    return _ACTOR_INBOX[job]


@dataclass(frozen=True)
class LoopbackOutbox:
    port: int
    token: str

    def push(self, event: dict) -> None:
        payload = json.dumps({"token": self.token, "event": event}, default=str).encode()
        with contextlib.suppress(OSError), \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(payload, (_LOOPBACK, self.port))


class LoopbackInbox:
    """A UDP socket on 127.0.0.1 (never another interface); datagrams without its token are
    dropped, so another local process cannot write into the display."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((_LOOPBACK, 0))
        self._socket.setblocking(False)
        self.outbox = LoopbackOutbox(self._socket.getsockname()[1], secrets.token_hex(16))

    def drain(self) -> list[dict]:
        events = []
        while True:
            try:
                payload = self._socket.recv(_DATAGRAM_BYTES)
            except BlockingIOError:
                return events
            event = self._event(payload)
            if event is not None:
                events.append(event)

    def _event(self, payload: bytes) -> dict | None:
        try:
            message = json.loads(payload)
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("token") != self.outbox.token:
            return None
        event = message.get("event")
        valid = isinstance(event, dict) and isinstance(event.get("name"), str)
        return event if valid else None


@dataclass(frozen=True)
class ActorOutbox:
    actor: Any

    def push(self, event: dict) -> None:
        """Hand the event to the actor before the task returns: a call still in flight when the
        task's result reached the driver would miss the stage's last drain (seen in the test of
        progress under load). A busy or lost actor holds the worker at most `PUSH_WAIT_S`."""
        import ray

        ray.wait([self.actor.push.remote(event)], timeout=PUSH_WAIT_S)


class ActorInbox:
    def __init__(self) -> None:
        import ray

        @ray.remote(num_cpus=0)
        class ProgressInbox:
            def __init__(self) -> None:
                self.events: list[dict] = []

            def push(self, event: dict) -> None:
                self.events.append(event)

            def drain(self) -> list[dict]:
                events, self.events = self.events, []
                return events

        self.outbox = ActorOutbox(ProgressInbox.remote())

    def drain(self) -> list[dict]:
        import ray

        return ray.get(self.outbox.actor.drain.remote(), timeout=10)


class ProgressPoller:
    """A driver thread that hands the inbox's events to `apply`, until `stop()`."""

    def __init__(self, inbox: Inbox, apply: Callable[[dict], None]) -> None:
        self.inbox, self.apply = inbox, apply
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raypipe-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(POLL_SECONDS):
            self.drain()

    def drain(self) -> None:
        try:
            events = self.inbox.drain()
        except Exception:  # progress is best effort; the run's result does not depend on it
            return
        for event in events:
            self.apply(event)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self.drain()
