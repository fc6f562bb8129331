"""Typed stage ports: cache keys correct by construction, and a sixth stage that touches nothing else.

- A stage's code version is derived from its import graph: editing a helper it imports changes its
  key, editing an unrelated module or a docstring does not.
- A stage's key hashes only the parameters it reads: a validation rule reruns validate and what
  follows, never ingest.
- A toy sixth stage, declared in this file and appended to the DAG, runs, caches, publishes a
  manifest with its typed facts, and explains a row in `pipeline trace`.
"""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.commands.row_trace import trace_row
from pipeline.core.config import PipelineConfig, load_config
from pipeline.core.schema import Roles
from pipeline.engine.code_version import code_version, package_modules
from pipeline.engine.dag import check_order
from pipeline.engine.runner import Runner
from pipeline.engine.stage import (
    Facts,
    Files,
    Folder,
    Params,
    RowQuestion,
    Stage,
    StageContext,
    StageResult,
)
from pipeline.stages.dag import STAGES
from pipeline.stages.featurize import STAGE as FEATURIZE
from tests.conftest import SMOKE, run_cli


# -- derived code versions -------------------------------------------------------------------
@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A throwaway package: `stage` imports `helper` (inside a function) and `.shared`."""
    root = tmp_path / "toypkg"
    root.mkdir()
    files = {
        "__init__.py": "",
        "stage.py": """
            from . import shared

            def run():
                from toypkg.helper import double
                return double(shared.VALUE)
        """,
        "helper.py": '''
            def double(x):
                """Twice x."""
                return 2 * x
        ''',
        "shared.py": "VALUE = 21\n",
        "unrelated.py": "def other():\n    return 0\n",
    }
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return root


def _version(module: str) -> str:
    return code_version.__wrapped__(module)  # uncached: the files change under the test


def test_a_stage_depends_on_every_module_it_imports(toy_package):
    assert package_modules("toypkg.stage") == {"toypkg", "toypkg.stage", "toypkg.helper",
                                               "toypkg.shared"}
    before = _version("toypkg.stage")
    (toy_package / "unrelated.py").write_text("def other():\n    return 1\n")
    assert _version("toypkg.stage") == before, "an unrelated module is not this stage's code"
    helper = toy_package / "helper.py"
    helper.write_text(helper.read_text().replace("Twice x.", "Two times x.") + "# a comment\n")
    assert _version("toypkg.stage") == before, "docstrings and comments are not code"
    helper.write_text(helper.read_text().replace("2 * x", "x + x"))
    assert _version("toypkg.stage") != before, "a helper the stage imports is its code"


def test_code_versions_kept_on_disk_equal_fresh_ones_and_a_broken_cache_is_ignored(
        toy_package, tmp_path, monkeypatch):
    import pipeline.engine.code_version as versions

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(versions, "_DISK", versions._DiskCache())
    fresh = _version("toypkg.stage")
    assert versions.cache_file().is_file()
    monkeypatch.setattr(versions, "_DISK", versions._DiskCache())  # a new process: reads the file
    with monkeypatch.context() as no_parsing:  # every unchanged module comes from the file
        no_parsing.setattr(versions, "_read", None)
        assert _version("toypkg.stage") == fresh
    helper = toy_package / "helper.py"
    helper.write_text(helper.read_text().replace("2 * x", "x + x"))  # same size, maybe same mtime
    edited = _version("toypkg.stage")
    assert edited != fresh, "the cache is keyed by the text, not by the file's size and time"
    versions.cache_file().write_text("{not json")
    monkeypatch.setattr(versions, "_DISK", versions._DiskCache())
    assert _version("toypkg.stage") == edited


def test_upstream_stage_modules_are_not_a_stages_code():
    """Featurize's key covers the modules that name its columns; train's does not cover
    featurize's code (featurize's output fingerprint is in train's key already)."""
    featurize = package_modules("pipeline.stages.featurize")
    assert {"pipeline.core.config", "pipeline.core.durations", "pipeline.features.windows",
            "pipeline.core.packed"} <= featurize
    train = STAGES[3]
    modules = package_modules(train.run.__module__, train.upstream_modules)
    assert "pipeline.model.loop" in modules and "pipeline.model.preprocessing" in modules
    assert not modules & {"pipeline.stages.featurize", "pipeline.features.windows"}
    evaluate = STAGES[4]
    assert {"pipeline.model.predictor", "pipeline.model.network", "pipeline.registry.store"} <= \
        package_modules(evaluate.run.__module__, evaluate.upstream_modules)


