"""The network: an MLP over the standardised features and one embedding per categorical column.

It outputs one number per row: the standardised label for regression, a logit for binary
classification (the loss is BCE-with-logits, so no sigmoid inside). `NetworkSpec` is the
architecture as JSON, saved in model.json so a predictor can rebuild the module before loading
the weights.
"""

from __future__ import annotations

from collections.abc import Callable
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
    task: str = "regression"
    factory: str | None = None
    """A team's `<module>:<function>` that builds the module instead of `TabularNet`."""
    source: str | None = None
    """That module's text, kept with the model: the model is rebuilt by its own code."""

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


def build_network(spec: NetworkSpec) -> nn.Module:
    """The module of `spec`: the built-in MLP, or the team's factory's, rebuilt from the code
    stored with it and checked to take the loop's inputs and give one output per row."""
    if spec.factory is None:
        return TabularNet(spec)
    from pipeline.core.user_code import ModelInputs, UserCodeError, module_from_source

    module_name, _, function = spec.factory.partition(":")
    factory = getattr(module_from_source(module_name, spec.source or ""), function, None)
    if factory is None:
        raise UserCodeError(f"model factory {spec.factory} is not in the code stored with it")
    inputs = ModelInputs(spec.num_features, tuple(spec.cardinalities), spec.embedding_dim,
                         spec.task)
    try:
        network = factory(inputs)
    except Exception as exc:  # the user's factory may raise anything
        raise UserCodeError(f"model factory {spec.factory} raised {type(exc).__name__}: "
                            f"{exc}") from exc
    if not isinstance(network, nn.Module):
        raise UserCodeError(f"model factory {spec.factory} returned "
                            f"{type(network).__name__}, not a torch.nn.Module")
    _check_shape(network, spec)
    return network


def _check_shape(network: nn.Module, spec: NetworkSpec) -> None:
    """Two rows of zeros through `forward`: the loop needs (2,) outputs back."""
    features = torch.zeros(2, spec.num_features)
    categorical = torch.zeros(2, len(spec.cardinalities), dtype=torch.int64)
    try:
        with torch.no_grad():
            output = network(features, categorical)
    except Exception as exc:  # the user's forward may raise anything
        raise ValueError(f"model factory {spec.factory}: forward(features {tuple(features.shape)}, "
                         f"categorical {tuple(categorical.shape)}) raised "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(output, torch.Tensor) or tuple(output.shape) != (2,):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"model factory {spec.factory}: forward gives {shape} for 2 rows; "
                         "expected (2,): one output per row")
    own = getattr(network, "loss", None)
    if callable(own):
        loss = own(output, torch.zeros(2))
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"model factory {spec.factory}: loss(output, target) must give one "
                             "number (a 0-dim tensor: the batch's mean loss)")


def losses(network: nn.Module, task: str) -> tuple[Callable, Callable]:
    """(a batch's mean loss, its summed loss): the network's own `loss(output, target)` when a
    team's module defines one (a batch mean), else MSE for regression, BCE-with-logits for
    binary."""
    own = getattr(network, "loss", None)
    if callable(own):
        return own, lambda output, target: own(output, target) * len(target)
    if task == "regression":
        return nn.MSELoss(), nn.MSELoss(reduction="sum")
    return nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss(reduction="sum")


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the parameter names and bytes: equal iff two models have identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
