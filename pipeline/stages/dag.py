"""The stages of a retrain, in DAG order: the fifth, evaluate + register, in two steps (a
cached judgement, then the registration that acts on it).

Adding a stage means writing its module (params, files, facts, run, explain) and listing it here:
`pipeline run`, `pipeline stage`, `pipeline trace` and the cache keys pick it up from this list.
"""

from pipeline.engine.dag import check_order
from pipeline.engine.stage import Stage
from pipeline.stages.evaluate import STAGE as EVALUATE
from pipeline.stages.featurize import STAGE as FEATURIZE
from pipeline.stages.ingest import STAGE as INGEST
from pipeline.stages.register import STAGE as REGISTER
from pipeline.stages.train import STAGE as TRAIN
from pipeline.stages.validate import STAGE as VALIDATE

STAGES: tuple[Stage, ...] = (INGEST, VALIDATE, FEATURIZE, TRAIN, EVALUATE, REGISTER)

check_order(STAGES)
