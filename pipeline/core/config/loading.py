"""A config from YAML and `--set` overrides, validated with every problem reported at once,
each as `key: message`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.core.config.models import PipelineConfig
from pipeline.core.config.relative import resolve_relative_time
from pipeline.core.config.rules import Problem, cross_check_problems
from pipeline.core.user_code import location

DEFAULT_CONFIG = "configs/local.yaml"


class ConfigError(ValueError):
    """A config that cannot run; the message names every offending key."""


class _Loader(yaml.SafeLoader):
    """Safe YAML in which an impossible date (2026-02-30) stays text, so that validation can
    refuse it under its key instead of the YAML parser failing without one."""


def _timestamp_or_text(loader: _Loader, node: yaml.Node) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` (value parsed as YAML) to the raw config mapping."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node: Any = data
    for depth, key in enumerate(keys[:-1]):
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            node = node[_index(node, key, where)]
        else:
            node = node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: {where} is a value, not a section")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {dotted}: {raw!r} is not valid YAML ({_yaml_problem(exc)})") \
            from None
    if isinstance(node, list):
        node[_index(node, keys[-1], dotted)] = value
    else:
        node[keys[-1]] = value


def _index(node: list, key: str, where: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"--set {where}: index {key!r} out of range (list of {len(node)})")
    return int(key)


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: list[str] = ()) -> PipelineConfig:
    """Read, override and validate a config; raise ConfigError naming each bad key."""
    path = Path(path)
    try:
        data = _yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    data = {} if data is None else data
    if overrides and not isinstance(data, dict):
        raise ConfigError(f"--set {overrides[0]}: {path} holds a {type(data).__name__}, not a "
                          "mapping of sections, so there is no key to set")
    for assignment in overrides:
        apply_override(data, assignment)
    features = data.get("features") if isinstance(data, dict) else None
    if isinstance(features, dict) and isinstance(features.get("module"), str):
        features["module"] = location(features["module"], path.parent)  # relative to the config
    return parse_config(data, source=str(path))


def parse_config(data: Any, source: str = "config") -> PipelineConfig:
    """Validate a raw config mapping; raise ConfigError listing every problem (fields and cross-
    field rules together), one `  key: message` line each."""
    if not isinstance(data, dict):
        _refuse(source, [Problem("(top level)", f"expected a mapping of sections, got "
                                 f"{type(data).__name__}")])
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        failed = {error["loc"][0] for error in exc.errors() if error["loc"]}
        sections, dated = resolve_relative_time(_valid_sections(data, failed))
        _refuse(source, problems + dated + cross_check_problems(sections))
    sections, dated = resolve_relative_time({name: getattr(config, name)
                                             for name in _CROSS_CHECKED})
    _refuse(source, dated + cross_check_problems(sections))
    return config.model_copy(update={"dataset": sections["dataset"], "split": sections["split"]})


_CROSS_CHECKED = ("dataset", "features", "split", "train", "telemetry")  # the sections cross checks read


def _valid_sections(data: dict[str, Any], failed: set) -> dict[str, Any]:
    """The cross-checked sections of `data` that validated (their defaults when absent)."""
    sections = {}
    for name in _CROSS_CHECKED:
        if name not in failed:
            field = PipelineConfig.model_fields[name]
            sections[name] = (field.annotation.model_validate(data[name]) if name in data
                              else field.get_default())
    return sections


def _problem(error: dict[str, Any]) -> Problem:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    return Problem(key, "unknown key" if error["type"] == "extra_forbidden" else message)


def _refuse(source: str, problems: list[Problem]) -> None:
    if problems:
        lines = "\n".join(f"  {key}: {message}" for key, message in problems)
        raise ConfigError(f"{source} is not a valid config:\n{lines}")
