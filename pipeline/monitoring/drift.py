"""Drift: how far the newest data has moved from the data the production model learned from.

Train stores a histogram of every feature and of the label over its training split (`Histogram`,
in its manifest facts): values in bins cut at the deciles of a sample of those rows, and a bin for
missing values (a window with no history). Only rows whose windows are complete count (see
`training_histograms`). Categorical inputs are not compared: a category mix moves with demand
from day to day (in the synthetic data too) and would need thresholds of its own. Evaluate bins
the rows of the test period, the newest rows a run has and the ones its gate judges on, with the
same bins as it scores them (`TestPeriodCounter`: no second read), and computes the population
stability index

    PSI = sum over bins of (current share - reference share) * ln(current share / reference share)

per feature against the histograms of the champion's training split, found through the champion's
registry entry (its lineage names its train artifact). Without a champion, or when its train
manifest holds no histograms, the reference is this candidate's own training split, and the
report says so. A feature at or above `evaluate.drift.warn` is reported as drifted; one at or above
`evaluate.drift.fail` blocks promotion (the candidate is still registered, with the reason).
Each PSI is also an OpenTelemetry gauge, `pipeline.drift.psi{feature, model}`, for alerting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import BaseModel

from pipeline.core.config import DriftConfig
from pipeline.core.packed import unpack
from pipeline.core.schema import Roles
from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.stage import StageContext
from pipeline.registry.store import CHAMPION, resolve

BINS = 10  # deciles
SAMPLE_PER_BLOCK = 2_000  # rows per block that set the bins: bounded, whatever the data size
SMALLEST_SHARE = 1e-4  # an empty bin counts as this share, so PSI stays finite


class Histogram(BaseModel):
    """Counts of one column's values in bins between `edges` (below the first, between each two,
    from the last up); `missing` counts nulls and NaN."""

    edges: list[float]
    counts: list[int]
    missing: int

    @property
    def total(self) -> int:
        return sum(self.counts) + self.missing

    def shares(self) -> np.ndarray:
        return np.array([*self.counts, self.missing], np.float64) / max(self.total, 1)


class FeatureDrift(BaseModel):
    psi: float
    status: Literal["ok", "warn", "fail"]


class DriftReport(BaseModel):
    reference: str
    """Whose training split the test period was compared with."""
    rows: int
    """Test-period rows binned."""
    warn: float
    fail: float | None
    features: dict[str, FeatureDrift]
    """Every feature and the label (under its column name), by PSI."""
    not_compared: dict[str, str]
    """Features without a reference histogram, and why."""
    status: Literal["ok", "warn", "fail"]

    @property
    def blocks_promotion(self) -> bool:
        return self.status == "fail"

    @property
    def summary(self) -> str:
        drifted = {name: f.psi for name, f in self.features.items() if f.status != "ok"}
        listed = ", ".join(f"{name} {psi:.2f}" for name, psi in
                           sorted(drifted.items(), key=lambda item: -item[1]))
        return f"drift {self.status} vs {self.reference}" + (f" (PSI {listed})" if listed else "")


@dataclass(frozen=True)
class Columns:
    """Where each compared column is: the packed tensor and its layout, the label, and the event
    time."""

    packed: str
    features: Sequence[str]
    label: str
    event_time: str

    @classmethod
    def of(cls, featurize_facts, roles: Roles) -> Columns:
        """The columns of featurize's output (its `FeaturizeFacts`) and the label."""
        return cls(featurize_facts.packed_column, featurize_facts.feature_columns, roles.label,
                   roles.event_time)


