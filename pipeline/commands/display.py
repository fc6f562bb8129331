"""What a person sees while a run goes: per stage a line while it runs, its result line, a summary.

`PlainDisplay` prints lines only (pipes, CI, `--json`, `--verbose`, library use): a stage's
`running` line, at most one progress line every `PLAIN_PROGRESS_SECONDS` while it runs, and its
result line. `LiveDisplay` (a terminal) keeps one live line per running stage, redrawn with rich,
and leaves the result lines above it. Both are fed by the runner (`note`, `stage_running`,
`stage_done`) and by the workers' progress events (`pipeline.engine.progress`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from pipeline.engine.observer import RunObserver
from pipeline.engine.progress import ProgressPoller

if TYPE_CHECKING:
    from pipeline.core.config import PipelineConfig
    from pipeline.engine.summary import RunSummary, StageOutcome

PLAIN_PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class Unit:
    """How a worker span counts in a stage's progress: its noun, and the attribute with its rows."""

    noun: str | None  # singular; None: not shown
    rows: str | None = None


UNITS = {
    "ingest.copy_files": Unit("file group", "rows"),
    "validate.key_buckets": Unit(None),
    "validate.duplicates": Unit(None),
    "validate.file": Unit("file", "rows.in"),
    "featurize.chunk": Unit("chunk", "rows"),
    "featurize.audit": Unit("audit batch"),
    "train.read_file": Unit("file"),
    "train.checkpoint": Unit(None),
    "drift.sample": Unit(None),
    "drift.count": Unit(None),
    "evaluate.score_file": Unit("file", "rows"),
}
"""The stages' worker spans; another span counts under its own name."""


class StageProgress:
    """What one running stage's worker spans have reported so far, as a few words."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()
        self.rows = 0
        self.units: Counter[str] = Counter()
        self.epoch: dict[str, Any] = {}
        self.phase = ""  # the driver span the stage is in (train: splits, encode, fit)

    def add(self, event: dict) -> None:
        name, attributes = event["name"], event.get("attributes", {})
        if name.endswith(".epoch") and "epoch" in attributes:
            if attributes.get("rank", 0) == 0:
                self.epoch = attributes
            return
        unit = UNITS.get(name, Unit(name.split(".", 1)[-1]))
        if unit.noun:
            self.units[unit.noun] += 1
        if unit.rows and isinstance(attributes.get(unit.rows), int):
            self.rows += attributes[unit.rows]

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def text(self) -> str:
        parts = [f"{self.rows:,} rows"] if self.rows else []
        parts += [f"{count:,} {_plural(noun, count)}" for noun, count in self.units.items()]
        if not parts and not self.epoch and self.phase:
            parts.append(self.phase)
        if self.epoch:
            total = self.epoch.get("epochs")
            parts.append(f"epoch {self.epoch['epoch']}" + (f"/{total}" if total else ""))
            for key, label in (("train.loss", "train loss"), ("validation.loss", "val loss")):
                if isinstance(self.epoch.get(key), (int, float)):
                    parts.append(f"{label} {self.epoch[key]:.4f}")
        return ", ".join(parts)


def _plural(noun: str, count: int) -> str:
    if count == 1:
        return noun
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def stage_line(outcome: StageOutcome) -> str:
    """A stage's result line: ran or cached, rows, quarantined (with the top reasons), seconds."""
    quarantined = f", {outcome.rows_quarantined:,} quarantined" if outcome.rows_quarantined else ""
    headline = outcome.facts.headline() if outcome.facts is not None else ""
    headline = f" ({headline})" if headline else ""
    return (f"{outcome.name:<10} {outcome.status:<7} {outcome.rows_out:>11,} rows{quarantined}"
            f"{headline}  {outcome.seconds:8.2f}s  {_shown_path(outcome.artifact)}")


def _shown_path(path: str) -> str:
    """A local path below the working directory, relative to it: the line stays short."""
    here = os.getcwd() + os.sep
    return path[len(here):] if path.startswith(here) else path


def dates_line(config: PipelineConfig) -> str:
    """The run's first line: the dates it resolved to (relative ones counted back from the end)."""
    dataset, split = config.dataset, config.split
    return (f"as of {dataset.end.isoformat()}: data from {dataset.start.isoformat()}, train until "
            f"{split.train_until.isoformat()}, validation until "
            f"{split.validation_until.isoformat()}, test from "
            f"{(split.validation_until + split.embargo).isoformat()}")


