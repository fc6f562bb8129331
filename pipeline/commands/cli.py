"""`pipeline run | stage | trace | runs | profile | predict | models`: the surface users touch.

Exit codes: 0 done (a run's model, if it reached the gate, is the champion); 1 a failure, one line
on stderr, `error: <message>`; 2 an invalid config, `config error: ` and one line per bad key;
3 a run or stage that ran fine but whose model the gate rejected (registered, not promoted).
`--debug` adds the traceback of a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from pipeline.core.config import DEFAULT_CONFIG, ConfigError, PipelineConfig, load_config

_SHOWN_LINES = 3  # of a multi-line failure message, before "(+N more lines)"
EXIT_REJECTED = 3  # ran fine, the gate rejected the model: schedulers tell it from a failure (1)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                        help=f"YAML config (default: {DEFAULT_CONFIG})")
    common.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=3")
    common.add_argument("--debug", action="store_true", help="show the traceback of a failure")

    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--json", action="store_true", help="end with a JSON summary line")
    running.add_argument("--as-of", metavar="TIME", help="the range's end (dataset.end), from "
                         "which lookback, test and validation count back (default: the config's)")
    running.add_argument("--verbose", action="store_true",
                         help="show Ray's own log lines (default: runs/<run_id>/ray.log)")
    commands.add_parser("run", parents=[common, running], help="run the whole DAG")
    stage = commands.add_parser("stage", parents=[common, running],
                                help="run one stage from the artifacts of the stages before it")
    stage.add_argument("name", help="the stage to run, e.g. featurize (see `pipeline/stages/dag.py`)")
    trace = commands.add_parser("trace", parents=[common], help="follow one row through every stage")
    trace.add_argument("row_key")
    profile = commands.add_parser("profile", parents=[common],
                                  help="per-stage time, rows/s and bytes of a run, and a timeline")
    profile.add_argument("run_id", nargs="?",
                         help="default: the latest run that computed a stage")
    runs = commands.add_parser("runs", parents=[common], help="the runs under the artifact root")
    runs.add_argument("--limit", type=int, default=20, help="newest N runs (default: 20)")
    predict = commands.add_parser("predict", parents=[common],
                                  help="score an event table with a registered model, computing "
                                       "its features with the code and spec it was trained with")
    predict.add_argument("--model", required=True, metavar="MODEL@REF",
                         help="a registered version or alias, e.g. trip-duration@v1 or "
                              "trip-duration@champion")
    predict.add_argument("--input", required=True, metavar="URI",
                         help="parquet file or folder of events to score")
    predict.add_argument("--output", required=True, metavar="URI",
                         help="parquet file for the predictions; quarantined rows go beside it "
                              "(NAME.quarantine.parquet)")
    predict.add_argument("--as-of", metavar="TIME",
                         help="use only what was known before TIME (ISO 8601, UTC by default); "
                              "default: the latest event time of the input")
    commands.add_parser("verify", parents=[common], help="check that every published output "
                        "still holds what its manifest says (reads every file)")
    _add_models_parser(commands, common)
    return parser


def _add_models_parser(commands, common: argparse.ArgumentParser) -> None:
    models = commands.add_parser("models", help="the model registry: versions, decisions, aliases")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[common],
                                 help="versions with metrics, gate decision and aliases")
    listing.add_argument("model", nargs="?", help="default: every model")
    show = actions.add_parser("show", parents=[common],
                              help="one version: entry, decision, lineage, report")
    show.add_argument("reference", metavar="MODEL@VERSION|ALIAS",
                      help="e.g. trip-duration@champion or trip-duration@v2")
    alias = actions.add_parser("alias", parents=[common],
                               help="point an alias at a version (rollback: move champion back)")
    alias.add_argument("model")
    alias.add_argument("alias", help="e.g. champion")
    alias.add_argument("version", help="e.g. v2")


def _models(config: PipelineConfig, args: argparse.Namespace) -> None:
    from pipeline.commands.models import list_text, set_alias, show_text
    from pipeline.engine.artifacts import ArtifactStore

    store = ArtifactStore(config.artifact_root, config.storage_options)
    if args.action == "list":
        print(list_text(store, args.model))
    elif args.action == "show":
        print(show_text(store, args.reference))
    else:
        print(set_alias(store, args.model, args.alias, args.version))


def _profile(config, run_id: str | None) -> str:
    """Per-stage table of a finished run; the timeline PNG is written beside its run record."""
    import tempfile

    from pipeline.commands.profile import profile_run
    from pipeline.commands.runs import latest_computing_run
    from pipeline.engine.artifacts import ArtifactStore

    store = ArtifactStore(config.artifact_root, config.storage_options)
    if run_id is None:
        run_id = latest_computing_run(store)
        if run_id is None:
            raise LookupError(f"no run under {config.artifact_root} has computed a stage yet")
    remote = store.run_path(run_id)
    if not store.fs.exists(remote):
        raise LookupError(f"run {run_id} not found under {config.artifact_root}/runs")
    pictures = f"\ntimeline: {store.uri(remote)}/timeline.png, timeline.json (ui.perfetto.dev)"
    if store.is_local:
        return profile_run(remote, f"{remote}/timeline.png") + pictures
    with tempfile.TemporaryDirectory() as local:
        store.fs.get(remote + "/", local, recursive=True)
        table = profile_run(local, f"{local}/timeline.png")
        for name in ("timeline.png", "timeline.json"):
            store.fs.put_file(f"{local}/{name}", f"{remote}/{name}")
    return table + pictures


def _predict(config: PipelineConfig, args: argparse.Namespace) -> str:
    """Batch prediction; a failure inside a Ray task is reported as the failure it was."""
    import ray.exceptions

    from pipeline.engine.ray_cluster import disconnect_ray
    from pipeline.predict.batch import predict

    try:
        return predict(config, args.model, args.input, args.output, args.as_of)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause if isinstance(exc.cause, Exception) else exc from None
    finally:
        disconnect_ray()  # a local Ray it started stops sooner here than at exit


def entry() -> None:
    """The `pipeline` command: `main`, then leave without tearing the interpreter down.

    Python's own finalisation (torch, Ray, Arrow and matplotlib modules and their objects) is
    slow and comes after every artifact, the run record and the summary are written. Exit
    handlers still run (they flush and close what was registered, temporary folders included)
    and the standard streams are flushed; only the interpreter's teardown is skipped. In-process
    callers (tests) use `main`."""
    import atexit
    import logging

    code = main()
    atexit._run_exitfuncs()  # what `sys.exit` would run before finalising
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        return _fail(args, f"config error: {exc}", 2)
    except Exception as exc:  # the one place where every other failure becomes one line
        return _fail(args, f"error: {_one_line(_describe(exc))}", 1)


def _dispatch(args: argparse.Namespace) -> int:
    as_of = getattr(args, "as_of", None) if args.command in ("run", "stage") else None
    config = load_config(args.config, [*args.overrides, *([f"dataset.end={as_of}"] if as_of
                                                          else [])])
    if args.command in ("run", "stage"):
        return _run(config, args)
    if args.command == "runs":
        from pipeline.commands.runs import list_runs, render_runs
        from pipeline.engine.artifacts import ArtifactStore

        print(render_runs(list_runs(ArtifactStore(config.artifact_root, config.storage_options),
                                    args.limit)))
    elif args.command == "trace":
        from pipeline.commands.row_trace import trace_row

        print(trace_row(config, args.row_key))
    elif args.command == "profile":
        print(_profile(config, args.run_id))
    elif args.command == "predict":
        print(_predict(config, args))
    elif args.command == "models":
        _models(config, args)
    elif args.command == "verify":
        from pipeline.commands.verify import render_findings, verify_root
        from pipeline.engine.artifacts import ArtifactStore

        report, whole = render_findings(verify_root(
            ArtifactStore(config.artifact_root, config.storage_options)))
        print(report)
        return 0 if whole else 1
    return 0


def _run(config: PipelineConfig, args: argparse.Namespace) -> int:
    """The DAG or one stage. Ray's own output goes to the run's `ray.log` (unless --verbose):
    the terminal shows the stages, live at a terminal and as plain lines otherwise, then the
    gate's verdict. Returns the exit code (3: ran fine, the model is not the champion)."""
    from pipeline.commands.display import dates_line, display_for
    from pipeline.commands.ray_output import RayOutputToFile
    from pipeline.datasets import prepare_source
    from pipeline.engine.dag import stage_by_name
    from pipeline.engine.ray_cluster import disconnect_ray
    from pipeline.engine.runner import Runner
    from pipeline.stages.dag import STAGES  # every stage: not paid by --help or profile

    _check_artifact_root(config)
    display = display_for(sys.stdout, args.json, args.verbose)
    display.note(dates_line(config))
    runner = Runner(config, STAGES, display=display)
    only = args.name if args.command == "stage" else None
    if only is None or not stage_by_name(only, STAGES).inputs:
        prepare_source(config, display.note)
    ray_log = None
    if args.verbose:
        summary = runner.run(only=only)
    else:
        log = RayLog(runner.store, runner.run_id)
        try:
            with RayOutputToFile(log.local) as terminal:
                try:
                    with display.showing(terminal):
                        summary = runner.run(only=only)
                finally:
                    disconnect_ray()  # Ray's goodbye lines go to the log too
        finally:
            ray_log = log.publish()
    display.summary(summary, ray_log)
    if args.json:
        print(json.dumps(summary.as_json()))
    return EXIT_REJECTED if summary.rejected else 0


