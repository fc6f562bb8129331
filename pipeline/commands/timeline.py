"""A run's timeline from its spans: a PNG, and a Chrome trace / Perfetto JSON for a trace viewer.

Both draw one lane per process, grouped by Ray node: a worker span carries its Ray node id
(`node`), and driver spans, recorded before Ray started, join the node on the driver's host.
Every span is labelled: stage bars with their stage, child spans with their short name and their
chunk or epoch number (`chunk 2`, `epoch 3`).

    render_timeline_png(spans, "timeline.png"); write_chrome_trace(spans, "timeline.json")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pipeline.commands.run_spans import ROOT_NAME, STAGE_PREFIX, run_trace, stage_of, wall_seconds

REPEATED = 6  # a span name seen more often than this is labelled only where the label fits
NUMBERED_BY = ("chunk.index", "epoch", "file.index", "batch.index")


@dataclass(frozen=True, order=True)
class Lane:
    """One process, within its node: what a lane of the timeline is."""

    node_order: int  # the driver's node first
    node: str  # "node 1a2b3c4d (host)", or "host h" when the node is unknown
    process_order: int  # the driver first on its node
    process: str  # "driver 1234" / "worker 5678"
    pid: int


def lanes_of(spans: list[dict]) -> dict[str, Lane]:
    """span_id -> the lane (node, process) the span ran in."""
    driver_hosts = {s.get("host") for s in spans if _role(s) == "driver"}
    nodes_by_host: dict[str, set[str]] = {}
    for s in spans:
        if s.get("node"):
            nodes_by_host.setdefault(s.get("host") or "?", set()).add(s["node"])

    def node_of(span: dict) -> str:
        host = span.get("host") or "?"
        node = span.get("node")
        if not node and len(nodes_by_host.get(host, ())) == 1:
            node = next(iter(nodes_by_host[host]))  # a driver before Ray: its host's one node
        return f"node {node[:8]} ({host})" if node else f"host {host}"

    def node_order(span: dict) -> int:
        return 0 if (span.get("host") in driver_hosts) else 1

    return {
        s["span_id"]: Lane(node_order(s), node_of(s), 0 if _role(s) == "driver" else 1,
                           f"{_role(s) or 'process'} {s.get('pid') or 0}", s.get("pid") or 0)
        for s in spans
    }


def _role(span: dict) -> str | None:
    return span.get("resource", {}).get("raypipe.process.role")


def label(span: dict, stage: str | None) -> str:
    """`run`, `ingest (cached)`, or a child span's short name with its number: `chunk 2`."""
    name = span["name"]
    if name == ROOT_NAME:
        return ROOT_NAME
    if name.startswith(STAGE_PREFIX):
        cached = span["attributes"].get("stage.status") == "cached"
        return (stage or name) + (" (cached)" if cached else "")
    short = name.split(".", 1)[1] if "." in name else name
    number = next((span["attributes"][k] for k in NUMBERED_BY if k in span["attributes"]), None)
    return f"{short} {number}" if number is not None else short


# -- PNG -----------------------------------------------------------------------------------------
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
    """Position every span; a label goes inside its bar when it fits, else to the right of it
    (unless the name repeats so often that outside labels would pile up)."""
    min_w = total * 0.006
    char_w = total / 150  # ~ one 8pt character on a 12-inch-wide axis
    counts: dict[str, int] = {}
    for s in spans:
        counts[s["name"]] = counts.get(s["name"], 0) + 1
    bars = []
    for s in spans:
        stage = stage_of(s, by_id)
        x, width = (s["start_ns"] - t0) / 1e9, max(wall_seconds(s), min_w)
        text = label(s, stage)
        inside = width > char_w * (len(text) + 2)
        if not inside and counts[s["name"]] > REPEATED:
            text = None
        reach = x + width + (0 if inside or text is None else char_w * (len(text) + 2))
        bars.append(_Bar(s, stage, x, width, text, inside, reach))
    return bars


def _rows(bars: list[_Bar], lanes: dict[str, Lane]) -> dict[Lane, list[list[_Bar]]]:
    """Per lane: rows of bars that do not overlap as drawn (parents first)."""
    rows_by_lane: dict[Lane, list[list[_Bar]]] = {}
    for bar in sorted(bars, key=lambda b: (b.x, -b.width)):
        rows = rows_by_lane.setdefault(lanes[bar.span["span_id"]], [])
        for row in rows:
            if row[-1].reach <= bar.x:
                row.append(bar)
                break
        else:
            rows.append([bar])
    return dict(sorted(rows_by_lane.items()))


