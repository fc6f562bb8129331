"""What the runner tells whoever watches a run: the interface the terminal implements.

The runner calls these as a run goes; this base class hears nothing, which is what a run started
from code gets unless it passes a display (`pipeline.commands.display`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.engine.summary import StageOutcome


class RunObserver:
    wants_progress = False
    """True: the runner opens a progress inbox for each computing stage's workers."""

    def note(self, line: str) -> None:
        """A line about the run (a stage waiting for another run's lock, ...)."""

    def stage_running(self, name: str, cache_key: str, inbox: Any = None) -> None:
        """`name` starts computing; `inbox` (a `progress_inbox()`) carries its workers' events."""

    def phase(self, span_name: str) -> None:
        """A driver span opened (`<stage>.<step>` spans name the step a stage is in)."""

    def stage_done(self, outcome: StageOutcome) -> None:
        """A stage ran or was found cached."""
