"""The network: an MLP over the standardised features and one embedding per categorical column.

It outputs one number per row: the standardised label for regression, a logit for binary
classification (the loss is BCE-with-logits, so no sigmoid inside). `NetworkSpec` is the
architecture as JSON, saved in model.json so a predictor can rebuild the module before loading
the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class NetworkSpec:
    num_features: int
    cardinalities: list[int] = field(default_factory=list)
    """One embedding table per categorical column, sized vocabulary + 1 (code 0 = unknown)."""
    embedding_dim: int = 8
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> NetworkSpec:
        return cls(**payload)


class TabularNet(nn.Module):
    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, spec.embedding_dim) for cardinality in spec.cardinalities
        )
        layers: list[nn.Module] = []
        width = spec.num_features + spec.embedding_dim * len(spec.cardinalities)
        for size in spec.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if spec.dropout:
                layers.append(nn.Dropout(spec.dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """(rows, num_features) float, (rows, len(cardinalities)) int64 → (rows,) outputs."""
        parts = [features]
        parts += [embedding(categorical[:, i]) for i, embedding in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the parameter names and bytes: equal iff two models have identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
