"""The profile report: where a run's time went, from its spans alone.

Input is the span dicts of one run (`load_run_spans(run_dir)`: driver + worker jsonl files). Stage
spans are named `stage.<name>` and carry `stage.name`, `stage.status` ("ran"|"cached"), `rows.in`,
`rows.out`, `rows.quarantined`, `bytes.read`, `bytes.written`; the root span is named `run`.
Everything else (Ray task spans, chunks, train epochs) is ranked by wall time.

CLI use (`pipeline profile [RUN_ID]`):
    print(profile_run(run_dir, png_path=f"{run_dir}/timeline.png"))  # + timeline.json
The pictures themselves are `pipeline.commands.timeline`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from pipeline.commands.run_spans import (
    STAGE_PREFIX,
    load_run_spans,
    run_trace,
    stage_of,
    wall_seconds,
)


@dataclass(frozen=True)
class StageProfile:
    name: str
    status: str  # "ran" | "cached" (stage.status), or "?" when missing
    span_status: str  # OTel status: UNSET | OK | ERROR
    wall_s: float
    share: float  # of the run span's wall time, 0..1
    rows_in: int | None
    rows_out: int | None
    rows_quarantined: int | None
    bytes_read: int | None
    bytes_written: int | None
    rows_per_s: float | None  # rows.in / wall; None for cached stages (nothing was processed)
    bytes_per_s: float | None  # (bytes.read + bytes.written) / wall; None for cached stages
    named: float  # share of the stage's wall covered by its named child spans, 0..1
    phases: list[tuple[str, float]] = field(default_factory=list)
    """The stage's direct child spans (its phases), (name, wall seconds), in start order."""

    @property
    def cached(self) -> bool:
        return self.status == "cached"


@dataclass(frozen=True)
class SpanTiming:
    name: str
    wall_s: float
    stage: str | None
    pid: int | None
    host: str | None
    status: str


@dataclass(frozen=True)
class Profile:
    trace_id: str | None
    run_wall_s: float
    stages: list[StageProfile] = field(default_factory=list)
    slowest: list[SpanTiming] = field(default_factory=list)
    run_attributes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for row, stage in zip(d["stages"], self.stages):
            row["cached"] = stage.cached
        return d


def _int(value) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def covered_share(span: dict, descendants: list[dict]) -> float:
    """The share of `span`'s wall time during which at least one of `descendants` was open
    (their intervals clipped to the span and merged, so parallel tasks count once)."""
    start, end = span["start_ns"], span["end_ns"] or span["start_ns"]
    if end <= start:
        return 1.0
    intervals = sorted((max(start, d["start_ns"]), min(end, d["end_ns"] or d["start_ns"]))
                       for d in descendants)
    covered, reach = 0, start
    for low, high in intervals:
        low = max(low, reach)
        if high > low:
            covered += high - low
            reach = high
    return covered / (end - start)


def children_by_parent(spans: list[dict]) -> dict[str | None, list[dict]]:
    """Each span id → the spans whose parent it is, in start order."""
    children: dict[str | None, list[dict]] = {}
    for s in spans:
        children.setdefault(s.get("parent_span_id"), []).append(s)
    return children


def descendants_of(span: dict, children: dict[str | None, list[dict]]) -> list[dict]:
    """Every span below `span` in the trace (children, their children, ...)."""
    found, frontier = [], [span["span_id"]]
    while frontier:
        below = children.get(frontier.pop(), [])
        found += below
        frontier += [s["span_id"] for s in below]
    return found


def _stage_profile(span: dict, run_wall: float,
                   children: dict[str | None, list[dict]]) -> StageProfile:
    a = span["attributes"]
    wall = wall_seconds(span)
    status = str(a.get("stage.status", "?"))
    rows_in, b_read, b_written = (
        _int(a.get("rows.in")),
        _int(a.get("bytes.read")),
        _int(a.get("bytes.written")),
    )
    active = status != "cached" and wall > 0
    moved = (b_read or 0) + (b_written or 0)
    return StageProfile(
        name=a.get("stage.name") or span["name"][len(STAGE_PREFIX) :],
        status=status,
        span_status=span.get("status", "UNSET"),
        wall_s=wall,
        share=wall / run_wall if run_wall > 0 else 0.0,
        rows_in=rows_in,
        rows_out=_int(a.get("rows.out")),
        rows_quarantined=_int(a.get("rows.quarantined")),
        bytes_read=b_read,
        bytes_written=b_written,
        rows_per_s=rows_in / wall if active and rows_in is not None else None,
        bytes_per_s=moved / wall
        if active and (b_read is not None or b_written is not None)
        else None,
        named=covered_share(span, descendants_of(span, children)),
        phases=[(child["name"], wall_seconds(child)) for child in children.get(span["span_id"], [])],
    )