# -- train: the reference histograms ---------------------------------------------------------
def training_histograms(ctx: StageContext, parts: list[ray.ObjectRef], columns: Columns,
                        warm_up: timedelta) -> dict[str, Histogram]:
    """Histograms of every feature and the label over the rows of `parts` (tables with a `split`
    column) whose split is train and whose windows are complete: at least `warm_up` (the longest
    window) after the first event, so that the data's own beginning, where every window is short
    of history, does not read as drift (all training rows where none is that late). Two rounds
    of tasks over the parts: a sample that sets the bins, then the counts."""
    sampled = ray.get([ctx.task(_first_event_and_sample, "drift.sample").remote(part, columns)
                       for part in parts])
    firsts = [first for first, _ in sampled if first is not None]
    if not firsts:
        return {}
    sample = pa.concat_tables([table for _, table in sampled])
    complete = min(firsts) + warm_up
    late = _training_rows(sample, columns.event_time, complete)
    start = complete if late.num_rows else None
    sample = late if late.num_rows else sample
    bins = _bins(_values(sample, columns)) if sample.num_rows else {}
    counter = ctx.task(_count_training_rows, "drift.count")
    histograms = _sum(ray.get([counter.remote(part, columns, bins, start) for part in parts]),
                      bins)
    if start is not None and not any(h.total for h in histograms.values()):
        histograms = _sum(ray.get([counter.remote(part, columns, bins, None) for part in parts]),
                          bins)
    return histograms


