"""The five stages of a retrain, in DAG order.

Adding a stage means writing its module (params, files, facts, run, explain) and listing it here:
the runner, `pipeline stage`, `pipeline trace` and the cache keys pick it up from this list.
"""

from pipeline.stage import Stage
from pipeline.stages.evaluate import STAGE as EVALUATE
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.ingest import STAGE as INGEST
from pipeline.stages.train import STAGE as TRAIN
from pipeline.stages.validate import STAGE as VALIDATE

STAGES: tuple[Stage, ...] = (INGEST, VALIDATE, FEATURIZE, TRAIN, EVALUATE)
STAGE_NAMES = [stage.name for stage in STAGES]


def check_order(stages: tuple[Stage, ...]) -> None:
    """Every stage's inputs come before it, and names are unique."""
    seen: set[str] = set()
    for stage in stages:
        missing = [up.name for up in stage.inputs if up.name not in seen]
        if missing or stage.name in seen:
            raise ValueError(f"stage {stage.name!r}: inputs {missing} must come before it in the "
                             "DAG, and a name may appear once")
        seen.add(stage.name)


def stage_by_name(name: str, stages: tuple[Stage, ...] = STAGES) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(s.name for s in stages)}")


check_order(STAGES)
