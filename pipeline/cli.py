"""`pipeline run | stage | trace | profile`: the surface users touch."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import DEFAULT_CONFIG, ConfigError, load_config
from pipeline.dag import STAGE_NAMES
from pipeline.runner import Runner, StageFailed


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"YAML config (default: {DEFAULT_CONFIG})")
    common.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3")

    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", parents=[common], help="run the whole DAG")
    run.add_argument("--json", action="store_true", help="end with a JSON summary line")
    stage = commands.add_parser("stage", parents=[common],
                                help="run one stage from the artifacts of the stages before it")
    stage.add_argument("name", choices=STAGE_NAMES)
    stage.add_argument("--json", action="store_true", help="end with a JSON summary line")
    trace = commands.add_parser("trace", parents=[common], help="follow one row through every stage")
    trace.add_argument("row_key")
    profile = commands.add_parser("profile", parents=[common],
                                  help="per-stage time, rows/s and bytes of a run, and a timeline")
    profile.add_argument("run_id", nargs="?", help="default: the latest run")
    return parser


def _profile(config, run_id: str | None) -> str:
    """Per-stage table of a finished run; the timeline PNG is written beside its run record."""
    import tempfile

    from pipeline.artifacts import ArtifactStore
    from pipeline.telemetry.profile import profile_run

    store = ArtifactStore(config.artifact_root, config.storage_options)
    latest = store.latest_run_path()
    if run_id is None:
        if not store.fs.exists(latest):
            raise LookupError(f"no runs under {config.artifact_root} yet")
        run_id = store.read_json(latest)["run_id"]
    remote = store.run_path(run_id)
    if not store.fs.exists(remote):
        raise LookupError(f"run {run_id} not found under {config.artifact_root}/runs")
    if store.is_local:
        return profile_run(remote, f"{remote}/timeline.png") + f"\ntimeline: {remote}/timeline.png"
    with tempfile.TemporaryDirectory() as local:
        store.fs.get(remote + "/", local, recursive=True)
        table = profile_run(local, f"{local}/timeline.png")
        store.fs.put_file(f"{local}/timeline.png", f"{remote}/timeline.png")
    return table + f"\ntimeline: {store.uri(remote)}/timeline.png"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if args.command in ("run", "stage"):
            summary = Runner(config).run(only=args.name if args.command == "stage" else None)
            model = summary.model
            if model:
                print(f"model {model['model']} {model['version']}: {model['reason']}")
            if args.json:
                print(json.dumps(summary.as_json()))
        elif args.command == "trace":
            from pipeline.trace import trace_row

            print(trace_row(config, args.row_key))
        elif args.command == "profile":
            print(_profile(config, args.run_id))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except LookupError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
