"""The engine that runs any DAG of stages: the stage contract (`stage`), DAG order (`dag`), the
runner (cache keys, manifests, atomic publish, spans, row accounting), the artifact store, derived
code versions, and the Ray helpers (starting or joining Ray, the exchange, progress). It knows no
particular stage: the stages and the commands on top hand it theirs."""