def build_profile(spans: list[dict], top: int = 10) -> Profile:
    root, spans = run_trace(spans)
    if root is not None:
        run_wall = wall_seconds(root)
    elif spans:
        run_wall = (max(s["end_ns"] for s in spans) - min(s["start_ns"] for s in spans)) / 1e9
    else:
        run_wall = 0.0
    by_id = {s["span_id"]: s for s in spans}
    children = children_by_parent(spans)
    stages = [_stage_profile(s, run_wall, children) for s in spans
              if s["name"].startswith(STAGE_PREFIX)]
    # the units of work (spans with no children: tasks, epochs, chunks), not the phases above them
    others = [s for s in spans if s is not root and not s["name"].startswith(STAGE_PREFIX)
              and s["span_id"] not in children]
    others.sort(key=wall_seconds, reverse=True)
    slowest = [
        SpanTiming(
            s["name"],
            wall_seconds(s),
            stage_of(s, by_id),
            s.get("pid"),
            s.get("host"),
            s.get("status", "UNSET"),
        )
        for s in others[:top]
    ]
    return Profile(
        trace_id=root["trace_id"] if root else (spans[0]["trace_id"] if spans else None),
        run_wall_s=run_wall,
        stages=stages,
        slowest=slowest,
        run_attributes=dict(root["attributes"]) if root else {},
    )


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for cutoff, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= cutoff:
            return f"{value / cutoff:.1f}{suffix}{unit}"
    return f"{value:.0f}{unit}" if float(value).is_integer() else f"{value:.1f}{unit}"


def _secs(seconds: float) -> str:
    return "<0.001" if 0 < seconds < 0.0005 else f"{seconds:.3f}"


def render_table(profile: Profile) -> str:
    """Fixed-width text: one line per stage, then the slowest Ray/worker spans."""
    head = (
        f"{'stage':<12} {'status':<7} {'wall s':>8} {'share':>6} {'rows in':>8} {'rows out':>8} "
        f"{'quar.':>6} {'rows/s':>8} {'read':>8} {'written':>8} {'bytes/s':>9} {'named':>6}"
    )
    run_id = profile.run_attributes.get("run.id", "?")
    lines = [
        f"run {run_id}  wall {profile.run_wall_s:.3f} s  (trace {profile.trace_id or '?'})",
        head,
        "-" * len(head),
    ]
    for s in profile.stages:
        status = s.status if s.span_status != "ERROR" else "ERROR"
        lines.append(
            f"{s.name:<12.12} {status:<7} {_secs(s.wall_s):>8} {s.share:>6.1%} "
            f"{_num(s.rows_in):>8} {_num(s.rows_out):>8} {_num(s.rows_quarantined):>6} "
            f"{_num(s.rows_per_s):>8} "
            f"{_num(s.bytes_read, 'B'):>8} {_num(s.bytes_written, 'B'):>8} "
            f"{_num(s.bytes_per_s, 'B'):>9} {s.named:>6.0%}"
        )
    ran = [s for s in profile.stages if not s.cached and s.phases]
    if ran:
        lines += ["", "phases of each stage that ran (seconds):"]
        for s in ran:
            lines.append(f"  {s.name:<10} " + ", ".join(
                f"{name.split('.', 1)[-1]} {seconds:.2f}" for name, seconds in s.phases))
    if profile.slowest:
        lines += [
            "",
            f"slowest {len(profile.slowest)} units of work (tasks, chunks, epochs):",
            f"{'wall s':>8}  {'stage':<12} {'pid':>7}  name",
        ]
        for t in profile.slowest:
            lines.append(
                f"{t.wall_s:>8.3f}  {(t.stage or '-'):<12.12} {t.pid or '-'!s:>7}  {t.name}"
            )
    return "\n".join(lines)


def profile_run(run_dir: str, png_path: str | None = None, top: int = 10) -> str:
    """The table `pipeline profile` prints. With `png_path`, also the timeline: the PNG, and
    beside it the same timeline as Chrome trace / Perfetto JSON (`.json` for `.png`).

    Raises LookupError when the run has no span files (its telemetry.exporter was none/console).
    """
    from pipeline.commands.timeline import render_timeline_png, write_chrome_trace

    spans = load_run_spans(run_dir)
    if not spans:
        raise LookupError(
            f"no spans under {os.path.join(run_dir, 'spans')}: profiling needs a run made with "
            "telemetry.exporter jsonl or otlp"
        )
    if png_path:
        render_timeline_png(spans, png_path)
        write_chrome_trace(spans, os.path.splitext(png_path)[0] + ".json")
    return render_table(build_profile(spans, top=top))
