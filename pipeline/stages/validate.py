"""Stage 2, validate: snapshot → clean rows + quarantine (a reason per row) + column statistics.

Stops: schema drift, silent nulls, duplicated events, labels before their events and rows dated in the
future. One Ray task per snapshot file applies the rules of `pipeline.quality.rules`; only duplicate
detection needs a global view: a hash partition of the row-key column over Ray tasks
(`pipeline.quality.duplicates`), of which only the positions of duplicates reach the driver.

Rows without a label (`dataset.unlabeled: history`) are clean rows kept as history: they feed
featurize's windows and train gives them no split; `rows_unlabeled` counts them among rows_out.

Clean rows are written hive-partitioned by the UTC day of their *event time*, with canonical
timestamp[us, UTC] time columns, so featurize can read a time chunk plus its lookback by partition.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
from pydantic import Field

from pipeline.core.config import Duration, PipelineConfig
from pipeline.core.schema import TableSchema
from pipeline.core.timestamps import day_strings
from pipeline.engine.stage import (
    Facts,
    Files,
    Folder,
    Params,
    RowQuestion,
    Stage,
    StageContext,
    StageResult,
    top_reasons,
)
from pipeline.quality.duplicates import copies_in_bucket, later_copies, split_keys
from pipeline.quality.rules import (
    column_statistics,
    conform,
    merge_statistics,
    row_reasons,
    unlabeled,
)
from pipeline.stages.ingest import STAGE as INGEST
from pipeline.stages.ingest import IngestFiles
from pipeline.telemetry import current_span


class ValidateParams(Params):
    table: TableSchema
    max_label_delay: Duration
    max_quarantined_fraction: float = Field(ge=0, le=1)

    @classmethod
    def from_config(cls, config: PipelineConfig) -> ValidateParams:
        return cls(table=TableSchema.of(config.dataset),
                   max_label_delay=config.validate_.max_label_delay,
                   max_quarantined_fraction=config.validate_.max_quarantined_fraction)


class ValidateFiles(Files):
    clean = Folder("clean")
    """Clean rows, hive-partitioned by the UTC day of their event time (`day=YYYY-MM-DD`)."""
    quarantine = Folder("quarantine")
    """Quarantined rows with `_reason`, `_detail` and `_source_file` (the snapshot file, relative
    to the artifact root)."""


class ValidateFacts(Facts):
    quarantine_reasons: dict[str, int]
    rows_unlabeled: int
    """Clean rows without a label, kept as history (counted in rows_out)."""
    quarantined_share: float
    files: int

    def headline(self) -> str:
        kept = f"{self.rows_unlabeled:,} unlabeled kept as history" if self.rows_unlabeled else ""
        return "; ".join(part for part in (top_reasons(self.quarantine_reasons), kept) if part)


class QuarantineThresholdExceeded(RuntimeError):
    """More rows were quarantined than the config allows; the data, not the code, is suspect."""


def _key_buckets(store, row_key: str, buckets: int, first: int,
                 *paths: str) -> pa.Table | list[pa.Table]:
    """`split_keys` of a run of snapshot files (indices from `first`)."""
    keys = []
    for path in paths:
        with store.fs.open(path, "rb") as handle:
            keys.append(pq.read_table(handle, columns=[row_key])[row_key])
    return split_keys(keys, first, buckets)


def duplicate_rows(ctx: StageContext, files: list[str], row_key: str,
                   rows: int) -> list[np.ndarray]:
    """Per file, the row positions of keys seen earlier in the snapshot of `rows` rows."""
    return later_copies(ctx.task(_key_buckets, "validate.key_buckets"),
                        ctx.task(copies_in_bucket, "validate.duplicates"), files, rows,
                        (ctx.store, row_key))


def _validate_file(store, path: str, index: int, duplicate_positions: np.ndarray,
                   params: ValidateParams, output: ValidateFiles) -> dict:
    table_schema = params.table
    with store.fs.open(path, "rb") as handle:
        raw = pq.read_table(handle)
    duplicate = np.zeros(raw.num_rows, dtype=bool)
    duplicate[duplicate_positions] = True
    table = conform(raw, table_schema, where=path)
    reasons, details = row_reasons(table, table_schema, params.max_label_delay, duplicate)
    bad = reasons.astype(bool)  # None (clean) is falsy, a reason code is not
    history = unlabeled(table, table_schema) & ~bad
    clean = table.filter(pa.array(~bad)).sort_by(table_schema.event_time)
    quarantined = table.filter(pa.array(bad)).append_column(
        "_reason", pa.array(reasons[bad], pa.string())).append_column(
        "_detail", pa.array(details[bad], pa.string())).append_column(
        "_source_file", pa.array([store.relative(path)] * int(bad.sum()), pa.string()))
    _write_clean(store, clean, table_schema.event_time, output.clean, index)
    with store.fs.open(posixpath.join(output.quarantine, f"part-{index:05d}.parquet"),
                       "wb") as handle:
        pq.write_table(quarantined, handle)
    current_span().set_attributes({"file": path, "rows.in": raw.num_rows,
                                   "rows.out": clean.num_rows,
                                   "rows.quarantined": quarantined.num_rows})
    counts = pd.Series(reasons[bad]).value_counts().to_dict() if bad.any() else {}
    return {"rows": raw.num_rows, "clean": clean.num_rows, "quarantined": int(bad.sum()),
            "unlabeled": int(history.sum()), "reasons": counts, "statistics": column_statistics(clean),
            "schema": {f.name: str(f.type) for f in clean.schema}}


def _write_clean(store, clean: pa.Table, event_time: str, base: str, index: int) -> None:
    day = day_strings(clean[event_time])
    pads.write_dataset(
        clean.append_column("day", day), base, format="parquet",
        partitioning=pads.partitioning(pa.schema([("day", pa.string())]), flavor="hive"),
        basename_template=f"part-{index:05d}-{{i}}.parquet",
        filesystem=store.arrow_filesystem(), existing_data_behavior="overwrite_or_ignore",
    )


def run(ctx: StageContext[ValidateParams, ValidateFiles]) -> StageResult[ValidateFacts]:
    params, store = ctx.params, ctx.store
    snapshot: IngestFiles = ctx.input(INGEST).files
    files = store.parquet_files(snapshot.data)
    with ctx.telemetry.span("validate.find_duplicates", {"files": len(files)}):
        duplicates = duplicate_rows(ctx, files, params.table.row_key,
                                    ctx.input(INGEST).rows_out)
    store.fs.makedirs(ctx.files.quarantine, exist_ok=True)
    with ctx.telemetry.span("validate.check_files", {"files": len(files)}):
        validate_file = ctx.task(_validate_file, "validate.file")
        results = ray.get([
            validate_file.remote(store, path, i, duplicates[i], params, ctx.files)
            for i, path in enumerate(files)
        ])
    rows_in = sum(r["rows"] for r in results)
    quarantined = sum(r["quarantined"] for r in results)
    reasons: dict[str, int] = {}
    for result in results:
        for reason, count in result["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    share = quarantined / rows_in if rows_in else 0.0
    limit = params.max_quarantined_fraction
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
        facts=ValidateFacts(quarantine_reasons=dict(sorted(reasons.items())),
                            rows_unlabeled=sum(r["unlabeled"] for r in results),
                            quarantined_share=round(share, 6), files=len(files)),
    )


def explain(question: RowQuestion) -> list[str]:
    files: ValidateFiles = question.output.files
    store = question.store
    clean = question.rows(files.clean, partitioning="hive")
    lines = [f"validate passed it ({clean.num_rows} clean copy)"] if clean.num_rows else []
    table: TableSchema = question.params.table
    if clean.num_rows and unlabeled(clean, table).any():
        lines.append(f"unlabeled: history only ({table.label} and {table.label_available_at} "
                     "are null; it feeds windows, never a split)")
    for row in question.rows(files.quarantine, partitioning="hive").to_pylist():
        lines.append(f"validate quarantined a copy: {row['_reason']} ({row['_detail']}) "
                     f"from {store.uri(store.path(row['_source_file']))}")
    return lines


STAGE = Stage(
    name="validate",
    params=ValidateParams,
    files=ValidateFiles,
    facts=ValidateFacts,
    run=run,
    explain=explain,
    inputs=(INGEST,),
)
