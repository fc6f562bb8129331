"""Featurize's time-travel audit as Ray tasks: a seeded sample of the output, one task per
batch of samples, each running `pipeline.features.audit` on the chunk's kernel; the stage fails
with the mismatches it found."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import ray

from pipeline.engine.stage import StageContext
from pipeline.features.audit import (
    PERTURBATION,
    ROW_ALONE,
    TIME_TRAVEL,
    AuditFailed,
    BatchAudit,
    SampledFile,
    audit_batch,
    plan_sample,
    read_sample,
)
from pipeline.stages.featurize.spec import Job
from pipeline.telemetry import current_span

AUDIT_BATCH_SPAN = timedelta(days=14)  # a batch reads its span plus the lookback: fewer, longer
AUDIT_BATCH_ROWS = 250
MISMATCHES_SHOWN = 10  # of each check
SOURCES_SHOWN = 5


def run_audit(job: Job, ctx: StageContext) -> dict[str, Any]:
    """Time-travel audit of a seeded sample of output rows, one Ray task per batch of samples:
    the reference recomputation and the perturbation check (`pipeline.features.audit`)."""
    params, started = job.params, time.perf_counter()
    seed = int(ctx.cache_key[:8], 16)
    batches = plan_sample(job.filesystem, job.output, params.audit_sample, seed,
                          params.roles.event_time, AUDIT_BATCH_SPAN, AUDIT_BATCH_ROWS)
    if not params.windows and not params.row_features:
        batches = []
    task = ctx.task(_audit_task, "featurize.audit")
    results: list[BatchAudit] = ray.get([task.remote(job, batch) for batch in batches])
    mismatches = [m for result in results for m in result.mismatches]
    compared = {TIME_TRAVEL: sum(r.time_travel for r in results),
                PERTURBATION: sum(r.perturbation for r in results)}
    if mismatches:
        raise AuditFailed(_audit_failure(mismatches, compared))
    sampled = sum(len(f.rows) for batch in batches for f in batch)
    return {"sampled": sampled, "compared": compared[TIME_TRAVEL],
            "perturbed": compared[PERTURBATION], "mismatches": 0, "seed": seed,
            "batches": len(batches), "seconds": round(time.perf_counter() - started, 3)}


def _audit_failure(mismatches: list, compared: dict[str, int]) -> str:
    by_check = {check: [m for m in mismatches if m.check == check]
                for check in (TIME_TRAVEL, ROW_ALONE, PERTURBATION)}
    found = {check: len(found) for check, found in by_check.items()}
    shown = "\n  ".join(str(m) for found in by_check.values() for m in found[:MISMATCHES_SHOWN])
    travelled = found[TIME_TRAVEL] + found[ROW_ALONE]
    return (f"time-travel audit failed: {travelled} of {compared[TIME_TRAVEL]} feature values "
            "recomputed from only the data that existed at each row's event time (a row "
            "feature: from the row alone) differ "
            f"from the stage's output, and {found[PERTURBATION]} of {compared[PERTURBATION]} "
            "changed when the row's own label-time values were nulled and every row not yet "
            f"available at its event time dropped (perturbation check):\n  {shown}")


def _audit_task(job: Job, files: list[SampledFile]) -> BatchAudit:
    params = job.params
    columns = [params.roles.row_key, params.roles.event_time,
               *(s.name for s in (*params.row_features, *params.windows))]
    sample = read_sample(job.filesystem, files, columns)
    current_span().set_attributes({"files": len(files), "rows": sample.num_rows})
    return audit_batch(job.clean, sample, params.windows, params.roles,
                       set(params.label_time_columns), params.max_label_delay, job.kernel,
                       params.user_features())
