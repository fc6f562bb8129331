"""`pipeline runs`: the runs under an artifact root, read from their records (runs/<id>/run.json).

A run folder without a record is a run that never finished (killed, or still going): it is listed
as `unfinished`, with the start time its id carries.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime, timezone

from pipeline.engine.artifacts import ArtifactStore
from pipeline.engine.summary import RUN_ID_TIME


@dataclass(frozen=True)
class RunRow:
    run_id: str
    config: str
    started: str
    status: str  # ok | failed | unfinished
    seconds: float | None
    ran: int
    cached: int
    model: str

    @property
    def computed(self) -> bool:
        """Whether the run computed any stage (an all-cached run has nothing to profile)."""
        return self.ran > 0


def run_ids(store: ArtifactStore) -> list[str]:
    """Every run folder's id, newest first (ids start with their UTC start time)."""
    runs = store.path("runs")
    if not store.fs.exists(runs):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in store.fs.ls(runs, detail=False)]
    return sorted((n for n in names if _started(n)), reverse=True)


def read_run(store: ArtifactStore, run_id: str) -> RunRow:
    record_path = store.run_path(run_id, "run.json")
    if not store.fs.exists(record_path):
        return RunRow(run_id, "-", _started(run_id) or "-", "unfinished", None, 0, 0, "-")
    record = store.read_json(record_path)
    stages = record.get("stages", [])
    ran = sum(s.get("status") == "ran" for s in stages)
    version = record.get("model_version")
    model = f"{version} {'promoted' if record.get('promoted') else 'not promoted'}" \
        if version else "-"
    status = record.get("status") or ("ok" if record.get("complete") else "failed")
    started = record.get("started_at")
    return RunRow(
        run_id=run_id,
        config=record.get("config", {}).get("name", "-"),
        started=_utc(datetime.fromisoformat(started)) if started else _started(run_id) or "-",
        status=status,
        seconds=record.get("seconds"),
        ran=ran,
        cached=len(stages) - ran,
        model=model,
    )


def list_runs(store: ArtifactStore, limit: int | None = None) -> list[RunRow]:
    return [read_run(store, run_id) for run_id in run_ids(store)[:limit]]


def latest_computing_run(store: ArtifactStore) -> str | None:
    """The newest run that computed at least one stage, or None."""
    return next((run_id for run_id in run_ids(store) if read_run(store, run_id).computed), None)


def render_runs(rows: list[RunRow]) -> str:
    head = (f"{'run id':<23} {'config':<18} {'started (UTC)':<19} {'status':<10} {'seconds':>8}  "
            f"{'stages':<16} model")
    lines = [head, "-" * len(head)]
    for r in rows:
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else "-"
        stages = f"{r.ran} ran, {r.cached} cached" if r.ran or r.cached else "-"
        lines.append(f"{r.run_id:<23} {r.config:<18.18} {r.started:<19} {r.status:<10} "
                     f"{seconds:>8}  {stages:<16} {r.model}")
    return "\n".join(lines)


def _started(run_id: str) -> str | None:
    try:
        return _utc(datetime.strptime(run_id.split("-")[0], RUN_ID_TIME))
    except ValueError:
        return None


def _utc(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
