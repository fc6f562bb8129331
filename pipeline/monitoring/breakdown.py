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

from pipeline.core.timestamps import US_PER_DAY, column_us, from_us

DAY = "day"
"""The dimension of the event time's UTC day (YYYY-MM-DD)."""
BASELINE = "baseline"
"""The model name of a constant baseline prediction summed beside the real models."""
SAMPLE_ROWS = 2_000  # (label, prediction) pairs per model: per task, and after the merge
MISSING = "(missing)"
OTHER = "(other values)"
_EPS = 1e-7
_NO_TIME = np.iinfo(np.int64).max


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
    keys = {DAY: _days(table[event_time]), **{column: _values(table[column]) for column in slices}}
    groups = {dimension: _sums(*codes, losses) for dimension, codes in keys.items()}
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


def _days(times: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """(a code per row, the UTC day YYYY-MM-DD of each code; a null time is MISSING)."""
    micros = column_us(times, missing=_NO_TIME)
    days, codes = np.unique(micros // US_PER_DAY, return_inverse=True)  # int64: fast to sort
    return codes, [MISSING if day == _NO_TIME // US_PER_DAY
                   else from_us(int(day) * US_PER_DAY).date().isoformat() for day in days]


def _values(values: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """(a code per row, the text of each code's value; null is MISSING). Arrow's hash encoding:
    numpy's unique sorts the strings, which dominates on a column with many distinct values."""
    text = pc.fill_null(pc.cast(values, pa.string()), MISSING).combine_chunks()
    encoded = pc.dictionary_encode(text)
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


def _sums(codes: np.ndarray, names: list[str],
          losses: Mapping[str, np.ndarray]) -> dict[str, dict[str, Sums]]:
    """Rows and summed loss per value, in value order."""
    rows = np.bincount(codes, minlength=len(names))
    totals = {model: np.bincount(codes, weights=loss, minlength=len(names))
              for model, loss in losses.items()}
    return {name: {model: Sums(rows=int(rows[i]), loss=float(total[i]))
                   for model, total in totals.items()}
            for i, name in sorted(enumerate(names), key=lambda pair: pair[1])}


def _evenly_spaced(total: int, at_most: int) -> np.ndarray:
    """Indices of min(total, at_most) of `total` items, evenly spaced: deterministic."""
    return np.linspace(0, total - 1, min(total, at_most)).round().astype(np.int64)
