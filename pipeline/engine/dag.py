"""A DAG of stages as a tuple in run order: checked once, looked up by name."""

from __future__ import annotations

from pipeline.engine.stage import Stage


def check_order(stages: tuple[Stage, ...]) -> None:
    """Every stage's inputs come before it, and names are unique."""
    seen: set[str] = set()
    for stage in stages:
        missing = [up.name for up in stage.inputs if up.name not in seen]
        if missing or stage.name in seen:
            raise ValueError(f"stage {stage.name!r}: inputs {missing} must come before it in the "
                             "DAG, and a name may appear once")
        seen.add(stage.name)


def stage_by_name(name: str, stages: tuple[Stage, ...]) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; stages are: {', '.join(s.name for s in stages)}")
