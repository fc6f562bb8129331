"""The pipeline's YAML config: typed, validated on load, with errors that name the key.

A new dataset needs a new config, not new code: the schema section declares every column's type and
*when it becomes known* (at the event, or only once the label is in), and everything downstream
(validation rules, point-in-time windows, leakage refusal, the model's inputs) is derived from it.

Validation reports every problem at once, each as `key: message`. Field rules live on the models;
rules that relate several fields (a column named in one place must be declared in another, the split
dates must be ordered) are `cross_check_problems`, which runs on every section that validated, so a
bad field elsewhere never hides them and each names the key to fix.
"""

from pipeline.core.config.loading import (
    DEFAULT_CONFIG,
    ConfigError,
    apply_override,
    load_config,
    parse_config,
)
from pipeline.core.config.models import (
    ClusterConfig,
    ColumnSpec,
    DatasetConfig,
    DriftConfig,
    EvaluateConfig,
    FeaturesConfig,
    GenerateSpec,
    PipelineConfig,
    PredictConfig,
    SplitConfig,
    TelemetryConfig,
    TrainConfig,
    ValidateConfig,
    WindowFeature,
)
from pipeline.core.config.rules import Problem, cross_check_problems
from pipeline.core.config.types import Duration, SafeName, Timestamp

__all__ = [
    "DEFAULT_CONFIG",
    "ClusterConfig",
    "ColumnSpec",
    "ConfigError",
    "DatasetConfig",
    "DriftConfig",
    "Duration",
    "EvaluateConfig",
    "FeaturesConfig",
    "GenerateSpec",
    "PipelineConfig",
    "PredictConfig",
    "Problem",
    "SafeName",
    "SplitConfig",
    "TelemetryConfig",
    "Timestamp",
    "TrainConfig",
    "ValidateConfig",
    "WindowFeature",
    "apply_override",
    "cross_check_problems",
    "load_config",
    "parse_config",
]
