"""The saved model's format, its writer and its reader: what evaluate and `pipeline trace` load.

A model directory holds
    model.json          architecture (NetworkSpec), task, label, feature and categorical columns,
                        best epoch, format version
    weights.pt          the network's state_dict (torch.save; loaded with weights_only=True)
    preprocessing.json  the transform fit on the training split (see preprocessing.py)
    history.json        per-epoch metrics (written by the train stage beside the model), without
                        wall-clock timings
Everything is read through an fsspec filesystem, so a model on s3:// loads like one on disk. The files
are byte-stable: identical weights give identical files, hence the same artifact fingerprint (the
train stage's manifest details carry the timings instead).
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.engine.artifacts import MODEL_JSON
from pipeline.model.network import NetworkSpec, build_network
from pipeline.model.preprocessing import Preprocessor

WEIGHTS = "weights.pt"
PREPROCESSING = "preprocessing.json"
HISTORY = "history.json"
FORMAT_VERSION = 1
WALL_CLOCK = ("train_seconds", "samples_per_second")  # history fields never written to disk
PREDICT_THREADS = 1
"""Torch threads while predicting, wherever that runs (the driver, a one-CPU Ray task): kernels
split over more threads sum in another order, and the same model must give the same bits in both."""


@dataclass
class Predictor:
    network: torch.nn.Module
    preprocessor: Preprocessor
    metadata: dict[str, Any]

    @property
    def task(self) -> str:
        return self.preprocessor.task

    def predict(self, table: pa.Table, batch_size: int = 65_536) -> np.ndarray:
        """One prediction per row: label units for regression, P(label = 1) for binary.

        `table` needs the packed `features` column and the raw categorical columns, exactly as
        the featurize stage writes them; other columns are ignored.
        """
        outputs = []
        self.network.eval()
        threads = torch.get_num_threads()
        torch.set_num_threads(PREDICT_THREADS)
        try:
            with torch.no_grad():
                for start in range(0, table.num_rows, batch_size):
                    chunk = table.slice(start, batch_size)
                    features = torch.from_numpy(self.preprocessor.features(chunk))
                    codes = torch.from_numpy(self.preprocessor.codes(chunk))
                    outputs.append(self.network(features, codes).numpy())
        finally:
            torch.set_num_threads(threads)
        raw = np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)
        return self.preprocessor.unscale(raw)


def save_model(fs, model_dir: str, spec: NetworkSpec, state_dict: dict[str, torch.Tensor],
               preprocessor: Preprocessor, metadata: dict[str, Any],
               history: list[dict[str, Any]] | None = None) -> None:
    """Write a model directory (weights first, model.json last)."""
    fs.makedirs(model_dir, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    fs.pipe_file(posixpath.join(model_dir, WEIGHTS), buffer.getvalue())
    _write_json(fs, posixpath.join(model_dir, PREPROCESSING), preprocessor.to_json())
    if history is not None:
        _write_json(fs, posixpath.join(model_dir, HISTORY), [
            {k: v for k, v in epoch.items() if k not in WALL_CLOCK} for epoch in history])
    _write_json(fs, posixpath.join(model_dir, MODEL_JSON), {
        "format_version": FORMAT_VERSION,
        "network": spec.to_json(),
        "task": preprocessor.task,
        "label": preprocessor.label,
        "feature_columns": preprocessor.feature_columns,
        "categorical_columns": preprocessor.categorical_columns,
        **metadata,
    })


def load_predictor(fs, model_dir: str) -> Predictor:
    """Rebuild the network and its preprocessing from a model directory on `fs`."""
    model = _read_json(fs, posixpath.join(model_dir, MODEL_JSON))
    if model.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{model_dir}: model format {model.get('format_version')!r} is not "
                         f"{FORMAT_VERSION}")
    preprocessor = Preprocessor.from_json(_read_json(fs, posixpath.join(model_dir, PREPROCESSING)))
    network = build_network(NetworkSpec.from_json(model["network"]))
    state = torch.load(io.BytesIO(fs.cat_file(posixpath.join(model_dir, WEIGHTS))),
                       map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    network.eval()
    return Predictor(network, preprocessor, model)


def _write_json(fs, path: str, payload: Any) -> None:
    fs.pipe_file(path, json.dumps(payload, indent=2, sort_keys=True).encode())


def _read_json(fs, path: str) -> Any:
    return json.loads(fs.cat_file(path))
