"""Where a model's errors are: the test period's loss by day and by slice, summed where rows are scored.

Each scoring task reduces its rows to small sums (rows and summed loss per model, per day and per
value of each categorical input) and an evenly spaced sample of (label, prediction) pairs; the
driver merges those, never the rows. The per-row loss is the primary metric's own term, so a
group's metric means what the whole period's does: RMSE = sqrt(mean squared error) for regression,
mean log-loss for binary (probabilities clipped as `pipeline.model.metrics` clips them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

DAY = "day"
"""The dimension of the event time's UTC day (YYYY-MM-DD)."""
BASELINE = "baseline"
"""The model name of a constant baseline prediction summed beside the real models."""
SAMPLE_ROWS = 2_000  # (label, prediction) pairs per model: per task, and after the merge
MISSING = "(missing)"
OTHER = "(other values)"
_EPS = 1e-7


class Sums(BaseModel):
    rows: int
    loss: float
    """Sum of the per-row loss (squared error, or log-loss)."""


class Breakdown(BaseModel):
    groups: dict[str, dict[str, dict[str, Sums]]]
    """Dimension (`day`, or a categorical column) → value → model → sums."""
    samples: dict[str, list[tuple[float, float]]]
    """Model → evenly spaced (label, prediction) pairs, at most SAMPLE_ROWS."""


def row_loss(task: str, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The per-row term of the primary metric: squared error, or log-loss."""
    if task == "binary":
        p = np.clip(predicted, _EPS, 1 - _EPS)
        return -(truth * np.log(p) + (1 - truth) * np.log(1 - p))
    return (predicted - truth) ** 2


def group_metric(task: str, sums: Sums) -> float:
    """A group's primary metric from its sums: RMSE, or mean log-loss."""
    mean = sums.loss / sums.rows if sums.rows else float("nan")
    return float(np.sqrt(mean)) if task == "regression" else float(mean)


def summarize(task: str, table: pa.Table, label: str, event_time: str, slices: Sequence[str],
              predictions: Mapping[str, np.ndarray]) -> Breakdown:
    """One task's rows, reduced: sums by day and by each slice column's values, and a sample."""
    truth = pc.cast(table[label], pa.float64()).to_numpy(zero_copy_only=False)
    losses = {model: row_loss(task, truth, np.asarray(p, np.float64))
              for model, p in predictions.items()}
    keys = {DAY: pc.strftime(table[event_time], format="%Y-%m-%d"),
            **{column: table[column] for column in slices}}
    groups = {dimension: _sums(_labels(values), losses) for dimension, values in keys.items()}
    pick = _evenly_spaced(len(truth), SAMPLE_ROWS)
    samples = {model: list(zip(truth[pick].tolist(), np.asarray(p, np.float64)[pick].tolist()))
               for model, p in predictions.items()}
    return Breakdown(groups=groups, samples=samples)


def merge(parts: Iterable[Breakdown]) -> Breakdown:
    """The tasks' breakdowns as one: sums added, samples joined then thinned evenly."""
    groups: dict[str, dict[str, dict[str, Sums]]] = {}
    samples: dict[str, list[tuple[float, float]]] = {}
    for part in parts:
        for dimension, values in part.groups.items():
            for value, models in values.items():
                _add(groups.setdefault(dimension, {}).setdefault(value, {}), models)
        for model, pairs in part.samples.items():
            samples.setdefault(model, []).extend(pairs)
    thinned = {model: [pairs[i] for i in _evenly_spaced(len(pairs), SAMPLE_ROWS)]
               for model, pairs in samples.items()}
    return Breakdown(groups=groups, samples=thinned)


def top_values(values: Mapping[str, dict[str, Sums]], model: str,
               shown: int) -> dict[str, dict[str, Sums]]:
    """The `shown` values with the most rows (of `model`), then one group for all the others."""
    ranked = sorted(values, key=lambda v: (-values[v][model].rows if model in values[v] else 0, v))
    kept = {value: values[value] for value in ranked[:shown]}
    if len(ranked) > shown:
        kept[OTHER] = {}
        for value in ranked[shown:]:
            _add(kept[OTHER], values[value])
    return kept


def _add(into: dict[str, Sums], models: Mapping[str, Sums]) -> None:
    for model, sums in models.items():
        before = into.get(model, Sums(rows=0, loss=0.0))
        into[model] = Sums(rows=before.rows + sums.rows, loss=before.loss + sums.loss)


def _labels(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    text = pc.fill_null(pc.cast(values, pa.string()), MISSING)
    return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)


def _sums(labels: np.ndarray, losses: Mapping[str, np.ndarray]) -> dict[str, dict[str, Sums]]:
    if not len(labels):
        return {}
    values, index = np.unique(labels, return_inverse=True)
    rows = np.bincount(index, minlength=len(values))
    totals = {model: np.bincount(index, weights=loss, minlength=len(values))
              for model, loss in losses.items()}
    return {str(value): {model: Sums(rows=int(rows[i]), loss=float(total[i]))
                         for model, total in totals.items()}
            for i, value in enumerate(values)}


def _evenly_spaced(total: int, at_most: int) -> np.ndarray:
    """Indices of min(total, at_most) of `total` items, evenly spaced: deterministic."""
    return np.linspace(0, total - 1, min(total, at_most)).round().astype(np.int64)