def _first_event_and_sample(part: pa.Table, columns: Columns) -> tuple[datetime | None, pa.Table]:
    """The part's first event time (of any split) and an evenly spaced sample of its training
    rows, the columns the histograms read."""
    first = pc.min(part[columns.event_time]).as_py()
    training = _training_rows(part, columns.event_time, None)
    step = max(1, -(-training.num_rows // SAMPLE_PER_BLOCK))
    sample = training.take(pa.array(np.arange(0, training.num_rows, step), pa.int64()))
    return first, sample.select([columns.event_time, columns.packed, columns.label, "split"])


def _count_training_rows(part: pa.Table, columns: Columns, bins: dict[str, Histogram],
                         start: datetime | None) -> dict:
    return _count_block(_training_rows(part, columns.event_time, start), columns, bins)


def _training_rows(batch: pa.Table, event_time: str, start: datetime | None) -> pa.Table:
    """Rows of the training split with event time from `start` on (any, for None)."""
    train = pc.equal(batch["split"], "train")
    if start is not None:
        train = pc.and_(train, pc.greater_equal(batch[event_time],
                                                pa.scalar(start, batch[event_time].type)))
    return batch.filter(train)


def _bins(values: dict[str, np.ndarray]) -> dict[str, Histogram]:
    """Empty histograms with the bins a sample calls for."""
    bins = {}
    for name, column in values.items():
        finite = column[np.isfinite(column)]
        cuts = np.quantile(finite, np.linspace(0, 1, BINS + 1)[1:-1]) if len(finite) else []
        bins[name] = Histogram(edges=sorted(set(float(c) for c in cuts)), counts=[], missing=0)
    return bins


# -- both sides: counting --------------------------------------------------------------------
def _count_block(block: pa.Table, columns: Columns, bins: dict[str, Histogram]) -> dict:
    """{column: (counts per bin, missing)} of one block's rows."""
    values = _values(block, columns)
    counts = {}
    for name, histogram in bins.items():
        present = values[name][np.isfinite(values[name])]
        slot = np.searchsorted(np.array(histogram.edges), present, side="right")
        counts[name] = (np.bincount(slot, minlength=len(histogram.edges) + 1),
                        len(values[name]) - len(present))
    return counts


def _sum(parts: list[dict], bins: dict[str, Histogram]) -> dict[str, Histogram]:
    """The blocks' counts added up, as filled copies of `bins`."""
    totals = {name: (np.zeros(len(h.edges) + 1, np.int64), 0) for name, h in bins.items()}
    for part in parts:
        for name, (counts, missing) in part.items():
            total, absent = totals[name]
            totals[name] = (total + counts, absent + missing)
    return {name: bins[name].model_copy(update={"counts": total.tolist(), "missing": int(absent)})
            for name, (total, absent) in totals.items()}


def _values(table: pa.Table, columns: Columns) -> dict[str, np.ndarray]:
    """The features (from the packed tensor) and the label as float64, NaN for missing."""
    matrix = unpack(table, columns.packed)
    values = {name: matrix[:, i] for i, name in enumerate(columns.features)}
    label = pc.cast(table[columns.label], pa.float64())
    values[columns.label] = pc.fill_null(label, np.nan).to_numpy(zero_copy_only=False)
    return values


# -- evaluate: the comparison ----------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """The histograms the test period is compared with, and whose training split they count."""

    who: str
    histograms: dict[str, Histogram]
    """Compared column -> its reference bins and counts."""
    not_compared: dict[str, str]
    """Features (and the label) without a reference histogram, and why."""


def drift_reference(store: ArtifactStore, model: str, own: dict[str, Histogram],
                    columns: Columns) -> Reference:
    """The champion's training histograms, or `own` (the candidate's) without a usable champion."""
    who, histograms = champion_histograms(store, model)
    if histograms is None:
        who, histograms = f"this candidate's training split ({who})", own
    compared = [*columns.features, columns.label]
    return Reference(who, {name: histograms[name] for name in compared if name in histograms},
                     {name: f"not in the histograms of {who}"
                      for name in compared if name not in histograms})


@dataclass(frozen=True)
class TestPeriodCounter:
    """Bins the test rows that scoring reads anyway: drift costs no second pass over the files.

    A scoring call counts its rows (`count`); the calls' counts are added (`add_counts`) and
    compared with the reference (`drift_report`).
    """

    columns: Columns
    bins: dict[str, Histogram]

    def count(self, rows: pa.Table) -> dict:
        return _count_block(rows, self.columns, self.bins)


def add_counts(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
    """Two calls' counts of one column added: (counts per bin, missing)."""
    return a[0] + b[0], a[1] + b[1]


def drift_report(ctx: StageContext, reference: Reference, counts: dict, label: str, model: str,
                 settings: DriftConfig) -> DriftReport:
    """PSI of every compared feature and the label from the test period's `counts` (the scoring
    calls' counts added up); each also set as the gauge `pipeline.drift.psi`."""
    current = _sum([counts], reference.histograms)
    gauge = ctx.telemetry.gauge("pipeline.drift.psi", "1", "population stability index of a "
                                "feature, test period vs the champion's training split")
    features = {}
    for name, histogram in current.items():
        value = psi(reference.histograms[name], histogram)
        features[name] = FeatureDrift(psi=round(value, 6), status=_status(value, settings))
        gauge.set(value, {"feature": name, "model": model})
    statuses = {f.status for f in features.values()}
    return DriftReport(
        reference=reference.who, rows=current[label].total if label in current else 0,
        warn=settings.warn, fail=settings.fail, features=features,
        not_compared=reference.not_compared,
        status="fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok")


def champion_histograms(store: ArtifactStore,
                        model: str) -> tuple[str, dict[str, Histogram] | None]:
    """(who, histograms) of the champion's training split; histograms None (and who says why)
    when there is no champion or its train artifact holds none."""
    try:
        entry = resolve(store, model, CHAMPION)
    except LookupError:
        return "no champion yet", None
    who = f"champion {entry['version']}"
    train = entry.get("lineage", {}).get("train")
    artifact = store.find("train", train["cache_key"]) if train else None
    if artifact is None:
        return f"{who}'s train artifact is not in this artifact root", None
    stored = artifact.manifest.get("details", {}).get("feature_histograms")
    if not stored:
        return f"{who}'s train manifest has no histograms", None
    return who, {name: Histogram.model_validate(h) for name, h in stored.items()}


def psi(reference: Histogram, current: Histogram) -> float:
    """Population stability index of two histograms with the same bins (missing values a bin)."""
    expected = np.maximum(reference.shares(), SMALLEST_SHARE)
    actual = np.maximum(current.shares(), SMALLEST_SHARE)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _status(value: float, settings: DriftConfig) -> Literal["ok", "warn", "fail"]:
    if settings.fail is not None and value >= settings.fail:
        return "fail"
    return "warn" if value >= settings.warn else "ok"
