"""The evaluation report: one self-contained HTML file per registry version, written with it.

Read from the shared smoke run (v1, the first champion); the rejected candidate's report is
checked in test_champion_gate.py, where such a run exists. The error breakdown's sums are checked
against the whole-period metrics on hand-built rows, and a report that fails to render leaves no
version and no report behind.
"""

from __future__ import annotations

import base64
import json
import re
from html import escape

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import SMOKE, run_cli

MODEL = "trip-duration"


def _report(root) -> str:
    return (root / "registry" / MODEL / "v1" / "report.html").read_text(encoding="utf-8")


def test_the_smoke_run_writes_one_self_contained_report_with_metrics_decision_and_lineage(
        smoke_run):
    html = _report(smoke_run.root)
    version = smoke_run.root / "registry" / MODEL / "v1"
    decision = json.loads((version / "decision.json").read_text())
    entry = json.loads((version / "entry.json").read_text())

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) >= 3  # by day, predicted vs actual, one per categorical column
    for image in images:
        assert image.startswith("data:image/png;base64,")
        png = base64.b64decode(image.split(",", 1)[1], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) < 200_000
    assert {"Error by pickup_zone", "Error by dropoff_zone"} <= set(
        re.findall(r'<img alt="([^"]+)"', html))

    assert "<h1>trip-duration@v1</h1>" in html
    assert "Promoted: passed the gate; the first champion" in html
    for name in ("mae", "rmse", "mse"):
        assert f"<td>{name}</td>" in html
        assert f"{decision['candidate'][name]:.4g}" in html
        assert f"{decision['baseline'][name]:.4g}" in html
    for reason in decision["reasons"]:
        assert f"<li>{escape(reason)}</li>" in html
    assert entry["lineage"]["ingest"]["fingerprint"] in html
    assert all(item["cache_key"] in html for item in entry["lineage"].values())
    assert entry["evaluate_cache_key"] in html
    assert smoke_run.summary["trace_id"] in html and smoke_run.summary["run_id"] in html
    assert "rideshare-smoke" in html
    assert all(f"<td>{name}</td>" in html for name in entry["drift"]["features"])


def test_models_show_prints_where_the_report_is(smoke_run):
    code, output, _ = run_cli("models", "show", f"{MODEL}@v1", "-c", str(SMOKE),
                              *smoke_run.overrides)
    assert code == 0, output
    path = smoke_run.root / "registry" / MODEL / "v1" / "report.html"
    assert f"  report:      {path}\n" in output and "(not written)" not in output


def test_the_breakdown_sums_add_up_to_the_whole_period_metric():
    from pipeline.model.metrics import compute_metrics
    from pipeline.monitoring.breakdown import (
        DAY,
        MISSING,
        OTHER,
        group_metric,
        merge,
        summarize,
        top_values,
    )

    rng = np.random.default_rng(3)
    rows = 5_000
    truth = rng.gamma(2.0, 6.0, rows)
    predicted = truth + rng.normal(0, 3, rows)
    zone = pa.array([None if i % 97 == 0 else int(z) for i, z in
                     enumerate(rng.integers(0, 30, rows))], pa.int32())
    minutes = rng.integers(0, 3 * 1440, rows).astype("timedelta64[m]")
    at = (np.datetime64("2026-01-12T00:00") + minutes).astype("datetime64[s]")
    table = pa.table({"label": truth, "zone": zone, "at": pa.array(at)})
    parts = [summarize("regression", table.slice(start, 1_000), "label", "at", ["zone"],
                       {"model": predicted[start:start + 1_000]})
             for start in range(0, rows, 1_000)]
    merged = merge(parts)

    days = merged.groups[DAY]
    assert sorted(days) == ["2026-01-12", "2026-01-13", "2026-01-14"]
    whole = sum(day["model"].loss for day in days.values())
    assert sum(day["model"].rows for day in days.values()) == rows
    assert np.sqrt(whole / rows) == pytest.approx(
        compute_metrics("regression", truth, predicted)["rmse"], rel=1e-12)
    first = days["2026-01-12"]["model"]
    in_day = at < np.datetime64("2026-01-13")
    assert group_metric("regression", first) == pytest.approx(
        compute_metrics("regression", truth[in_day], predicted[in_day])["rmse"], rel=1e-12)

    zones = merged.groups["zone"]
    assert zones[MISSING]["model"].rows == len(range(0, rows, 97))
    shown = top_values(zones, "model", 5)
    assert list(shown)[-1] == OTHER and len(shown) == 6
    assert sum(s["model"].rows for s in shown.values()) == rows
    assert len(merged.samples["model"]) == 2_000
    assert merged.samples["model"][0] == (truth[0], predicted[0])


def test_a_report_that_fails_to_render_leaves_no_version_and_no_report(tmp_path):
    from pipeline.engine.artifacts import ArtifactStore
    from pipeline.registry.store import REPORT, register, versions

    store = ArtifactStore(str(tmp_path / "artifacts"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text("{}")

    def broken(version: str) -> str:
        raise RuntimeError(f"cannot draw {version}")

    with pytest.raises(RuntimeError, match="cannot draw v1"):
        register(store, "m", str(model_dir), {"evaluate_cache_key": "k1"}, {}, broken)
    assert versions(store, "m") == []
    assert not list((tmp_path / "artifacts").rglob(REPORT))

    entry = register(store, "m", str(model_dir), {"evaluate_cache_key": "k2"}, {},
                     lambda version: f"<h1>m@{version}</h1>")
    assert entry["version"] == "v2"  # v1's number stays claimed by the failed attempt
    assert (tmp_path / "artifacts" / "registry" / "m" / "v2" / REPORT).read_text() == "<h1>m@v2</h1>"
    assert [p.name for p in (tmp_path / "artifacts" / "registry" / "m" / "v2").iterdir()
            if p.name.endswith(".tmp")] == []