class RayLog:
    """Where a run's `ray.log` is written (the run folder, or a local file for an object store)
    and published (`runs/<run_id>/ray.log` under the artifact root)."""

    def __init__(self, store, run_id: str) -> None:
        import tempfile

        self.store, self.target = store, store.run_path(run_id, "ray.log")
        if store.is_local:
            self.local = Path(self.target)
        else:
            handle, name = tempfile.mkstemp(prefix=f"raypipe-{run_id}-", suffix=".log")
            os.close(handle)
            self.local = Path(name)

    def publish(self) -> str | None:
        """The log's final location, or None when Ray printed nothing (an all-cached run)."""
        written = self.local.exists() and self.local.stat().st_size > 0
        if not self.store.is_local:
            if written:
                self.store.fs.put_file(str(self.local), self.target)
            self.local.unlink(missing_ok=True)
        return self.store.uri(self.target) if written else None


def _check_artifact_root(config: PipelineConfig) -> None:
    """A local artifact root must be creatable and writable (checked before any stage runs)."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, root = fsspec.core.url_to_fs(config.artifact_root, **config.storage_options)
    if not isinstance(fs, LocalFileSystem):
        return
    existing = Path(root)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"artifact_root {config.artifact_root} cannot be written: "
                              f"{existing} is not a writable folder")


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    if args.debug:
        traceback.print_exc()
    print(message, file=sys.stderr)
    return code


def _describe(exc: Exception) -> str:
    """The exception as a sentence: our own exceptions and plain ValueError/LookupError carry a
    message written for people; OS errors name their file; anything else says its type."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    message = str(exc.args[0]) if type(exc) is LookupError and exc.args else str(exc)
    if type(exc).__module__.startswith("pipeline") or type(exc) in (ValueError, LookupError):
        return message or type(exc).__name__
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    shown = "; ".join(lines[:_SHOWN_LINES])
    hidden = len(lines) - _SHOWN_LINES
    return f"{shown} (+{hidden} more lines; --debug shows them)" if hidden > 0 else shown


if __name__ == "__main__":
    entry()