def render_timeline_png(spans: list[dict], path: str) -> str:
    """One lane per process, grouped by node; bars coloured by stage (hatched when cached, red
    edge on error). Bars are at least 0.6% of the run wide, so a near-instant cached stage still
    shows."""
    # The object API with Figure (no pyplot): renders with Agg, touches no global backend state.
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    _, spans = run_trace(spans)
    if not spans:
        raise ValueError("no spans to draw")
    by_id = {s["span_id"]: s for s in spans}
    t0 = min(s["start_ns"] for s in spans)
    total = max((max(s["end_ns"] for s in spans) - t0) / 1e9, 1e-6)
    bars = _bars(spans, by_id, t0, total)
    stage_names = list(dict.fromkeys(b.stage for b in bars if b.stage))
    colours = {name: matplotlib.colormaps["tab10"](i % 10) for i, name in enumerate(stage_names)}

    rows_by_lane = _rows(bars, lanes_of(spans))
    n_rows = sum(len(rows) for rows in rows_by_lane.values())
    fig = Figure(figsize=(14, max(3, 0.42 * n_rows + 1.8)))
    ax = fig.subplots()
    y, ticks, tick_labels, node = 0, [], [], None
    for lane, rows in rows_by_lane.items():
        if lane.node != node:  # a node heading above its processes
            node = lane.node
            ax.text(0, y - 0.5, f" {node}", ha="left", va="bottom", fontsize=8, weight="bold",
                    transform=ax.get_yaxis_transform())
            if y:
                ax.axhline(y - 0.5, color="0.4", linewidth=1.0)
        ticks.append(y + (len(rows) - 1) / 2)
        tick_labels.append(lane.process)
        for row in rows:
            for b in row:
                cached = b.label is not None and b.label.endswith("(cached)")
                ax.barh(y, b.width, left=b.x, height=0.8,
                        color=colours.get(b.stage, (0.8, 0.8, 0.8, 1.0)),
                        hatch="//" if cached else None,
                        edgecolor="red" if b.span.get("status") == "ERROR" else "black",
                        linewidth=0.5)
                if b.label and b.label_inside:
                    ax.text(b.x + b.width / 2, y, b.label, ha="center", va="center", fontsize=7)
                elif b.label:
                    ax.text(b.x + b.width + total * 0.003, y, b.label, ha="left", va="center",
                            fontsize=7)
            y += 1
        ax.axhline(y - 0.5, color="0.85", linewidth=0.5)
    ax.set_yticks(ticks, tick_labels, fontsize=7)
    ax.set_ylim(y - 0.5, -1.2)
    ax.set_xlabel("seconds since run start")
    ax.set_xlim(0, max(b.reach for b in bars) * 1.01)
    ax.set_title(f"raypipe run timeline ({total:.2f} s)")
    ax.legend(handles=[Patch(color=c, label=n) for n, c in colours.items()], loc="upper left",
              bbox_to_anchor=(1.005, 1.0), fontsize=7, title="stage", title_fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# -- Chrome trace / Perfetto ------------------------------------------------------------------
def chrome_trace(spans: list[dict]) -> dict:
    """The Trace Event Format (ui.perfetto.dev, chrome://tracing): each node a process (`pid`),
    each OS process a thread of it (`tid`), each span a complete event (`ph: X`, µs)."""
    root, spans = run_trace(spans)
    if not spans:
        raise ValueError("no spans to export")
    by_id = {s["span_id"]: s for s in spans}
    lanes = lanes_of(spans)
    t0 = min(s["start_ns"] for s in spans)
    nodes = {node: i + 1 for i, node in enumerate(sorted({(lane.node_order, lane.node)
                                                           for lane in lanes.values()}))}
    events: list[dict] = []
    for (_, node), pid in nodes.items():
        events += [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                    "args": {"name": node}},
                   {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                    "args": {"sort_index": pid}}]
    for lane in sorted(set(lanes.values())):
        pid = nodes[(lane.node_order, lane.node)]
        events += [{"ph": "M", "name": "thread_name", "pid": pid, "tid": lane.pid,
                    "args": {"name": lane.process}},
                   {"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": lane.pid,
                    "args": {"sort_index": lane.process_order}}]
    for s in spans:
        lane, stage = lanes[s["span_id"]], stage_of(s, by_id)
        events.append({
            "ph": "X", "name": label(s, stage), "cat": stage or s["name"],
            "ts": (s["start_ns"] - t0) / 1e3, "dur": wall_seconds(s) * 1e6,
            "pid": nodes[(lane.node_order, lane.node)], "tid": lane.pid,
            "args": {"span": s["name"], "status": s.get("status", "UNSET"),
                     **s.get("attributes", {})},
        })
    attributes = root["attributes"] if root else {}
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"run_id": attributes.get("run.id"),
                          "trace_id": root["trace_id"] if root else None}}


def write_chrome_trace(spans: list[dict], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(chrome_trace(spans), handle)
    return path
