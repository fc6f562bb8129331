"""A differently shaped event table runs through every stage with a new config and no new code:
string keys and entities, epoch-second time columns, a binary label."""

from __future__ import annotations

import json

from tests.conftest import REPO, run_cli

ORDERS = REPO / "configs" / "orders.yaml"


def test_orders_config_runs_every_stage(ray_session, tmp_path):
    code, output, summary = run_cli(
        "run", "-c", str(ORDERS), "--set", f"dataset.source={tmp_path / 'orders'}",
        "--set", f"artifact_root={tmp_path / 'artifacts'}",
        "--set", "dataset.generate.rows=20000", "--json")
    assert code == 0, output
    assert [s["status"] for s in summary["stages"]] == ["ran"] * 6
    metrics = summary["test_metrics"]
    assert {"log_loss", "auc", "accuracy"} <= set(metrics)
    assert metrics["auc"] > 0.65  # the warehouse backlog and customer history carry real signal
    assert summary["promoted"] is True
    featurize = next(s for s in summary["stages"] if s["name"] == "featurize")
    manifest = json.loads((tmp_path / "artifacts" / "stages" / "featurize" /
                           featurize["cache_key"] / "manifest.json").read_text())
    assert manifest["details"]["audit"]["mismatches"] == 0
    assert manifest["schema"]["ordered_at"].startswith("timestamp[us")
    assert manifest["schema"]["order_id"] == "string"
