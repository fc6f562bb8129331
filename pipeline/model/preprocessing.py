"""What the model does to a row before the network sees it, fit on the training split alone.

- Packed numeric features (the `features` fixed-size list): standardised with the training split's
  NaN-aware mean and standard deviation; a missing value (NaN) becomes 0 after standardising, i.e. the
  training mean.
- Categorical columns: a vocabulary of the values seen in the training split; code 0 is reserved for
  values outside it (and nulls), so a zone that first appears in the test period is "unknown", not an
  error and not a peek at the future.
- Regression labels are standardised too (the network learns on that scale; `Preprocessor` maps
  predictions back). Binary labels stay 0/1.

Fitting is a map/merge: `FitStatistics.of(table)` summarises one batch, `merge` combines two, so Ray
Data can fit over any number of blocks, and `finish` gives a `Preprocessor`, a small JSON document
that travels with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.packed import unpack

FORMAT_VERSION = 1


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations per column (Chan et al.'s parallel update)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, matrix: np.ndarray) -> _Moments:
        finite = np.isfinite(matrix)
        count = finite.sum(axis=0).astype(np.float64)
        filled = np.where(finite, matrix, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, filled.sum(axis=0) / np.maximum(count, 1), 0.0)
        deviation = np.where(finite, matrix - mean, 0.0)
        return cls(count, mean, (deviation**2).sum(axis=0))

    def merge(self, other: _Moments) -> _Moments:
        count = self.count + other.count
        safe = np.maximum(count, 1)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / safe
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / safe
        return _Moments(count, mean, m2)

    def mean_std(self) -> tuple[list[float], list[float]]:
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        std = np.where((self.count > 0) & (std > 0), std, 1.0)  # constant or empty: no scaling
        mean = np.where(self.count > 0, self.mean, 0.0)
        return mean.tolist(), std.tolist()


def _category_kind(values: pa.ChunkedArray | pa.Array) -> str:
    return "int" if pa.types.is_integer(values.type) or pa.types.is_boolean(values.type) else "string"


def _as_kind(values: pa.ChunkedArray | pa.Array, kind: str) -> pa.ChunkedArray | pa.Array:
    return values.cast(pa.int64() if kind == "int" else pa.string())


@dataclass
class FitStatistics:
    """Mergeable summary of training rows: feature moments, label moments, category values."""

    features: _Moments
    label: _Moments
    categories: dict[str, set] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    rows: int = 0

    @classmethod
    def of(cls, table: pa.Table, categorical: list[str], label: str) -> FitStatistics:
        labels = table[label].cast(pa.float64()).to_numpy(zero_copy_only=False)
        categories, kinds = {}, {}
        for name in categorical:
            kind = kinds[name] = _category_kind(table[name])
            distinct = pc.unique(_as_kind(table[name], kind)).drop_null()
            categories[name] = set(distinct.to_pylist())
        return cls(_Moments.of(unpack(table)), _Moments.of(labels[:, None]),
                   categories, kinds, table.num_rows)

    def merge(self, other: FitStatistics) -> FitStatistics:
        kinds = {**self.kinds, **other.kinds}
        for name, kind in self.kinds.items():
            if other.kinds.get(name, kind) != kind:  # an int block and a string block: use strings
                kinds[name] = "string"
        categories = {}
        for name, kind in kinds.items():
            values = self.categories.get(name, set()) | other.categories.get(name, set())
            categories[name] = {str(v) for v in values} if kind == "string" else values
        return FitStatistics(self.features.merge(other.features), self.label.merge(other.label),
                             categories, kinds, self.rows + other.rows)

    @property
    def label_mean(self) -> float:
        """The mean label of the rows seen (for a binary label, the positive rate)."""
        return float(self.label.mean[0])

    def finish(self, feature_columns: list[str], categorical: list[str], label: str,
               task: str) -> Preprocessor:
        if self.rows == 0:
            raise ValueError("the training split is empty: nothing to fit preprocessing on")
        mean, std = self.features.mean_std()
        if len(mean) != len(feature_columns):
            raise ValueError(f"the features column packs {len(mean)} values but the featurize "
                             f"manifest names {len(feature_columns)} feature_columns")
        label_mean, label_std = self.label.mean_std()
        if task == "binary":
            label_mean, label_std = [0.0], [1.0]
        vocabularies = [
            {"column": name, "kind": self.kinds[name], "values": sorted(self.categories[name])}
            for name in categorical
        ]
        return Preprocessor(feature_columns=list(feature_columns), mean=mean, std=std,
                            categorical=vocabularies, label=label, task=task,
                            label_mean=label_mean[0], label_std=label_std[0], fit_rows=self.rows)


@dataclass
class Preprocessor:
    """The fitted transform: JSON in, JSON out (`to_json` / `from_json`), no pickles."""

    feature_columns: list[str]
    mean: list[float]
    std: list[float]
    categorical: list[dict[str, Any]]
    """[{"column", "kind": "int"|"string", "values": [...]}] in model input order."""
    label: str
    task: str
    label_mean: float = 0.0
    label_std: float = 1.0
    fit_rows: int = 0

    @property
    def categorical_columns(self) -> list[str]:
        return [v["column"] for v in self.categorical]

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes: the vocabulary plus the out-of-vocabulary code 0."""
        return [len(v["values"]) + 1 for v in self.categorical]

    def features(self, table: pa.Table) -> np.ndarray:
        """Standardised float32 (rows, n) features; missing values are 0 (the training mean)."""
        matrix = unpack(table)
        if matrix.shape[1] != len(self.mean):
            raise ValueError(f"features column has {matrix.shape[1]} values, the model expects "
                             f"{len(self.mean)} ({', '.join(self.feature_columns)})")
        scaled = (matrix - np.asarray(self.mean)) / np.asarray(self.std)
        return np.where(np.isfinite(scaled), scaled, 0.0).astype(np.float32)

    def codes(self, table: pa.Table) -> np.ndarray:
        """int64 (rows, k) vocabulary codes; 0 = not seen in training (or null)."""
        columns = []
        for vocabulary in self.categorical:
            kind = vocabulary["kind"]
            values = _as_kind(table[vocabulary["column"]], kind)
            value_set = pa.array(vocabulary["values"], pa.int64() if kind == "int" else pa.string())
            index = pc.index_in(values, value_set=value_set)
            codes = pc.fill_null(pc.add(index.cast(pa.int64()), 1), 0)
            columns.append(codes.to_numpy(zero_copy_only=False))
        if not columns:
            return np.zeros((table.num_rows, 0), dtype=np.int64)
        return np.stack(columns, axis=1).astype(np.int64, copy=False)

    def scaled_label(self, table: pa.Table) -> np.ndarray:
        labels = table[self.label].cast(pa.float64()).to_numpy(zero_copy_only=False)
        return ((labels - self.label_mean) / self.label_std).astype(np.float32)

    def encode(self, table: pa.Table) -> pa.Table:
        """The training input: `features` (float32 list), `categorical` (int64 list), `label`."""
        features, codes = self.features(table), self.codes(table)
        return pa.table({
            "features": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()),
                                                          features.shape[1]),
            "categorical": pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel()),
                                                             codes.shape[1]),
            "label": pa.array(self.scaled_label(table), pa.float32()),
        })

    def unscale(self, output: np.ndarray) -> np.ndarray:
        """Network outputs → label units (regression) or probabilities (binary, from logits)."""
        output = np.asarray(output, dtype=np.float64)
        if self.task == "binary":
            return 1.0 / (1.0 + np.exp(-output))
        return output * self.label_std + self.label_mean

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "feature_columns": self.feature_columns,
                "mean": self.mean, "std": self.std, "categorical": self.categorical,
                "label": self.label, "task": self.task, "label_mean": self.label_mean,
                "label_std": self.label_std, "fit_rows": self.fit_rows}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Preprocessor:
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"preprocessing format {version!r} is not {FORMAT_VERSION}")
        fields = {k: v for k, v in payload.items() if k != "format_version"}
        return cls(**fields)


def fit_preprocessor(table: pa.Table, feature_columns: list[str], categorical: list[str],
                     label: str, task: str) -> Preprocessor:
    """Fit on one in-memory table of training rows (tests, small data)."""
    return FitStatistics.of(table, categorical, label).finish(feature_columns, categorical, label,
                                                              task)
