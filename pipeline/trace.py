"""`pipeline trace ROW_KEY`: one row through every stage, each fact tagged with the artifact it came from.

It reads only published artifacts (and the source), so it explains what the pipeline *did*, not what
it would do now. Each line starts with `[stage code-version key]`, the stage's code version and the
first characters of the cache key of the artifact the fact was read from.
"""

from __future__ import annotations

import posixpath
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.artifacts import Artifact, ArtifactStore, arrow_filesystem
from pipeline.config import PipelineConfig, WindowFeature
from pipeline.durations import format_duration
from pipeline.model.predictor import load_predictor
from pipeline.registry import versions
from pipeline.runner import published_artifacts
from pipeline.stages.ingest import source_files

_SHOWN_SOURCES = 5


class _Report:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, artifact: Artifact | None, text: str, stage: str = "") -> None:
        if artifact is None:
            tag = f"[{stage or 'source'}]"
        else:
            tag = f"[{artifact.stage} {artifact.manifest['code_version']} {artifact.manifest['cache_key'][:8]}]"
        self.lines.append(f"{tag:<34} {text}")


def trace_row(config: PipelineConfig, row_key: str) -> str:
    dataset = config.dataset
    key = _typed_key(config, row_key)
    store = ArtifactStore(config.artifact_root, config.storage_options)
    published = published_artifacts(config, store)
    report = _Report()
    report.lines.append(f"row {dataset.row_key}={key!r}  (config {config.name}, {config.digest()})")

    fs, _, files = source_files(config)
    source = pads.dataset(files, filesystem=arrow_filesystem(fs), format="parquet").to_table(
        filter=pc.field(dataset.row_key) == key)
    if source.num_rows == 0:
        raise LookupError(f"{dataset.row_key}={key!r} is not in the source {dataset.source} "
                          f"between {dataset.start.date()} and {dataset.end.date()}")
    for row in source.to_pylist():
        report.add(None, f"source holds: {_short(row)}")

    _trace_validate(report, store, published, config, key)
    features = _trace_featurize(report, store, published, config, key)
    _trace_train(report, store, published, config, key)
    _trace_prediction(report, store, published, config, features)
    missing = [s for s in ("ingest", "validate", "featurize", "train", "evaluate")
               if s not in published]
    if missing:
        report.lines.append(f"not run yet for this config: {', '.join(missing)}")
    return "\n".join(report.lines)


def _typed_key(config: PipelineConfig, text: str) -> Any:
    kind = config.dataset.columns[config.dataset.row_key].type
    return int(text) if kind.startswith("int") else text


def _table(store: ArtifactStore, path: str, where: pads.Expression) -> pa.Table:
    return pads.dataset(path, filesystem=store.arrow_filesystem(), format="parquet",
                        partitioning="hive").to_table(filter=where)


def _short(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in row.items())


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _trace_validate(report, store, published, config, key) -> None:
    artifact = published.get("validate")
    if artifact is None:
        return
    where = pc.field(config.dataset.row_key) == key
    clean = _table(store, posixpath.join(artifact.uri, "clean"), where)
    bad = _table(store, posixpath.join(artifact.uri, "quarantine"), where)
    if clean.num_rows:
        report.add(artifact, f"validate passed it ({clean.num_rows} clean copy)")
    for row in bad.to_pylist():
        report.add(artifact, f"validate quarantined a copy: {row['_reason']} ({row['_detail']}) "
                             f"from {row['_source_file']}")


def _trace_featurize(report, store, published, config, key) -> dict[str, Any] | None:
    artifact = published.get("featurize")
    if artifact is None:
        return None
    dataset = config.dataset
    rows = _table(store, posixpath.join(artifact.uri, "data"), pc.field(dataset.row_key) == key)
    if rows.num_rows == 0:
        report.add(artifact, "featurize: no features (the row did not pass validation)")
        return None
    row = rows.slice(0, 1)
    values = row.to_pylist()[0]
    t = values[dataset.event_time]
    report.add(artifact, f"event time t = {_fmt(t)}; label {dataset.label} = "
                         f"{_fmt(values[dataset.label])}, available at "
                         f"{_fmt(values[dataset.label_available_at])}")
    clean = posixpath.join(published["validate"].uri, "clean")
    for feature in config.features.windows:
        report.add(artifact, _window_line(store, clean, config, feature, values, t))
    return {"artifact": artifact, "row": row}


def _window_line(store, clean: str, config: PipelineConfig, feature: WindowFeature,
                 values: dict[str, Any], t: datetime) -> str:
    available_at = config.available_at(feature)
    start = t - feature.window
    where = (pc.field(available_at) >= start) & (pc.field(available_at) < t)
    for entity in feature.entity:
        where &= pc.field(entity) == values[entity]
    if feature.column:
        where &= pc.field(feature.column).is_valid()
    fed = _table(store, clean, where).sort_by(available_at)
    keys = fed[config.dataset.row_key].to_pylist()
    times = fed[available_at].to_pylist()
    shown = ", ".join(f"{k}@{_fmt(a)}" for k, a in list(zip(keys, times))[-_SHOWN_SOURCES:])
    more = f" (+{len(keys) - _SHOWN_SOURCES} earlier)" if len(keys) > _SHOWN_SOURCES else ""
    entity = ",".join(f"{e}={values[e]}" for e in feature.entity)
    return (f"{feature.feature_name} = {_fmt(values[feature.feature_name])}: window "
            f"[{_fmt(start)}, {_fmt(t)}) of {format_duration(feature.window)} on {available_at}, "
            f"{entity}, from {len(keys)} source rows: {shown or 'none'}{more}")


def _trace_train(report, store, published, config, key) -> None:
    artifact = published.get("train")
    if artifact is None:
        return
    splits = _table(store, posixpath.join(artifact.uri, "splits"),
                    pc.field(config.dataset.row_key) == key)
    split = config.split
    why = {
        "train": f"event and label both before train_until {_fmt(split.train_until)}",
        "validation": f"event in [train_until + embargo, validation_until "
                      f"{_fmt(split.validation_until)}) and label available before its end",
        "test": f"event at or after validation_until + embargo "
                f"({_fmt(split.validation_until + split.embargo)})",
    }
    for row in splits.to_pylist():
        consumed = "training consumed it" if row["split"] == "train" else "training did not use it"
        reason = why.get(row["split"]) or f"excluded: {row['reason']}"
        report.add(artifact, f"split: {row['split'] or 'none'} ({reason}); {consumed}")


def _trace_prediction(report, store, published, config, features) -> None:
    artifact = published.get("evaluate")
    if artifact is None or features is None:
        return
    registration = artifact.manifest["details"]["registration"]
    entry = next(v for v in versions(store, registration["model"])
                 if v["version"] == registration["version"])
    model_dir = posixpath.join(store.path("registry", entry["model"], entry["version"]), "model")
    prediction = float(load_predictor(store.fs, model_dir).predict(features["row"])[0])
    label = features["row"][config.dataset.label][0].as_py()
    report.add(artifact, f"model {entry['model']} {entry['version']} "
                         f"({'promoted' if entry['promoted'] else 'not promoted'}) predicts "
                         f"{prediction:.4g}; label {label:.4g}; error {prediction - label:+.4g}")
