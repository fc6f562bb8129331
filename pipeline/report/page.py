"""The report as one self-contained HTML page: inline CSS, figures as data: URIs, nothing fetched.

Every value that came from data or config passes through `html.escape` (`_e`) on its way in; the
template's own markup is the only unescaped text.
"""

from __future__ import annotations

import base64
from html import escape
from string import Template

from pipeline.report import plots
from pipeline.report.content import ReportContent, Run

_PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>$title</title>
<style>
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.verdict { font-size: 1.25rem; font-weight: 600; padding: 0.5rem 0.8rem; border-radius: 4px; }
.promoted { background: #e3f4e3; color: #1d5e1d; } .rejected { background: #fbe7e3; color: #8a2a17; }
.muted { color: #666; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0; }
th, td { padding: 0.25rem 0.7rem; border-bottom: 1px solid #e4e4e4; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.primary td { font-weight: 600; }
.pass { color: #1d5e1d; } .fail, .warn { color: #8a2a17; font-weight: 600; }
code { font-size: 0.85rem; }
figure { margin: 1.2rem 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92rem; }
</style></head>
<body>
$body
</body></html>
""")


def render(content: ReportContent, run: Run, version: str) -> str:
    """The whole page for `content`, evaluated by `run`, registered as `version`."""
    title = f"{content.model}@{version}"
    body = "\n".join([_header(content, run, title), _metrics(content), _gate(content),
                      _figures(content), _drift(content), _lineage(content, run)])
    return _PAGE.substitute(title=_e(f"{title}: evaluation report"), body=body)


def _header(content: ReportContent, run: Run, title: str) -> str:
    promoted, words = content.verdict()
    return (f"<h1>{_e(title)}</h1>\n"
            f'<p class="muted">evaluation report: run {_e(run.run_id)}, '
            f"config {_e(run.config_name)}; test period from "
            f"{_e(content.test_period_start)}, {content.test_rows:,} rows</p>\n"
            f'<p class="verdict {"promoted" if promoted else "rejected"}">{_e(words)}</p>\n'
            '<p class="muted">The decision was recorded before the champion alias moved; '
            "<code>pipeline models show</code> tells where it points now.</p>")


def _metrics(content: ReportContent) -> str:
    decision = content.decision
    columns = {"candidate": decision.candidate}
    if decision.champion.metrics is not None:
        columns[f"champion {decision.champion.version}"] = decision.champion.metrics
    columns["baseline (training mean)"] = decision.baseline
    names = list(decision.candidate)
    rows = [
        f'<tr class="{"primary" if name == decision.metric else ""}"><td>{_e(name)}</td>'
        + "".join(f'<td class="num">{_number(values.get(name))}</td>' for values in
                  columns.values()) + "</tr>"
        for name in names]
    head = "".join(f"<th>{_e(name)}</th>" for name in columns)
    note = ("" if decision.champion.metrics is not None or decision.champion.version is None else
            f'<p class="muted">champion {_e(decision.champion.version)} was not scored: '
            f"{_e(decision.champion.not_scored)}</p>")
    return (f"<h2>Metrics on the test period</h2>\n<table><tr><th>metric</th>{head}</tr>\n"
            + "\n".join(rows) + f"</table>\n<p class=\"muted\">{_e(decision.metric)} decides "
            f"({'lower' if decision.lower_is_better else 'higher'} is better).</p>{note}")


def _gate(content: ReportContent) -> str:
    checks = "\n".join(
        f"<tr><td>{_e(c.against)}</td><td class=\"num\">{_number(c.value)}</td>"
        f"<td class=\"num\">{c.improvement:+.1%}</td><td class=\"num\">{c.required:+.1%}</td>"
        f"<td class=\"{'pass' if c.passed else 'fail'}\">{'pass' if c.passed else 'FAIL'}</td></tr>"
        for c in content.decision.checks)
    reasons = "\n".join(f"<li>{_e(reason)}</li>" for reason in content.decision.reasons)
    return ("<h2>Gate decision</h2>\n<table><tr><th>against</th><th>its "
            f"{_e(content.decision.metric)}</th><th>improvement</th><th>required</th>"
            f"<th>check</th></tr>\n{checks}</table>\n<p>Reasons:</p>\n<ul>\n{reasons}\n</ul>")


def _figures(content: ReportContent) -> str:
    shown = ", ".join(content.series.values())
    metric = content.decision.metric.upper()
    figures = [
        ("Error over time", plots.error_by_day_png(content),
         f"{metric} of {shown} on each day of the test period; a line that climbs means the "
         "model degrades as its data ages."),
        ("Predicted vs actual", plots.predicted_vs_actual_png(content),
         "The candidate's predictions against the labels on an even sample of the test rows; "
         "points on the diagonal are exact." if content.task == "regression" else
         "The candidate's observed positive rate per bin of predicted probability; a "
         "calibrated model follows the diagonal."),
    ]
    for column in content.slices():
        figures.append((f"Error by {column}", plots.error_by_slice_png(content, column),
                        f"{metric} per value of {column}, its {plots.TOP_VALUES} most frequent "
                        "values first; a slice where the candidate is worse than the champion "
                        "is where it would hurt."))
    return "<h2>Where the errors are</h2>\n" + "\n".join(
        f'<figure><img alt="{_e(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}">\n<figcaption><b>{_e(title)}.</b> '
        f"{_e(caption)}</figcaption></figure>" for title, png, caption in figures)


def _drift(content: ReportContent) -> str:
    drift = content.drift
    ranked = sorted(drift.features.items(), key=lambda item: -item[1].psi)
    rows = "\n".join(f"<tr><td>{_e(name)}</td><td class=\"num\">{f.psi:.3f}</td>"
                     f"<td class=\"{'pass' if f.status == 'ok' else f.status}\">"
                     f"{_e(f.status)}</td></tr>" for name, f in ranked)
    missing = "".join(f"<li>{_e(name)}: {_e(why)}</li>" for name, why in
                      drift.not_compared.items())
    fail = "never" if drift.fail is None else f"{drift.fail:g}"
    return ("<h2>Drift</h2>\n"
            f"<p>Population stability index (PSI) of each feature and the label: the test "
            f"period's {drift.rows:,} rows against {_e(drift.reference)}. Warn from "
            f"{drift.warn:g}, block promotion from {_e(fail)}. Overall: "
            f"<b>{_e(drift.status)}</b>.</p>\n<table><tr><th>feature</th><th>PSI</th>"
            f"<th>status</th></tr>\n{rows}</table>"
            + (f"\n<p>Not compared:</p><ul>{missing}</ul>" if missing else ""))


def _lineage(content: ReportContent, run: Run) -> str:
    snapshot = content.lineage.get("ingest", {})
    facts = [("snapshot fingerprint", snapshot.get("fingerprint", "?")),
             ("source", _source(snapshot.get("source"))),
             ("git commit", run.git_commit or "unknown (no git)"),
             ("trace id", run.trace_id), ("run id", run.run_id), ("config", run.config_name)]
    stages = [(stage, item["cache_key"], item["fingerprint"][:16], item["code_version"])
              for stage, item in content.lineage.items()]
    stages.append(("evaluate", run.evaluate_cache_key, "(this report's stage)",
                   run.evaluate_code_version))
    return ("<h2>Lineage</h2>\n<table>\n"
            + "\n".join(f"<tr><th>{_e(name)}</th><td><code>{_e(value)}</code></td></tr>"
                        for name, value in facts)
            + "</table>\n<table><tr><th>stage</th><th>cache key</th><th>fingerprint</th>"
              "<th>code version</th></tr>\n"
            + "\n".join("<tr>" + "".join(f"<td><code>{_e(cell)}</code></td>" for cell in row)
                        + "</tr>" for row in stages)
            + "</table>")


def _source(source: object) -> str:
    """Ingest's external input (the source URI, its file count and fingerprint) in one line."""
    if isinstance(source, dict):
        return "; ".join(f"{name} {value}" for name, value in sorted(source.items()))
    return "?" if source is None else str(source)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:.4g}"


def _e(value: object) -> str:
    return escape(str(value), quote=True)