# -- keys from parameters --------------------------------------------------------------------
def test_a_validation_rule_reruns_validate_and_later_stages_but_not_ingest(smoke_copy):
    _, overrides = smoke_copy
    stricter = [*overrides, "--set", "dataset.columns.distance_km.max=20"]
    code, output, summary = run_cli("stage", "validate", "-c", str(SMOKE), *stricter, "--json")
    assert code == 0, output  # ingest's output for the new config was found: its key is unchanged
    (validate,) = summary["stages"]
    assert validate["status"] == "ran" and validate["rows_quarantined"] > 230
    code, output, summary = run_cli("stage", "featurize", "-c", str(SMOKE), *stricter, "--json")
    assert code == 0, output
    assert summary["stages"][0]["status"] == "ran"


def test_params_hold_only_what_a_stage_reads_and_never_a_secret(smoke_run):
    config = load_config(SMOKE, [*smoke_run.overrides[1::2],
                                 "dataset.storage_options={key: AKIAEXAMPLE}"])
    ingest = STAGES[0].params.from_config(config)
    assert ingest.storage_options == {"key": "AKIAEXAMPLE"}, "the stage can use its credentials"
    assert "storage_options" not in ingest.key_payload(), "they are never part of a key"
    assert set(ingest.key_payload()) == {"source", "partition", "start", "end", "columns"}
    assert ingest.key_payload()["columns"]["distance_km"] == "float64"  # no validation rule
    assert "config" not in StageContext.__dataclass_fields__, "stages are handed params only"


# -- a sixth stage ---------------------------------------------------------------------------
class DailyCountsParams(Params):
    roles: Roles

    @classmethod
    def from_config(cls, config: PipelineConfig) -> DailyCountsParams:
        return cls(roles=Roles.of(config.dataset))


class DailyCountsFiles(Files):
    counts = Folder("counts.parquet")


class DailyCountsFacts(Facts):
    days: int


def _count_days(ctx: StageContext[DailyCountsParams, DailyCountsFiles]) -> StageResult:
    event_time = ctx.params.roles.event_time
    rows = pads.dataset(ctx.input(FEATURIZE).files.data, format="parquet").to_table(
        columns=[event_time])
    days = pc.strftime(rows[event_time], format="%Y-%m-%d")
    counts = pa.table({"day": days}).group_by("day").aggregate([("day", "count")]).sort_by("day")
    pq.write_table(counts, ctx.files.counts)
    return StageResult(rows_in=rows.num_rows, rows_out=rows.num_rows,
                       facts=DailyCountsFacts(days=counts.num_rows))


def _explain_day(question: RowQuestion) -> list[str]:
    counts = pq.read_table(question.output.files.counts).to_pylist()
    return [f"its data has {question.output.facts.days} days, the busiest with "
            f"{max(row['day_count'] for row in counts)} rows"]


DAILY_COUNTS = Stage(name="daily_counts", params=DailyCountsParams, files=DailyCountsFiles,
                     facts=DailyCountsFacts, run=_count_days, explain=_explain_day,
                     inputs=(FEATURIZE,))


def test_a_sixth_stage_needs_its_module_and_its_place_in_the_dag(smoke_copy, ray_session):
    root, overrides = smoke_copy
    config = load_config(SMOKE, overrides[1::2])
    stages = (*STAGES, DAILY_COUNTS)
    summary = Runner(config, stages).run()
    assert [(s.name, s.status) for s in summary.stages] == [
        *((stage.name, "cached") for stage in STAGES), ("daily_counts", "ran")]
    toy = summary.stages[-1]
    assert toy.facts == DailyCountsFacts(days=14)
    manifest = Path(root / "stages" / "daily_counts" / toy.cache_key / "manifest.json")
    assert manifest.exists() and '"days": 14' in manifest.read_text()
    again = Runner(config, stages).run()
    assert again.stages[-1].status == "cached"

    key = pq.read_table(next((root / "stages" / "featurize").glob("*/data")))["trip_id"][0]
    report = trace_row(config, str(key), stages=stages)
    assert "[daily_counts" in report and "its data has 14 days" in report


def test_a_stage_whose_inputs_come_later_is_refused():
    with pytest.raises(ValueError, match="must come before it"):
        check_order((DAILY_COUNTS, *STAGES))
