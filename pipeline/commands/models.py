"""`pipeline models list | show | alias`: the registry as a person reads it.

Reads and writes only registry files (no torch, no Ray), so these commands answer in a moment.
"""

from __future__ import annotations

from typing import Any

from pipeline.engine.artifacts import ArtifactStore
from pipeline.registry.store import (
    DECISION,
    REPORT,
    alias_history,
    aliases,
    decision,
    models,
    move_alias,
    parse_reference,
    resolve,
    versions,
)

SET_BY_HAND = "set by hand"


def list_text(store: ArtifactStore, model: str | None = None) -> str:
    """Every version of one model (or of every model): metrics, decision, aliases."""
    names = [_known(store, model)] if model else models(store)
    if not names:
        return f"no models under {store.uri(store.registry_path())} yet"
    return "\n\n".join(_model_table(store, name) for name in names)


def show_text(store: ArtifactStore, reference: str) -> str:
    """One version, named `MODEL@VERSION` or `MODEL@ALIAS`: entry, decision, lineage, report."""
    model, ref = parse_reference(reference)
    entry = resolve(store, _known(store, model), ref)
    number = entry["version"]
    pointing = sorted(name for name, target in aliases(store, model).items() if target == number)
    judged = decision(store, model, number)
    report = store.registry_path(model, number, REPORT)
    lines = [f"{model} {number}" + (f"  ({', '.join(pointing)})" if pointing else ""),
             f"  uri:         {entry['uri']}",
             f"  registered:  {entry.get('registered_at', '?')} by run {entry.get('run_id')}",
             f"  test rows:   {entry.get('test_rows')}",
             f"  metrics:     {_metrics(entry['metrics'])}",
             f"  baseline:    {entry['baseline'].get('kind')} "
             f"{entry['baseline'].get('value', float('nan')):.4g}: {_metrics(entry['baseline'])}"]
    if judged:
        champion = judged["champion"]
        lines += [f"  gate:        {'passed' if judged['passed'] else 'rejected'}",
                  *(f"    {reason}" for reason in judged["reasons"]),
                  f"  judged against: {_opponent(champion)}",
                  f"  decision:    {store.uri(store.registry_path(model, number, DECISION))}"]
    else:
        lines.append(f"  gate:        {entry.get('reason', 'no decision recorded')}")
    lines.append(f"  report:      {store.uri(report)}"
                 + ("" if store.fs.exists(report) else " (not written)"))
    lines.append("  lineage:")
    lines += [f"    {stage:<10} cache key {item['cache_key']}  fingerprint "
              f"{item['fingerprint'][:12]}  code {item['code_version']}"
              for stage, item in entry.get("lineage", {}).items()]
    for alias in sorted(aliases(store, model)):
        moves = [m for m in alias_history(store, model, alias) if number in (m["version"],
                                                                              m["previous"])]
        lines += [f"  {alias} move {m['move']}: {m['previous'] or '(unset)'} -> {m['version']} "
                  f"at {m['moved_at']} ({m['reason']})" for m in moves]
    return "\n".join(lines)


def set_alias(store: ArtifactStore, model: str, alias: str, number: str) -> str:
    """Point an alias at a version by hand (a rollback is moving `champion` back)."""
    move = move_alias(store, _known(store, model), alias, number, SET_BY_HAND)
    return (f"{alias} of {model}: {move['previous'] or '(unset)'} -> {move['version']} "
            f"(move {move['move']}, {SET_BY_HAND})")


def _model_table(store: ArtifactStore, model: str) -> str:
    pointing: dict[str, list[str]] = {}
    for alias, target in aliases(store, model).items():
        pointing.setdefault(target, []).append(alias)
    rows = [("version", "registered", "metric", "baseline", "vs champion", "gate", "aliases")]
    for entry in versions(store, model):
        number = entry["version"]
        judged = decision(store, model, number)
        metric = judged["metric"] if judged else "rmse" if "rmse" in entry["metrics"] else "log_loss"
        rows.append((number, entry.get("registered_at", "?"),
                     f"{metric} {entry['metrics'].get(metric, float('nan')):.4f}",
                     f"{entry['baseline'].get(metric, float('nan')):.4f}",
                     _versus(judged), _gate(entry, judged),
                     ", ".join(sorted(pointing.get(number, []))) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    return "\n".join([model, *table])


def _versus(judged: dict[str, Any] | None) -> str:
    if judged is None:
        return "-"
    champion = judged["champion"]
    if champion["version"] is None:
        return "none (first)"
    check = next((c for c in judged["checks"] if c["against"].startswith("champion")), None)
    return f"{champion['version']} {check['improvement']:+.1%}" if check else \
        f"{champion['version']} not scored"


def _gate(entry: dict[str, Any], judged: dict[str, Any] | None) -> str:
    if judged is None:
        return "passed" if entry.get("promoted") else "-"
    return "passed" if judged["passed"] else "rejected"


def _opponent(champion: dict[str, Any]) -> str:
    if champion["version"] is None:
        return "no champion (first model)"
    if champion.get("metrics") is None:
        return f"champion {champion['version']}, not scored: {champion['not_scored']}"
    return f"champion {champion['version']} on {champion['scored_on']}: " \
           f"{_metrics(champion['metrics'])}"


def _metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()
                     if isinstance(value, (int, float)) and name not in ("rows", "value"))


def _known(store: ArtifactStore, model: str) -> str:
    known = models(store)
    if model not in known:
        raise LookupError(f"no model {model!r} under {store.uri(store.registry_path())} "
                          f"(models: {', '.join(known) or 'none yet'})")
    return model