def summary_lines(summary: RunSummary, ray_log: str | None) -> list[str]:
    """The lines after the stages: the model decision, then the run in one line."""
    outcome = summary.outcome
    lines = []
    if outcome.get("model_version"):
        verdict = "promoted" if outcome["promoted"] else "not promoted: " + (
            "the gate passed it, but the champion has moved since" if outcome["gate"]["passed"]
            else "the gate rejected it")
        champion = f"champion is {outcome['champion'] or 'unset'}"
        if not outcome["registered"]:  # its checks below inform, they move nothing
            verdict, champion = "still the champion", "evaluated again, not registered again"
        lines.append(f"model {outcome['model']} {outcome['model_version']}: {verdict}; {champion}")
        lines.extend(f"  {reason}" for reason in outcome["gate"]["reasons"])
    ran = sum(s.status == "ran" for s in summary.stages)
    seconds = sum(s.seconds for s in summary.stages)
    line = (f"run {summary.run_id}: {len(summary.stages)} stages, {ran} ran, "
            f"{len(summary.stages) - ran} cached, {seconds:.1f}s")
    if summary.ray_start_seconds is not None:
        line += f" (and {summary.ray_start_seconds:.1f}s starting Ray)"
    lines.append(line + (f"; Ray's log: {_shown_path(ray_log)}" if ray_log else ""))
    return lines


class PlainDisplay(RunObserver):
    """Lines only, written through `echo` (by default `print`, or the stream `showing` gives)."""

    wants_progress = False

    def __init__(self, echo: Callable[[str], None] = print, progress: bool = False) -> None:
        self.echo = echo
        self.wants_progress = progress
        self._lock = threading.Lock()
        self._running: dict[str, StageProgress] = {}
        self._last_line: dict[str, float] = {}
        self._poller: ProgressPoller | None = None

    @contextmanager
    def showing(self, stream: TextIO) -> Iterator[None]:
        """Write to `stream` (the terminal, while Ray's output goes to a file) for the duration."""
        echo = self.echo
        self.echo = lambda line: print(line, file=stream, flush=True)
        try:
            with self._polling():
                yield
        finally:
            self.echo = echo

    @contextmanager
    def _polling(self) -> Iterator[None]:
        """Stop the progress poller (started by the first stage that computes) at the end."""
        try:
            yield
        finally:
            if self._poller is not None:
                self._poller.stop()
                self._poller = None

    def _watch(self, inbox: Any) -> None:
        if inbox is not None and self._poller is None:
            self._poller = ProgressPoller(inbox, self.progress)

    def _print(self, line: str) -> None:
        with self._lock:
            self.echo(line)

    def note(self, line: str) -> None:
        self._print(line)

    def stage_running(self, name: str, cache_key: str, inbox: Any = None) -> None:
        """`name` starts computing; `inbox` (a `progress_inbox()`) carries its workers' events."""
        self._running[name] = StageProgress(name)
        self._last_line[name] = time.monotonic()
        self._watch(inbox)
        self._print(f"{name:<10} running  (cache key {cache_key})")

    def phase(self, span_name: str) -> None:
        """A driver span opened: for `<stage>.<step>` spans the stage's live line names the step."""
        stage, _, step = span_name.partition(".")
        if step and stage in self._running:
            self._running[stage].phase = step

    def progress(self, event: dict) -> None:
        """A worker span finished: at most one progress line per stage every few seconds."""
        stage = self._running.get(event["name"].split(".", 1)[0])
        if stage is None:
            return
        stage.add(event)
        now = time.monotonic()
        if now - self._last_line[stage.name] >= PLAIN_PROGRESS_SECONDS and stage.text():
            self._last_line[stage.name] = now
            self._print(f"{stage.name:<10} {stage.text()}  ({stage.seconds:.0f}s)")

    def stage_done(self, outcome: StageOutcome) -> None:
        self._running.pop(outcome.name, None)
        self._print(stage_line(outcome))

    def summary(self, summary: RunSummary, ray_log: str | None) -> None:
        for line in summary_lines(summary, ray_log):
            self._print(line)


class LiveDisplay(PlainDisplay):
    """At a terminal: the running stage's line is redrawn in place (rich), with a spinner, its
    progress and its seconds; finished stages' result lines stay above it."""

    wants_progress = True

    def __init__(self) -> None:
        super().__init__(progress=True)

    @contextmanager
    def showing(self, stream: TextIO) -> Iterator[None]:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=stream, highlight=False, soft_wrap=True)
        echo, self.echo = self.echo, lambda line: console.print(line, markup=False)
        try:
            with Live(console=console, get_renderable=self._renderable, refresh_per_second=8,
                      transient=True, redirect_stdout=False, redirect_stderr=False), \
                    self._polling():
                yield
        finally:
            self._running.clear()
            self.echo = echo

    def _renderable(self):
        from rich.spinner import Spinner
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        for stage in list(self._running.values()):
            line = Text(f"{stage.name:<10} {stage.text() or 'running'}  ")
            line.append(f"{stage.seconds:.0f}s", style="dim")
            table.add_row(Spinner("dots", style="cyan"), line)
        return table

    def stage_running(self, name: str, cache_key: str, inbox: Any = None) -> None:
        self._running[name] = StageProgress(name)
        self._watch(inbox)

    def progress(self, event: dict) -> None:
        stage = self._running.get(event["name"].split(".", 1)[0])
        if stage is not None:
            stage.add(event)


def display_for(stream: TextIO, json_summary: bool, verbose: bool) -> PlainDisplay:
    """A live display at a terminal; plain lines for a pipe, `--json` or `--verbose`."""
    if stream.isatty() and not json_summary and not verbose:
        return LiveDisplay()
    return PlainDisplay(progress=not verbose)
