"""Stage 2, validate: snapshot → clean rows + quarantine (a reason per row) + column statistics.

Stops: schema drift, silent nulls, duplicated events, labels before their events and rows dated in the
future. One Ray task per snapshot file applies the rules of `pipeline.quality.rules`; only duplicate
detection needs a global view, and it needs just the row-key column (gathered first, in file order,
so "the first occurrence wins" is deterministic).

Clean rows are written hive-partitioned by the UTC day of their *event time*, with canonical
timestamp[us, UTC] time columns, so featurize can read a time chunk plus its lookback by partition.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from pipeline.quality.rules import column_statistics, conform, merge_statistics, row_reasons
from pipeline.stage import Stage, StageContext, StageResult
from pipeline.telemetry import worker_span


class QuarantineThresholdExceeded(RuntimeError):
    """More rows were quarantined than the config allows; the data, not the code, is suspect."""


@ray.remote(num_cpus=1)
def _row_keys(store, path: str, row_key: str) -> np.ndarray:
    with store.fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=[row_key])[row_key].to_numpy(zero_copy_only=False)


@ray.remote(num_cpus=1)
def _validate_file(store, path: str, index: int, duplicate: np.ndarray, config, output: str,
                   carrier: dict) -> dict:
    dataset = config.dataset
    with worker_span(carrier, "validate.file", {"file": path}) as span:
        with store.fs.open(path, "rb") as handle:
            raw = pq.read_table(handle)
        table = conform(raw, dataset, where=path)
        reasons, details = row_reasons(table, dataset, config.validate_.max_label_delay, duplicate)
        bad = reasons.astype(bool)  # None (clean) is falsy, a reason code is not
        clean = table.filter(pa.array(~bad)).sort_by(dataset.event_time)
        quarantined = table.filter(pa.array(bad)).append_column(
            "_reason", pa.array(reasons[bad], pa.string())).append_column(
            "_detail", pa.array(details[bad], pa.string())).append_column(
            "_source_file", pa.array([path] * int(bad.sum()), pa.string()))
        _write_clean(store, clean, dataset.event_time, posixpath.join(output, "clean"), index)
        with store.fs.open(posixpath.join(output, "quarantine", f"part-{index:05d}.parquet"),
                           "wb") as handle:
            pq.write_table(quarantined, handle)
        span.set_attributes({"rows.in": raw.num_rows, "rows.out": clean.num_rows,
                             "rows.quarantined": quarantined.num_rows})
    counts = pd.Series(reasons[bad]).value_counts().to_dict() if bad.any() else {}
    return {"rows": raw.num_rows, "clean": clean.num_rows, "quarantined": int(bad.sum()),
            "reasons": counts, "statistics": column_statistics(clean),
            "schema": {f.name: str(f.type) for f in clean.schema}}


def _write_clean(store, clean: pa.Table, event_time: str, base: str, index: int) -> None:
    day = pc.strftime(clean[event_time], format="%Y-%m-%d")
    pads.write_dataset(
        clean.append_column("day", day), base, format="parquet",
        partitioning=pads.partitioning(pa.schema([("day", pa.string())]), flavor="hive"),
        basename_template=f"part-{index:05d}-{{i}}.parquet",
        filesystem=store.arrow_filesystem(), existing_data_behavior="overwrite_or_ignore",
    )


def run(ctx: StageContext) -> StageResult:
    config, store = ctx.config, ctx.store
    files = sorted(p for p in store.fs.find(ctx.input_path("ingest", "data"))
                   if p.endswith(".parquet"))
    keys = ray.get([_row_keys.remote(store, path, config.dataset.row_key) for path in files])
    # first occurrence (in file, then row order) is kept; later copies are quarantined
    duplicated = pd.Series(np.concatenate(keys)).duplicated(keep="first").to_numpy()
    bounds = np.cumsum([0] + [len(k) for k in keys])
    store.fs.makedirs(posixpath.join(ctx.output, "quarantine"), exist_ok=True)
    carrier = ctx.telemetry.carrier()
    results = ray.get([
        _validate_file.remote(store, path, i, duplicated[bounds[i]:bounds[i + 1]], config,
                              ctx.output, carrier)
        for i, path in enumerate(files)
    ])
    rows_in = sum(r["rows"] for r in results)
    quarantined = sum(r["quarantined"] for r in results)
    reasons: dict[str, int] = {}
    for result in results:
        for reason, count in result["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    share = quarantined / rows_in if rows_in else 0.0
    limit = config.validate_.max_quarantined_fraction
    if share > limit:
        raise QuarantineThresholdExceeded(
            f"{quarantined:,} of {rows_in:,} rows ({share:.2%}) quarantined, over the limit of "
            f"{limit:.2%} (validate.max_quarantined_fraction); by reason: {reasons}"
        )
    return StageResult(
        rows_in=rows_in,
        rows_out=sum(r["clean"] for r in results),
        rows_quarantined=quarantined,
        schema=results[0]["schema"] if results else {},
        statistics=merge_statistics([r["statistics"] for r in results]),
        details={"quarantine_reasons": dict(sorted(reasons.items())),
                 "quarantined_share": round(share, 6), "files": len(files),
                 "clean": "clean/", "quarantine": "quarantine/"},
    )


STAGE = Stage(
    name="validate",
    inputs=("ingest",),
    config_sections=("dataset", "validate"),
    run=run,
    code_modules=("pipeline.stages.validate", "pipeline.quality.rules"),
)
