"""A team's own code for the ride-share data: two row features, window aggregations and a network.

Each function is vectorised: it gets every row of a chunk at once, as numpy arrays, and returns
one value per row (NaN for "no value"). The pipeline checks what each reads, recomputes them in
its time-travel audit, and computes them with this same code when it serves predictions.
"""

import numpy as np

from pipeline import ModelInputs, Rows, Window, model_factory, row_feature, window_aggregation

SLOW_PACE_MIN_PER_KM = 3.5


@row_feature(inputs=["distance_km"])
def log_distance(rows: Rows) -> np.ndarray:
    """Trip distances span two orders of magnitude; their log is what a network learns from."""
    return np.log1p(rows["distance_km"])


@row_feature(inputs=["requested_at"])
def hour_of_day(rows: Rows) -> np.ndarray:
    """The hour of the request, in UTC, with its minutes as a fraction."""
    minutes = rows["requested_at"].astype("datetime64[m]").astype(np.int64)
    return (minutes % (24 * 60)) / 60.0


@window_aggregation
def slow_share(window: Window) -> np.ndarray:
    """The share of the entity's recent trips slower than SLOW_PACE_MIN_PER_KM."""
    values = window.count()
    slow = window.sum(window.values > SLOW_PACE_MIN_PER_KM)
    return np.where(values > 0, slow / np.maximum(values, 1), np.nan)


@window_aggregation
def plain_mean(window: Window) -> np.ndarray:
    """The built-in `mean`, written as a team would: the benchmark compares the two."""
    values = window.count()
    return np.where(values > 0, window.sum(window.values) / np.maximum(values, 1), np.nan)


@model_factory
def residual_mlp(inputs: ModelInputs):
    """A residual MLP over the features and one embedding per categorical column. torch is
    imported here, not at the top, so that featurize's workers never import it."""
    import torch
    from torch import nn

    class ResidualMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.ModuleList(nn.Embedding(size, inputs.embedding_dim)
                                            for size in inputs.cardinalities)
            width = inputs.num_features + inputs.embedding_dim * len(inputs.cardinalities)
            self.project = nn.Linear(width, 64)
            self.block = nn.Sequential(nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
            self.output = nn.Linear(64, 1)

        def forward(self, features: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
            parts = [features, *(embed(categorical[:, i]) for i, embed in
                                 enumerate(self.embeddings))]
            hidden = self.project(torch.cat(parts, dim=1))
            return self.output(torch.relu(hidden + self.block(hidden))).squeeze(-1)

    return ResidualMLP()
