"""Dates that count back from the range's end: `dataset.lookback` for the start, `split.test`
and `split.validation` for the cutoffs. A daily job then changes one date (`--as-of`), and the
config resolves to the absolute dates an absolute config would give: the stages see, key and
record only those."""

from __future__ import annotations

from typing import Any

from pipeline.core.config.rules import Problem
from pipeline.core.durations import format_duration

_CUTOFFS = (("validation_until", "test"), ("train_until", "validation"))


def resolve_relative_time(sections: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """`sections` (validated, by top-level key) with every relative date made absolute, and the
    problems of the dates; a section whose dates cannot be resolved is left out."""
    dataset, split = sections.get("dataset"), sections.get("split")
    if dataset is None:
        return sections, []
    resolved = dict(sections)
    if (dataset.start is None) == (dataset.lookback is None):
        resolved.pop("dataset")
        resolved.pop("split", None)
        return resolved, [Problem("dataset.start", "give dataset.start (a date) or "
                                  "dataset.lookback (a duration before dataset.end): "
                                  + ("neither is set" if dataset.start is None else "not both"))]
    start = dataset.start or dataset.end - dataset.lookback
    resolved["dataset"] = dataset.model_copy(update={"start": start})
    if split is None:
        return resolved, []
    problems = [Problem(f"split.{absolute}", f"give split.{absolute} (a date) or split.{relative}"
                        f" (a duration): {'neither is set' if getattr(split, absolute) is None else 'not both'}")
                for absolute, relative in _CUTOFFS
                if (getattr(split, absolute) is None) == (getattr(split, relative) is None)]
    if problems:
        resolved.pop("split")
        return resolved, problems
    validation_until = split.validation_until or dataset.end - split.test
    train_until = split.train_until or validation_until - split.validation
    if (split.test or split.validation) and train_until <= start:
        resolved.pop("split")
        key = "split.validation" if split.validation else "split.test"
        return resolved, [Problem(key, f"the test and validation periods leave no training "
                                  f"period: training would end at {train_until.isoformat()}, not "
                                  f"after dataset.start ({start.isoformat()}; the range is "
                                  f"{format_duration(dataset.end - start)})")]
    resolved["split"] = split.model_copy(update={"validation_until": validation_until,
                                                 "train_until": train_until})
    return resolved, []
