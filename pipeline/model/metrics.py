"""Model quality metrics in plain numpy: the train stage's validation and the evaluate stage's test.

Regression: MAE, RMSE, MSE (label units). Binary: log-loss, AUC, accuracy at 0.5, from predicted
probabilities. One implementation for both stages, so "validation RMSE" and "test RMSE" mean the same.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def compute_metrics(task: str, truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Metrics of `predicted` (label units, or probabilities for binary) against `truth`."""
    running = RunningMetrics(task)
    running.add(truth, predicted)
    return running.result()


class RunningMetrics:
    """`compute_metrics` fed batch by batch, for a split too large to hold as one array.

    Regression keeps three sums, so its memory is flat in rows. Binary keeps every score and
    label (16 bytes a row): AUC ranks all scores together.
    """

    def __init__(self, task: str):
        if task not in ("regression", "binary"):
            raise ValueError(f"unknown task {task!r}: expected 'regression' or 'binary'")
        self.task, self.rows = task, 0
        self._abs_error = self._squared_error = 0.0
        self._truth: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        truth = np.asarray(truth, dtype=np.float64)
        predicted = np.asarray(predicted, dtype=np.float64)
        if truth.shape != predicted.shape:
            raise ValueError(f"truth {truth.shape} and predictions {predicted.shape} differ in shape")
        self.rows += truth.size
        if self.task == "regression":
            error = predicted - truth
            self._abs_error += float(np.sum(np.abs(error)))
            self._squared_error += float(np.sum(error**2))
        else:
            self._truth.append(truth)
            self._scores.append(predicted)

    def merge(self, other: RunningMetrics) -> RunningMetrics:
        """Both streams' rows together (the parts of a split scored apart)."""
        if other.task != self.task:
            raise ValueError(f"cannot merge {other.task} metrics into {self.task} metrics")
        merged = RunningMetrics(self.task)
        merged.rows = self.rows + other.rows
        merged._abs_error = self._abs_error + other._abs_error
        merged._squared_error = self._squared_error + other._squared_error
        merged._truth, merged._scores = self._truth + other._truth, self._scores + other._scores
        return merged

    def result(self) -> dict[str, float]:
        if self.rows == 0:
            raise ValueError("no rows to compute metrics on")
        if self.task == "regression":
            mse = self._squared_error / self.rows
            return {"mae": self._abs_error / self.rows, "rmse": float(np.sqrt(mse)), "mse": mse,
                    "rows": self.rows}
        truth, predicted = np.concatenate(self._truth), np.concatenate(self._scores)
        p = np.clip(predicted, _EPS, 1 - _EPS)
        log_loss = float(-np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p)))
        return {"log_loss": log_loss, "auc": auc(truth, predicted),
                "accuracy": float(np.mean((predicted >= 0.5) == (truth >= 0.5))),
                "rows": self.rows}


def primary_metric(task: str) -> tuple[str, bool]:
    """(name, lower_is_better) of the metric that decides between models for a task."""
    if task == "regression":
        return "rmse", True
    if task == "binary":
        return "log_loss", True
    raise ValueError(f"unknown task {task!r}: expected 'regression' or 'binary'")


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN with a single class."""
    positive = np.asarray(truth) >= 0.5
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    mean_rank = (starts + ends + 1) / 2  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
