"""What the train stage reads (`TrainParams`), writes (`TrainFiles`) and says of its output
(`TrainFacts`, the manifest's details)."""

from __future__ import annotations

from pydantic import Field

from pipeline.core.config import PipelineConfig, SplitConfig, TrainConfig
from pipeline.core.schema import Roles
from pipeline.core.user_code import load
from pipeline.engine.code_version import user_code_version
from pipeline.engine.stage import Facts, Files, Folder, Params, top_reasons
from pipeline.monitoring.drift import Histogram


class TrainParams(Params):
    roles: Roles
    split: SplitConfig
    train: TrainConfig
    model_code: str | None = None
    """The code version of the module of `train.model` (a team's network): an edit retrains."""
    model_module: str | None = Field(None, exclude=True)
    """Where that module is: its text is stored with the model; its place is not in the key."""

    @classmethod
    def from_config(cls, config: PipelineConfig) -> TrainParams:
        module = config.features.module if config.train.model else None
        return cls(roles=Roles.of(config.dataset), split=config.split, train=config.train,
                   model_code=user_code_version(module) if module else None,
                   model_module=module)

    def model_source(self) -> str | None:
        """The text of the team's model module, stored with the model; None: the built-in MLP."""
        return load(self.model_module).source() if self.model_module else None


class TrainFiles(Files):
    model = Folder("model")
    """weights.pt, model.json, preprocessing.json, history.json (see pipeline.model.predictor)."""
    splits = Folder("splits")
    """(row key, split, reason) of every input row: the one place a row's split is decided."""


class TrainFacts(Facts):
    metrics: dict[str, float]
    """Validation metrics of the best epoch."""
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    restarts: int
    samples_per_second: float
    epoch_samples_per_second: list[float] = []
    """Training samples/s of each epoch, in order (the first one also warms caches and page
    mappings; benchmarks/train_ingest.py compares the later ones)."""
    splits: dict[str, int]
    excluded: dict[str, int]
    test_period_start: str
    """ISO time: the test split is every row with event time at or after it."""
    train_label_mean: float
    """The training split's mean label (positive rate for binary): evaluate's baseline."""
    train_rows_consumed: int
    worker_count: int
    device: str
    torch_threads: int | None = None
    """Intra-op threads of each worker's torch (one per worker CPU in local mode too)."""
    startup_seconds: float | None
    fit_seconds: float
    weights_sha256: str
    train_run: str | None
    """Ray Train's run folder (checkpoints); None in local mode, which keeps none."""
    feature_histograms: dict[str, Histogram] = {}
    """Each feature and the label over the training split: drift's reference."""

    def headline(self) -> str:
        left_out = f"left out: {top_reasons(self.excluded)}; " if any(self.excluded.values()) else ""
        return f"{left_out}best epoch {self.best_epoch} of {self.epochs_run}"
