"""Drift: the test period against the champion's training split, per feature and label (PSI).

A copy of the smoke source has the pace of its busiest pickup zones (a third of the trips) doubled
from the first day of the test period on (durations, paces and completion times of those trips);
run through the CLI on top of the shared smoke run's artifacts, with that run's model as the
champion, the zones' pace features and the label are flagged, and every feature that reads no pace
is not, with the very PSI it had before. (One zone alone, a few percent of the trips, moves a PSI
over all rows by less than 0.05: drift here is a property of the population, not of a slice.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.datasets import read_marker, write_partitioned
from pipeline.engine.artifacts import ArtifactStore
from pipeline.monitoring.drift import Histogram, psi
from pipeline.registry.store import move_alias, versions
from tests.conftest import SMOKE, run_cli

SHIFT_FROM = "2026-01-12"  # the smoke config's test period starts 2026-01-12 01:00
MODEL = "trip-duration"
SHIFTED = {"pickup_zone__pace_min_per_km__mean__1h", "pickup_zone__pace_min_per_km__std__1h",
           "duration_min"}
UNTOUCHED = {"distance_km", "driver_id__rows__count__7d",
             "driver_id__rows__time_since_last__1d", "pickup_zone__rows__count__15m"}
"""Features that read no pace, duration or completion time: the shift cannot move them."""


def shifted_copy(source: Path, target: Path) -> list[int]:
    """`source` with the trips of its busiest pickup zones (a third of those from SHIFT_FROM on)
    twice as slow from SHIFT_FROM on; the zones."""
    table = pads.dataset(source, format="parquet", partitioning="hive").to_table()
    late = pc.greater_equal(table["day"], SHIFT_FROM)
    counts = sorted(((c["counts"], c["values"]) for c in pc.value_counts(
        table.filter(late)["pickup_zone"]).to_pylist() if c["values"] is not None), reverse=True)
    zones, covered = [], 0
    while covered < sum(n for n, _ in counts) / 3:
        covered += counts[len(zones)][0]
        zones.append(counts[len(zones)][1])
    hit = pc.and_(late, pc.fill_null(pc.is_in(table["pickup_zone"], pa.array(zones, pa.int32())),
                                      False))

    def doubled(name: str) -> pa.ChunkedArray:
        return pc.if_else(hit, pc.multiply(table[name], 2.0), table[name])

    requested, completed = (pc.cast(table[name], pa.int64())
                            for name in ("requested_at", "completed_at"))
    later = pc.add(requested, pc.multiply(pc.subtract(completed, requested), 2))
    columns = {"duration_min": doubled("duration_min"),
               "pace_min_per_km": doubled("pace_min_per_km"),
               "completed_at": pc.cast(pc.if_else(hit, later, completed),
                                       table.schema.field("completed_at").type)}
    for name, column in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    write_partitioned(table, str(target), metadata=read_marker(str(source)))
    return zones


def _drift(root: Path) -> dict:
    return versions(ArtifactStore(str(root)), MODEL)[-1]["drift"]


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift():
    reference = Histogram(edges=[1.0, 2.0], counts=[50, 30, 20], missing=0)
    assert psi(reference, reference.model_copy(update={"counts": [5, 3, 2]})) == 0
    small = psi(reference, reference.model_copy(update={"counts": [45, 30, 25]}))
    large = psi(reference, reference.model_copy(update={"counts": [20, 30, 50]}))
    assert 0 < small < 0.1 < 0.25 < large
    assert psi(reference, reference.model_copy(update={"counts": [50, 30, 0], "missing": 20})) > 1


def test_zones_twice_as_slow_are_flagged_on_their_pace_features_only(smoke_run, smoke_copy,
                                                                  smoke_source, tmp_path):
    before = _drift(smoke_run.root)
    assert before["status"] == "ok" and before["reference"].endswith("(no champion yet)")
    root, overrides = smoke_copy
    move_alias(ArtifactStore(str(root)), MODEL, "champion", "v1", "drift test")
    source = tmp_path / "shifted"
    shifted_copy(smoke_source, source)

    code, output, summary = run_cli("run", "-c", str(SMOKE), *overrides,
                                    "--set", f"dataset.source={source}", "--json")
    assert code == 3, output  # ran fine, not shipped (the gate rejected it: drift)
    after = _drift(root)
    assert after["reference"] == "champion v1"
    psis = {name: f["psi"] for name, f in after["features"].items()}
    flagged = {name for name, f in after["features"].items() if f["status"] != "ok"}
    assert SHIFTED <= flagged, psis
    assert not flagged & UNTOUCHED, psis
    assert {name: psis[name] for name in UNTOUCHED} == {
        name: before["features"][name]["psi"] for name in UNTOUCHED}
    # at or above evaluate.drift.fail: registered, not promoted, and the reason says why
    assert after["status"] == "fail" and summary["promoted"] is False
    entry = versions(ArtifactStore(str(root)), MODEL)[-1]
    assert "drift fail vs champion v1 (PSI pickup_zone__pace_min_per_km__mean__1h" in entry["reason"]
    metrics = root / "runs" / summary["run_id"] / "metrics.jsonl"
    gauges = {row["attributes"]["feature"]: row["value"] for row in map(
        json.loads, metrics.read_text().splitlines()) if row["name"] == "pipeline.drift.psi"}
    assert gauges.keys() == psis.keys()
    assert all(abs(gauges[name] - psis[name]) < 1e-6 for name in psis)
