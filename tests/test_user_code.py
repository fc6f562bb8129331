"""A team's own feature code under the time contract, through the CLI: the example module
(`examples/rideshare_features.py`) passes the audit and predict serves its features bit for bit;
planted leaks in user code fail featurize naming the feature and a row; an edit of the code
reruns featurize and a comment edit does not; bad user code is one line, and nothing is
published for the stage that failed."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.core.formatting import fmt
from tests.conftest import REPO, SMOKE, copy_of_smoke_run, run_cli

EXAMPLE = REPO / "examples" / "rideshare.yaml"
MODULE = REPO / "examples" / "rideshare_features.py"
USER_FEATURES = ["log_distance", "hour_of_day", "driver_id__pace_min_per_km__slow_share__7d"]

HEADER = "import numpy as np\nfrom pipeline import Rows, Window, row_feature, window_aggregation\n"
HONEST_ROW = '''
@row_feature(inputs=["distance_km"])
def log_distance(rows):
    return np.log1p(rows["distance_km"])
'''
HONEST_HOUR = '''
@row_feature(inputs=["requested_at"])
def hour_of_day(rows):
    return (rows["requested_at"].astype("datetime64[m]").astype(np.int64) % 1440) / 60.0
'''
HONEST_AGG = '''
@window_aggregation
def slow_share(window):
    n = window.count()
    return np.where(n > 0, window.sum(window.values > 3.5) / np.maximum(n, 1), np.nan)
'''


def _stage(summary: dict, name: str) -> dict:
    return next(s for s in summary["stages"] if s["name"] == name)


def _manifest(root: Path, stage: str, key: str) -> dict:
    return json.loads((root / "stages" / stage / key / "manifest.json").read_text())


@pytest.fixture(scope="module")
def example_run(smoke_run, tmp_path_factory):
    """The example config on a copy of the smoke run: the same dataset, so ingest and validate
    are reused and featurize onwards run with the user's features."""
    root, overrides = copy_of_smoke_run(smoke_run, tmp_path_factory.mktemp("user-code"))
    code, output, summary = run_cli("run", "-c", str(EXAMPLE), *overrides, "--json")
    assert code == 0, output
    return root, overrides, summary


def _module(folder: Path, *parts: str) -> Path:
    path = folder / "rideshare_features.py"
    path.write_text(HEADER + "".join(parts))
    return path


def _featurize(overrides: list[str], module: Path, *sets: str) -> tuple[int, str, dict | None]:
    """`pipeline stage featurize` of the example config with `module` as its feature code."""
    return run_cli("stage", "featurize", "-c", str(EXAMPLE), *overrides, *_with(module), *sets,
                   "--json")


def _with(module: Path) -> list[str]:
    """The `--set`s that make `module` the example's user code, with the built-in network."""
    return ["--set", f"features.module={module}", "--set", "train.model=null"]


