"""Rules between keys, run on every section that validated so that a bad field elsewhere never
hides them: a column named in one place must be declared in the schema, the split dates must be
in order, and no column known only at label time may be read at event time (label leakage)."""

from __future__ import annotations

from typing import Any, NamedTuple

from pipeline.core.config.models import (
    ColumnSpec,
    DatasetConfig,
    FeaturesConfig,
    SplitConfig,
    WindowFeature,
)
from pipeline.core.packed import PACKED
from pipeline.core.user_code import UserCodeError, is_user_aggregation, load


class Problem(NamedTuple):
    key: str
    message: str


def cross_check_problems(sections: dict[str, Any]) -> list[Problem]:
    """Rules across fields, on whichever validated sections are present (by top-level key)."""
    dataset, features = sections.get("dataset"), sections.get("features")
    split, telemetry = sections.get("split"), sections.get("telemetry")
    problems = []
    train = sections.get("train")
    if train is not None and train.model is not None and features is not None:
        problems += _model_problems(features, train.model)
    if dataset is not None:
        problems += _dataset_problems(dataset)
        if features is not None:
            row_inputs, code_problems = _user_code_problems(dataset.columns, features)
            problems += _input_problems(dataset.columns, features)
            problems += _window_problems(dataset.columns, features.windows)
            problems += code_problems
            problems += _leakage_problems(dataset.columns, features, row_inputs)
        if split is not None:
            problems += _split_problems(dataset, split)
    if telemetry is not None and telemetry.exporter == "otlp" and not telemetry.endpoint:
        problems.append(Problem("telemetry.endpoint", "exporter otlp needs an endpoint, "
                                "e.g. http://127.0.0.1:4318"))
    return problems


def _dataset_problems(ds: DatasetConfig) -> list[Problem]:
    problems = []
    if ds.end <= ds.start:
        problems.append(Problem("dataset.end", f"{ds.end} must be after dataset.start ({ds.start})"))
    for role in ("row_key", "event_time", "label", "label_available_at"):
        column = getattr(ds, role)
        if column not in ds.columns:
            problems.append(Problem(f"dataset.{role}",
                                    f"column {column!r} is not in dataset.columns"))
        elif role in ("event_time", "label_available_at") \
                and ds.columns[column].type not in ("timestamp", "int64"):
            problems.append(Problem(f"dataset.{role}", f"time column {column!r} must be "
                                    f"timestamp or int64 epoch, not {ds.columns[column].type}"))
    for role in ("label", "label_available_at"):
        column = getattr(ds, role)
        if column in ds.columns and ds.columns[column].known_at != "label":
            problems.append(Problem(f"dataset.columns.{column}.known_at",
                                    f"the {role} column {column!r} must be known_at: label"))
    return problems


def _input_problems(columns: dict[str, ColumnSpec], features: FeaturesConfig) -> list[Problem]:
    """Columns fed to the model as is must exist (`_leakage_problems` says when they may be read)."""
    return [Problem(f"features.{section}.{i}", f"column {name!r} is not in the schema")
            for section in ("numeric", "categorical")
            for i, name in enumerate(getattr(features, section)) if name not in columns]


def _leakage_problems(columns: dict[str, ColumnSpec], features: FeaturesConfig,
                      row_inputs: dict[str, tuple[str, ...]]) -> list[Problem]:
    """The one leakage rule: no column known only at label time may be read at event time, in
    whatever role (`_event_time_reads` lists them all)."""
    return [Problem(key, f"column {name!r} is known only at label time, but {role} reads it at "
                    "event time: refused (label leakage)")
            for key, name, role in _event_time_reads(features, row_inputs)
            if name in columns and columns[name].known_at == "label"]


def _event_time_reads(features: FeaturesConfig,
                      row_inputs: dict[str, tuple[str, ...]]) -> list[tuple[str, str, str]]:
    """Every column the features read at a row's event time, as (key, column, role): the model's
    inputs, a row feature's declared inputs, every window's entity (the row's own value picks its
    group) and a window value declared available at the event. A new role that reads a column at
    event time goes here."""
    reads = [(f"features.{section}.{i}", name, f"features.{section} (a model input)")
             for section in ("numeric", "categorical")
             for i, name in enumerate(getattr(features, section))]
    reads += [(f"features.row.{i}", column, f"the row feature {name}")
              for i, name in enumerate(features.row) for column in row_inputs.get(name, ())]
    for i, feature in enumerate(features.windows):
        where = f"features.windows.{i}"
        reads += [(f"{where}.entity", name, f"the window's entity ({feature.feature_name})")
                  for name in feature.entity]
        if feature.column and feature.available_at == "event":
            reads.append((f"{where}.available_at", feature.column,
                          f"the window's value with available_at: event ({feature.feature_name})"))
    return reads


