"""The profile report: where a run's time went, from its spans alone.

Input is the span dicts of one run (`load_run_spans(run_dir)`: driver + worker jsonl files). Stage
spans are named `stage.<name>` and carry `stage.name`, `stage.status` ("ran"|"cached"), `rows.in`,
`rows.out`, `rows.quarantined`, `bytes.read`, `bytes.written`; the root span is named `run`.
Everything else (Ray task spans, chunks, train epochs) is ranked by wall time.

CLI use (`pipeline profile [RUN_ID]`):
    print(profile_run(run_dir, png_path=f"{run_dir}/timeline.png"))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .jsonl import read_jsonl_dir

STAGE_PREFIX = "stage."
ROOT_NAME = "run"


def load_run_spans(run_dir: str) -> list[dict]:
    """All spans of a run directory (driver.jsonl + worker-*.jsonl), deduplicated, by start time."""
    rows = {r["span_id"]: r for r in read_jsonl_dir(os.path.join(run_dir, "spans"))}
    return sorted(rows.values(), key=lambda r: (r["start_ns"], r["end_ns"]))


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


def _wall(span: dict) -> float:
    return max(0, (span["end_ns"] or span["start_ns"]) - span["start_ns"]) / 1e9


def _int(value) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def stage_of(span: dict, by_id: dict[str, dict]) -> str | None:
    """Name of the nearest `stage.*` ancestor (or the span itself), following parent ids."""
    seen = set()
    while span is not None and span["span_id"] not in seen:
        seen.add(span["span_id"])
        if span["name"].startswith(STAGE_PREFIX):
            return span["attributes"].get("stage.name") or span["name"][len(STAGE_PREFIX) :]
        span = by_id.get(span.get("parent_span_id"))
    return None


def _run_trace(spans: list[dict]) -> tuple[dict | None, list[dict]]:
    """The latest root `run` span and the spans of its trace (all spans if there is no root)."""
    roots = [s for s in spans if s["name"] == ROOT_NAME and not s.get("parent_span_id")]
    roots = roots or [s for s in spans if s["name"] == ROOT_NAME]
    if not roots:
        return None, spans
    root = max(roots, key=lambda s: s["start_ns"])
    return root, [s for s in spans if s["trace_id"] == root["trace_id"]]


def _stage_profile(span: dict, run_wall: float) -> StageProfile:
    a = span["attributes"]
    wall = _wall(span)
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
    )


def build_profile(spans: list[dict], top: int = 10) -> Profile:
    root, spans = _run_trace(spans)
    if root is not None:
        run_wall = _wall(root)
    elif spans:
        run_wall = (max(s["end_ns"] for s in spans) - min(s["start_ns"] for s in spans)) / 1e9
    else:
        run_wall = 0.0
    by_id = {s["span_id"]: s for s in spans}
    stages = [_stage_profile(s, run_wall) for s in spans if s["name"].startswith(STAGE_PREFIX)]
    others = [s for s in spans if s is not root and not s["name"].startswith(STAGE_PREFIX)]
    others.sort(key=_wall, reverse=True)
    slowest = [
        SpanTiming(
            s["name"],
            _wall(s),
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
        f"{'quar.':>6} {'rows/s':>8} {'read':>8} {'written':>8} {'bytes/s':>9}"
    )
    lines = [
        f"run {profile.trace_id or '?'}  wall {profile.run_wall_s:.3f} s",
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
            f"{_num(s.bytes_per_s, 'B'):>9}"
        )
    if profile.slowest:
        lines += [
            "",
            f"slowest {len(profile.slowest)} spans inside stages:",
            f"{'wall s':>8}  {'stage':<12} {'pid':>7}  name",
        ]
        for t in profile.slowest:
            lines.append(
                f"{t.wall_s:>8.3f}  {(t.stage or '-'):<12.12} {t.pid or '-'!s:>7}  {t.name}"
            )
    return "\n".join(lines)


@dataclass
class _Bar:
    span: dict
    stage: str | None
    x: float  # seconds since the run started
    width: float  # at least the minimum visible width
    label: str | None
    label_inside: bool
    reach: float  # right edge of bar or its outside label: what the row packing must avoid


def _bars(spans: list[dict], by_id: dict, t0: int, total: float) -> list[_Bar]:
    """Position every span; short labelled bars get their label to the right of the bar."""
    min_w = total * 0.006
    char_w = total / 150  # ~ one 8pt character on a 12-inch-wide axis
    bars = []
    for s in spans:
        stage = stage_of(s, by_id)
        x, width = (s["start_ns"] - t0) / 1e9, max(_wall(s), min_w)
        label = None
        if s["name"] == ROOT_NAME:
            label = ROOT_NAME
        elif s["name"].startswith(STAGE_PREFIX):
            cached = s["attributes"].get("stage.status") == "cached"
            label = (stage or s["name"]) + (" (cached)" if cached else "")
        inside = label is not None and width > char_w * (len(label) + 2)
        reach = x + width + (0 if inside or label is None else char_w * (len(label) + 2))
        bars.append(_Bar(s, stage, x, width, label, inside, reach))
    return bars


def _lanes(bars: list[_Bar]) -> dict[tuple, list[list[_Bar]]]:
    """Per process (host, pid): rows of bars that do not overlap as drawn (parents first)."""
    lanes: dict[tuple, list[list[_Bar]]] = {}
    for bar in sorted(bars, key=lambda b: (b.x, -b.width)):
        rows = lanes.setdefault((bar.span.get("host") or "?", bar.span.get("pid") or 0), [])
        for row in rows:
            if row[-1].reach <= bar.x:
                row.append(bar)
                break
        else:
            rows.append([bar])
    return lanes


def render_timeline_png(spans: list[dict], path: str) -> str:
    """One lane per process, bars coloured by stage (hatched when cached, red edge on error).

    Bars are at least 0.6% of the run wide and bars that would overlap as drawn go to separate
    rows of their lane, so a cached stage that took 2 ms is still a visible, labelled bar.
    """
    # The object API with Figure (no pyplot): renders with Agg, touches no global backend state.
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    _, spans = _run_trace(spans)
    if not spans:
        raise ValueError("no spans to draw")
    by_id = {s["span_id"]: s for s in spans}
    t0 = min(s["start_ns"] for s in spans)
    total = max((max(s["end_ns"] for s in spans) - t0) / 1e9, 1e-6)
    bars = _bars(spans, by_id, t0, total)
    stage_names = list(dict.fromkeys(b.stage for b in bars if b.stage))
    colours = {name: matplotlib.colormaps["tab10"](i % 10) for i, name in enumerate(stage_names)}
    roles = {
        (s.get("host") or "?", s.get("pid") or 0): s.get("resource", {}).get("raypipe.process.role")
        for s in spans
    }

    lanes = _lanes(bars)
    n_rows = sum(len(rows) for rows in lanes.values())
    fig = Figure(figsize=(13, max(2.5, 0.4 * n_rows + 1.5)))
    ax = fig.subplots()
    y, ticks, labels = 0, [], []
    for lane_key, rows in sorted(
        lanes.items(), key=lambda kv: (roles.get(kv[0]) != "driver", kv[0])
    ):
        ticks.append(y + (len(rows) - 1) / 2)
        labels.append(f"{roles.get(lane_key) or 'process'} {lane_key[1]}\n{lane_key[0]}")
        for row in rows:
            for b in row:
                cached = b.label is not None and b.label.endswith("(cached)")
                ax.barh(
                    y,
                    b.width,
                    left=b.x,
                    height=0.8,
                    color=colours.get(b.stage, (0.8, 0.8, 0.8, 1.0)),
                    hatch="//" if cached else None,
                    edgecolor="red" if b.span.get("status") == "ERROR" else "black",
                    linewidth=0.5,
                )
                if b.label and b.label_inside:
                    ax.text(b.x + b.width / 2, y, b.label, ha="center", va="center", fontsize=8)
                elif b.label:
                    ax.text(
                        b.x + b.width + total * 0.003,
                        y,
                        b.label,
                        ha="left",
                        va="center",
                        fontsize=8,
                    )
            y += 1
        ax.axhline(y - 0.5, color="0.85", linewidth=0.5)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_ylim(y - 0.5, -0.5)
    ax.set_xlabel("seconds since run start")
    ax.set_xlim(0, max(b.reach for b in bars) * 1.01)
    ax.set_title(f"raypipe run timeline ({total:.2f} s)")
    ax.legend(
        handles=[Patch(color=c, label=n) for n, c in colours.items()],
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=7,
        title="stage",
        title_fontsize=7,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def profile_run(run_dir: str, png_path: str | None = None, top: int = 10) -> str:
    """The table `pipeline profile` prints; also writes the timeline PNG when `png_path` is given.

    Raises LookupError when the run has no span files (its telemetry.exporter was not "jsonl").
    """
    spans = load_run_spans(run_dir)
    if not spans:
        raise LookupError(
            f"no spans under {os.path.join(run_dir, 'spans')}: profiling needs a run made with "
            "telemetry.exporter=jsonl"
        )
    if png_path:
        render_timeline_png(spans, png_path)
    return render_table(build_profile(spans, top=top))