def _error_line(stderr: str) -> str:
    """The one `error:` line of a failed command (the session's Ray workers may log beside it,
    which a CLI run sends to ray.log)."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line


def _published(root: Path, stage: str) -> set[str]:
    return {path.parent.name for path in (root / "stages" / stage).glob("*/manifest.json")}


def test_the_example_features_pass_the_audit_and_predict_serves_them_bit_for_bit(
        example_run, tmp_path, capsys):
    root, overrides, summary = example_run
    assert [s["status"] for s in summary["stages"]][:2] == ["cached", "cached"]
    details = _manifest(root, "featurize", _stage(summary, "featurize")["cache_key"])["details"]
    assert set(USER_FEATURES) <= set(details["feature_columns"])
    audit, windows = details["audit"], 8  # the smoke config's seven and the user's one
    assert audit["mismatches"] == 0
    assert audit["compared"] == audit["sampled"] * (windows + 2)  # row features too
    assert audit["perturbed"] == audit["sampled"] * windows

    network = json.loads((root / "registry" / "trip-duration" / summary["model_version"] /
                          "model" / "model.json").read_text())["network"]
    assert network["factory"] == "rideshare_features:residual_mlp"  # the team's network
    featurized = _stage(summary, "featurize")["artifact"]
    source = next(arg.split("=", 1)[1] for arg in overrides if arg.startswith("dataset.source="))
    day = sorted(Path(source).glob("day=*"))[-2]
    output = tmp_path / "scored.parquet"
    code, printed, _ = run_cli("predict", "-c", str(EXAMPLE), *overrides, "--model",
                               "trip-duration@champion", "--input", str(day), "--output",
                               str(output))
    assert code == 0, printed
    scored = pq.read_table(output).sort_by("trip_id")
    stored = pads.dataset(f"{featurized}/data", format="parquet").to_table(
        filter=pc.field("trip_id").isin(scored["trip_id"])).sort_by("trip_id")
    scored = scored.filter(pc.field("trip_id").isin(stored["trip_id"]))  # validate's kept rows
    assert stored.num_rows > 1000 and scored["trip_id"].equals(stored["trip_id"])
    for name in USER_FEATURES:
        assert scored[name].equals(stored[name]), name

    edited = tmp_path / "rideshare_features.py"
    edited.write_text(MODULE.read_text().replace("SLOW_PACE_MIN_PER_KM = 3.5",
                                                 "SLOW_PACE_MIN_PER_KM = 4.0"))
    code, printed, _ = run_cli("predict", "-c", str(EXAMPLE), *overrides, "--set",
                               f"features.module={edited}", "--model", "trip-duration@champion",
                               "--input", str(day), "--output", str(tmp_path / "other.parquet"))
    assert code == 1 and "predict with the code it was trained with" in capsys.readouterr().err


def test_trace_shows_a_row_feature_with_the_values_it_read(example_run):
    root, overrides, summary = example_run
    featurized = _stage(summary, "featurize")["artifact"]
    row = pq.read_table(next(Path(featurized, "data").glob("*.parquet"))).slice(500, 1)
    key, distance = row["trip_id"][0].as_py(), row["distance_km"][0].as_py()
    code, output, _ = run_cli("trace", str(key), "-c", str(EXAMPLE), *overrides)
    assert code == 0, output
    assert any(line.startswith("[featurize") and "log_distance = " in line
               and f"row feature of the row's own distance_km = {fmt(distance)}" in line
               for line in output.splitlines()), output
    assert any("driver_id__pace_min_per_km__slow_share__7d = " in line
               for line in output.splitlines())


@pytest.mark.parametrize("planted, feature", [
    ('''
@row_feature(inputs=["distance_km"])
def log_distance(rows):  # normalised by the whole chunk, future rows included
    d = rows["distance_km"]
    return d / np.nanmean(d)
''', "log_distance"),
    ('''
@window_aggregation
def slow_share(window):  # reads one value past its window: the row's own or a later one
    if not len(window.values):
        return np.full(len(window), np.nan)
    last = np.minimum(window.end, len(window.values) - 1)
    return np.where(window.end > 0, window.values[last], np.nan)
''', "driver_id__pace_min_per_km__slow_share__7d"),
    ('''
@window_aggregation
def slow_share(window):  # divided by a statistic of every value handed, not its window
    n = window.count()
    return np.where(n > 0, window.sum(window.values) / np.maximum(n, 1), np.nan) \\
        / np.nanmean(window.values)
''', "driver_id__pace_min_per_km__slow_share__7d"),
])
def test_planted_leaks_in_user_code_fail_featurize_naming_the_feature_and_a_row(
        example_run, tmp_path, capsys, planted, feature):
    root, overrides, _ = example_run
    honest = [HONEST_ROW, HONEST_HOUR, HONEST_AGG]
    name = planted.split("def ")[1].split("(")[0]
    parts = [planted if f"def {name}(" in part else part for part in honest]
    before = _published(root, "featurize")
    code, output, _ = _featurize(overrides, _module(tmp_path, *parts))
    error = capsys.readouterr().err
    assert code == 1, output
    assert error.startswith("error: stage featurize failed: time-travel audit failed"), error
    assert f"feature {feature}, row " in error
    assert _published(root, "featurize") == before


def test_user_code_versions_the_stages_that_run_it(example_run, tmp_path):
    root, overrides, _ = example_run
    module = _module(tmp_path, HONEST_ROW, HONEST_HOUR, HONEST_AGG)
    code, output, first = run_cli("run", "-c", str(EXAMPLE), *overrides,
                                  *_with(module), "--json")
    assert code in (0, 3), output

    module.write_text(module.read_text().replace("def slow_share(window):",
                                                 "def slow_share(window):\n    # a comment\n"
                                                 '    """A docstring."""'))
    code, output, commented = run_cli("run", "-c", str(EXAMPLE), *overrides,
                                      *_with(module), "--json")
    assert code in (0, 3), output
    assert all(s["status"] == "cached" for s in commented["stages"])

    module.write_text(module.read_text().replace("> 3.5", "> 3.0"))
    code, output, edited = run_cli("run", "-c", str(EXAMPLE), *overrides,
                                   *_with(module), "--json")
    assert code in (0, 3), output
    assert [s["status"] for s in edited["stages"]] == ["cached"] * 2 + ["ran"] * 4
    assert _stage(edited, "featurize")["cache_key"] != _stage(first, "featurize")["cache_key"]


@pytest.mark.parametrize("module, key, expected", [
    ("import not_a_module_anywhere\n", "features.module", "does not import: "
     "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
    (HONEST_HOUR + HONEST_AGG, "features.row.0", "has no function 'log_distance'"),
    (HONEST_ROW.replace("@row_feature", "@window_aggregation\n#").replace(
        '(inputs=["distance_km"])', "") + HONEST_HOUR + HONEST_AGG, "features.row.0",
     "log_distance is not declared as a @row_feature"),
    (HONEST_ROW.replace('"distance_km"]', '"fare"]') + HONEST_HOUR + HONEST_AGG,
     "features.row.0", "column 'fare' is known only at label time, but the row feature "
     "log_distance reads it at event time: refused (label leakage)"),
])
def test_user_code_that_cannot_run_is_a_config_error_naming_the_key(example_run, tmp_path,
                                                                     capsys, module, key,
                                                                     expected):
    _, overrides, _ = example_run
    path = tmp_path / "rideshare_features.py"
    path.write_text(HEADER + module)
    code, _, _ = _featurize(overrides, path)
    error = capsys.readouterr().err
    assert code == 2, error
    assert f"  {key}: " in error and expected in error, error


@pytest.mark.parametrize("body, expected", [
    ("return 1 / 0", "row feature log_distance raised ZeroDivisionError: division by zero"),
    ('return rows["distance_km"][:-1]', "row feature log_distance returned shape"),
    ('return rows["distance_km"] / 0.0', "row feature log_distance returned an infinite value"),
    ('return rows["fare"]', "row feature log_distance read column 'fare', which it did not "
     "declare (inputs: distance_km)"),
])
def test_a_user_function_that_breaks_its_contract_is_one_line_and_publishes_nothing(
        example_run, tmp_path, capsys, body, expected):
    root, overrides, _ = example_run
    row = HONEST_ROW.replace('return np.log1p(rows["distance_km"])', body)
    before = _published(root, "featurize")
    code, _, _ = _featurize(overrides, _module(tmp_path, row, HONEST_HOUR, HONEST_AGG))
    error = _error_line(capsys.readouterr().err)
    assert code == 1, error
    assert error.startswith("error: stage featurize failed: ") and expected in error, error
    assert "\x1b[" not in error
    assert _published(root, "featurize") == before


FACTORY = '''
@model_factory
def linear(inputs: ModelInputs):
    import torch
    from torch import nn

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(inputs.num_features, 1)

        def forward(self, features, categorical):
            return self.layer(features).squeeze(-1)

    return Linear()
'''


def test_a_team_network_trains_and_outlives_its_module(smoke_copy, tmp_path, capsys):
    """A model factory's module is stored with the model: after the module is gone, the gate
    scores that champion and predict serves it, with the built-in features and no user code."""
    root, overrides = smoke_copy
    module = tmp_path / "team.py"
    module.write_text(HEADER + "from pipeline import ModelInputs, model_factory\n" + FACTORY)
    team = ["--set", f"features.module={module}", "--set", "train.model=team:linear"]
    code, output, summary = run_cli("run", "-c", str(SMOKE), *overrides, *team, "--json")
    assert code in (0, 3), output
    assert [s["status"] for s in summary["stages"]] == ["cached"] * 3 + ["ran"] * 3
    version = summary["model_version"]
    saved = json.loads((root / "registry" / "trip-duration" / version / "model" /
                        "model.json").read_text())["network"]
    assert saved["factory"] == "team:linear" and "class Linear" in saved["source"]
    assert run_cli("models", "alias", "trip-duration", "champion", version, "-c", str(SMOKE),
                   *overrides)[0] == 0
    module.unlink()

    code, output, judged = run_cli("run", "-c", str(SMOKE), *overrides, "--set",
                                   "train.epochs=2", "--json")
    assert code in (0, 3), output
    decision = json.loads((root / "registry" / "trip-duration" / judged["model_version"] /
                           "decision.json").read_text())
    assert decision["champion"]["version"] == version and decision["champion"]["metrics"]

    source = next(arg.split("=", 1)[1] for arg in overrides if arg.startswith("dataset.source="))
    day = sorted(Path(source).glob("day=*"))[-2]
    code, printed, _ = run_cli("predict", "-c", str(SMOKE), *overrides, "--model",
                               f"trip-duration@{version}", "--input", str(day), "--output",
                               str(tmp_path / "scored.parquet"))
    assert code == 0, capsys.readouterr().err
    assert pq.read_table(tmp_path / "scored.parquet").num_rows > 1000


def test_a_team_network_may_bring_its_own_loss(smoke_copy, tmp_path):
    """A module with `loss(output, target)` trains and early-stops on it: an L1 loss on the
    standardised label is the validation MAE over the label's standard deviation."""
    root, overrides = smoke_copy
    module = tmp_path / "team.py"
    module.write_text(HEADER + "from pipeline import ModelInputs, model_factory\n" + FACTORY.replace(
        "            return self.layer(features).squeeze(-1)\n",
        "            return self.layer(features).squeeze(-1)\n\n"
        "        def loss(self, output, target):\n"
        "            return (output - target).abs().mean()\n"))
    code, output, summary = run_cli("stage", "train", "-c", str(SMOKE), *overrides, "--set",
                                    f"features.module={module}", "--set", "train.model=team:linear",
                                    "--json")
    assert code == 0, output
    train = _stage(summary, "train")["artifact"]
    metrics = _manifest(root, "train", _stage(summary, "train")["cache_key"])["details"]["metrics"]
    label_std = json.loads(Path(train, "model", "preprocessing.json").read_text())["label_std"]
    assert metrics["loss"] * label_std == pytest.approx(metrics["mae"], rel=1e-6)


