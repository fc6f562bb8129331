"""The five stages of a retrain, in DAG order."""

from pipeline.stage import Stage
from pipeline.stages.evaluate import STAGE as EVALUATE
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.ingest import STAGE as INGEST
from pipeline.stages.train import STAGE as TRAIN
from pipeline.stages.validate import STAGE as VALIDATE

STAGES: list[Stage] = [INGEST, VALIDATE, FEATURIZE, TRAIN, EVALUATE]
STAGE_NAMES = [stage.name for stage in STAGES]


def stage_by_name(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(STAGE_NAMES)}")
