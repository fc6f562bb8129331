"""One module per stage, each defining `STAGE`; the DAG that orders them is `pipeline.stages.dag`.

Importing one stage never imports the others, so a stage runs alone with only what it needs.
"""
