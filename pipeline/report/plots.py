"""The report's figures as PNG bytes, drawn from its content alone.

Drawn with matplotlib's object API (Figure, Agg): no pyplot, no global backend state. Every model
keeps one colour across figures: the candidate blue, the champion orange, the baseline grey.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline.monitoring.breakdown import BASELINE, DAY, Sums, group_metric, top_values
from pipeline.report.content import ReportContent

TOP_VALUES = 10  # slices shown per categorical column; the rest are one "other values" bar
_COLOURS = ("#1f77b4", "#ff7f0e", "#7f7f7f", "#2ca02c")
_DPI = 100


def metric_axis_label(content: ReportContent) -> str:
    """The y axis of the error figures: the primary metric and its unit."""
    if content.task == "regression":
        return f"RMSE ({content.label} units)"
    return "log-loss (nats per row)"


def error_by_day_png(content: ReportContent) -> bytes:
    """The primary metric of each model per day of the test period (rows per day under each)."""
    from matplotlib.figure import Figure

    days = content.errors.groups.get(DAY, {})
    ordered = sorted(days)
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    x = np.arange(len(ordered))
    for (model, name), colour in zip(content.series.items(), _COLOURS):
        values = [_metric(content, days[day].get(model)) for day in ordered]
        ax.plot(x, values, marker="o", color=colour, label=name,
                linestyle="--" if model == BASELINE else "-")
    rows = [days[day][content.candidate].rows if content.candidate in days[day] else 0
            for day in ordered]
    ax.set_xticks(x, [f"{day}\n{count:,} rows" for day, count in zip(ordered, rows)], fontsize=8)
    ax.set_xlabel("day of the test period (event time, UTC)")
    ax.set_ylabel(metric_axis_label(content))
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{content.decision.metric.upper()} by day (lower is better)")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def error_by_slice_png(content: ReportContent, column: str) -> bytes:
    """The primary metric of each model for the most frequent values of one categorical column."""
    from matplotlib.figure import Figure

    slices = top_values(content.errors.groups[column], content.candidate, TOP_VALUES)
    names = list(slices)
    fig = Figure(figsize=(8, 1.0 + 0.42 * len(names)))
    ax = fig.subplots()
    height = 0.8 / len(content.series)
    y = np.arange(len(names))
    for i, ((model, name), colour) in enumerate(zip(content.series.items(), _COLOURS)):
        values = [_metric(content, slices[value].get(model)) for value in names]
        ax.barh(y + i * height, values, height=height, color=colour, label=name)
    rows = [slices[value][content.candidate].rows if content.candidate in slices[value] else 0
            for value in names]
    ax.set_yticks(y + height * (len(content.series) - 1) / 2,
                  [f"{value}  ({count:,} rows)" for value, count in zip(names, rows)], fontsize=8)
    ax.invert_yaxis()  # the most frequent value on top
    ax.set_xlabel(metric_axis_label(content))
    ax.set_ylabel(f"{column} value")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{content.decision.metric.upper()} by {column} (most frequent values, "
                 "lower is better)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.6 / fig.get_figheight()),
              ncol=len(content.series), frameon=False)
    return _png(fig)


def predicted_vs_actual_png(content: ReportContent) -> bytes:
    """Regression: a scatter of the candidate's sample on the y = x line. Binary: calibration,
    the observed positive rate per bin of predicted probability."""
    from matplotlib.figure import Figure

    pairs = np.array(content.errors.samples.get(content.candidate, []), np.float64).reshape(-1, 2)
    actual, predicted = pairs[:, 0], pairs[:, 1]
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.subplots()
    if content.task == "regression":
        ax.scatter(actual, predicted, s=6, alpha=0.35, color=_COLOURS[0], linewidths=0)
        low = min(0.0, float(predicted.min(initial=0.0)))
        top = float(max(actual.max(initial=1.0), predicted.max(initial=1.0))) * 1.05
        ax.plot([low, top], [low, top], color="black", linewidth=0.8, label="perfect (y = x)")
        ax.set_xlim(low, top)
        ax.set_ylim(low, top)
        ax.set_xlabel(f"actual {content.label}")
        ax.set_ylabel(f"predicted {content.label}")
        ax.set_title(f"Predicted vs actual ({len(pairs):,} test rows, evenly sampled)")
    else:
        bins = np.minimum((predicted * 10).astype(int), 9)
        centres = [predicted[bins == b].mean() for b in range(10) if (bins == b).any()]
        observed = [actual[bins == b].mean() for b in range(10) if (bins == b).any()]
        ax.plot(centres, observed, marker="o", color=_COLOURS[0], label="candidate")
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, label="perfect calibration")
        ax.set_xlabel("predicted probability (bin mean)")
        ax.set_ylabel(f"observed rate of {content.label}")
        ax.set_title(f"Calibration ({len(pairs):,} test rows, evenly sampled)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def _metric(content: ReportContent, sums: Sums | None) -> float:
    return group_metric(content.task, sums) if sums is not None else float("nan")


def _png(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()