def _window_problems(columns: dict[str, ColumnSpec],
                     windows: list[WindowFeature]) -> list[Problem]:
    problems, seen = [], set()
    for i, feature in enumerate(windows):
        where = f"features.windows.{i}"
        missing = [Problem(f"{where}.{role}", f"column {name!r} is not in the schema")
                   for role, names in (("entity", feature.entity), ("column", [feature.column]))
                   for name in names if name and name not in columns]
        if missing:
            problems += missing
            continue
        spec = columns[feature.column] if feature.column else None
        if is_user_aggregation(feature.agg) and not feature.column:
            problems.append(Problem(f"{where}.column", f"{feature.agg} needs a column to "
                                    "aggregate"))
        if spec and feature.agg not in ("count", "time_since_last") \
                and spec.type in ("string", "timestamp", "bool"):
            problems.append(Problem(f"{where}.agg", f"{feature.agg} needs a numeric column, "
                                    f"{feature.column!r} is {spec.type}"))
        name = feature.feature_name
        if name in columns or name == PACKED:
            problems.append(Problem(f"{where}.name", f"feature name {name!r} clashes with a "
                                    "column; give it another `name`"))
        elif name in seen:
            problems.append(Problem(f"{where}.name", f"duplicate feature name {name!r}"))
        seen.add(name)
    return problems


def _user_code_problems(columns: dict[str, ColumnSpec], features: FeaturesConfig,
                        ) -> tuple[dict[str, tuple[str, ...]], list[Problem]]:
    """The row features' declared inputs, and what is wrong with the user code the features
    name: a module that does not load, a function that is not there or not declared, an input
    not in the schema, a name that clashes."""
    named = [(f"features.windows.{i}.agg", w.agg) for i, w in enumerate(features.windows)
             if is_user_aggregation(w.agg)]
    if features.module is None:
        return {}, [Problem(key, f"{value} names user code: set features.module") for key, value
                    in [*named, *((f"features.row.{i}", r) for i, r in enumerate(features.row))]]
    try:
        code = load(features.module)
    except UserCodeError as exc:
        return {}, [Problem("features.module", str(exc))]
    inputs, problems = {}, []
    for i, name in enumerate(features.row):
        try:
            inputs[name] = code.row_feature(name)[1].inputs
        except UserCodeError as exc:
            problems.append(Problem(f"features.row.{i}", str(exc)))
            continue
        problems += [Problem(f"features.row.{i}", f"row feature {name} reads {column!r}, which "
                             "is not in the schema") for column in inputs[name]
                     if column not in columns]
        if name in columns or name == PACKED or name in features.row[:i]:
            problems.append(Problem(f"features.row.{i}", f"feature name {name!r} clashes with a "
                                    "column or another row feature"))
    for key, value in named:
        module, _, function = value.partition(":")
        if module != code.name:
            problems.append(Problem(key, f"{value}: features.module is {code.name}, not {module}"))
            continue
        try:
            code.aggregation(function)
        except UserCodeError as exc:
            problems.append(Problem(key, str(exc)))
    return inputs, problems


def _model_problems(features: FeaturesConfig, model: str) -> list[Problem]:
    """`train.model` must name a @model_factory of features.module."""
    module, _, function = model.partition(":")
    if features.module is None:
        return [Problem("train.model", f"{model} names user code: set features.module")]
    try:
        code = load(features.module)
    except UserCodeError:
        return []  # features.module's own problem says why
    if module != code.name or not function:
        return [Problem("train.model", f"{model}: expected {code.name}:<function>, a "
                        "@model_factory of features.module")]
    try:
        code.model_factory(function)
    except UserCodeError as exc:
        return [Problem("train.model", str(exc))]
    return []


def _split_problems(ds: DatasetConfig, split: SplitConfig) -> list[Problem]:
    order = "need dataset.start < train_until < validation_until < dataset.end"
    problems = []
    if not ds.start < split.train_until < ds.end:
        problems.append(Problem("split.train_until", f"{split.train_until} is not between "
                                f"dataset.start and dataset.end; {order}"))
    if not split.train_until < split.validation_until < ds.end:
        problems.append(Problem("split.validation_until", f"{split.validation_until} is not "
                                f"between split.train_until and dataset.end; {order}"))
    return problems