@pytest.mark.parametrize("body, expected", [
    ("return 42", "model factory team:linear returned int, not a torch.nn.Module"),
    ("return type('M', (torch.nn.Linear,), {'forward': lambda self, f, c: torch.nn.Linear.forward("
     "self, f).squeeze(-1), 'loss': lambda self, o, t: (o - t).abs()})(inputs.num_features, 1)",
     "model factory team:linear: loss(output, target) must give one number"),
    ("return torch.nn.Linear(3, 1)", "model factory team:linear: forward(features"),
    ("return type('M', (torch.nn.Module,), {'forward': lambda self, f, c: f[:, :5]})()",
     "model factory team:linear: forward gives (2, 5) for 2 rows; expected (2,)"),
])
def test_a_model_factory_that_breaks_its_contract_is_one_line_and_publishes_nothing(
        smoke_copy, tmp_path, capsys, body, expected):
    root, overrides = smoke_copy
    module = tmp_path / "team.py"
    module.write_text(HEADER + "import torch\nfrom pipeline import model_factory\n\n"
                      f"@model_factory\ndef linear(inputs):\n    {body}\n")
    before = _published(root, "train")
    code, _, _ = run_cli("stage", "train", "-c", str(SMOKE), *overrides, "--set",
                         f"features.module={module}", "--set", "train.model=team:linear")
    error = _error_line(capsys.readouterr().err)
    assert code == 1, error
    assert error.startswith("error: stage train failed: ") and expected in error, error
    assert _published(root, "train") == before


def test_a_network_module_versions_train_and_not_featurize(smoke_copy, tmp_path):
    """A module holding only a network is train's code: an edit retrains, a comment edit reruns
    nothing, and featurize, which does not run it, never reruns for it."""
    root, overrides = smoke_copy
    module = tmp_path / "team.py"
    module.write_text(HEADER + "from pipeline import ModelInputs, model_factory\n" + FACTORY)
    team = ["-c", str(SMOKE), *overrides, "--set", f"features.module={module}",
            "--set", "train.model=team:linear", "--json"]
    code, output, first = run_cli("run", *team)
    assert code in (0, 3), output
    assert [s["status"] for s in first["stages"]][:4] == ["cached"] * 3 + ["ran"]

    module.write_text(module.read_text().replace("    class Linear(nn.Module):",
                                                 "    # a comment\n    class Linear(nn.Module):"))
    code, output, commented = run_cli("run", *team)
    assert code in (0, 3), output
    assert all(s["status"] == "cached" for s in commented["stages"])

    module.write_text(module.read_text().replace("nn.Linear(inputs.num_features, 1)",
                                                 "nn.Linear(inputs.num_features, 1, bias=False)"))
    code, output, edited = run_cli("run", *team)
    assert code in (0, 3), output
    assert [s["status"] for s in edited["stages"]][:4] == ["cached"] * 3 + ["ran"]
    assert _stage(edited, "train")["cache_key"] != _stage(first, "train")["cache_key"]
