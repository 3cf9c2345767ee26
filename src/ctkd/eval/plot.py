"""A picture of several evaluation reports: corpus scores side by side, and how per-example scores spread."""

from __future__ import annotations

import math
from pathlib import Path

from .report import EvalReport

CONFIDENCE_Z = 1.96
"""Normal quantile of the error bars: mean +- 1.96 standard errors, an approximate 95% interval."""
HISTOGRAM_BINS = 10
"""Equal-width bins of the per-example histogram over 0-100 %."""


def _standard_error(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def plot_scores(reports: dict[str, EvalReport], path: str | Path, *, title: str | None = None) -> Path:
    """Write a PNG comparing reports (e.g. before / after distillation, or several methods).

    Left panel: one bar per report, its corpus score (%) with an approximate 95% interval of the mean
    (``score +- 1.96 * s / sqrt(n)``, ``s`` the standard deviation of the per-example scores). Right
    panel: the fraction of examples in each 10-point band of per-example score, one bar per report
    (extractive QA piles up at 0 and 100; summaries spread in between).

    Args:
        reports: label -> report, drawn in this order.
        path: output file (``.png``); parent folders are created.
        title: figure title; default names the metric(s) and n.

    Returns:
        The path written.
    """
    if not reports:
        raise ValueError("plot_scores needs at least one report")
    # A bare Figure renders with the Agg canvas and touches no pyplot state or global backend, so this
    # works on headless machines and leaves a notebook's backend alone.
    from matplotlib.figure import Figure

    labels = list(reports)
    values = list(reports.values())
    metrics = sorted({r.metric for r in values})
    colors = [f"C{i % 10}" for i in range(len(labels))]

    fig = Figure(figsize=(11, 4.2))
    ax_bar, ax_hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})

    scores = [r.score for r in values]
    errors = [CONFIDENCE_Z * _standard_error(r.per_example) for r in values]
    bars = ax_bar.bar(range(len(labels)), scores, yerr=errors, capsize=4, color=colors, alpha=0.85)
    for bar, score, error in zip(bars, scores, errors):
        ax_bar.annotate(
            f"{score:.2f}",
            (bar.get_x() + bar.get_width() / 2, score + error),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    crowded = len(labels) > 3
    ax_bar.set_xticks(range(len(labels)), labels, rotation=20 if crowded else 0, ha="right" if crowded else "center")
    ax_bar.set_ylabel(f"{' / '.join(metrics)} (%)")
    ax_bar.set_ylim(0, min(100.0, max(s + e for s, e in zip(scores, errors)) * 1.15 + 1.0))
    ax_bar.set_title("corpus score (bars: approx. 95% CI)")
    ax_bar.grid(axis="y", alpha=0.3)

    edges = [100.0 * k / HISTOGRAM_BINS for k in range(HISTOGRAM_BINS + 1)]
    shown = [(label, report, color) for label, report, color in zip(labels, values, colors) if report.per_example]
    if shown:
        # Grouped bars (one per report in each band) stay readable where outlines would overlap.
        ax_hist.hist(
            [report.per_example for _, report, _ in shown],
            bins=edges,
            weights=[[1.0 / len(report.per_example)] * len(report.per_example) for _, report, _ in shown],
            color=[color for _, _, color in shown],
            label=[f"{label} (n={report.n})" for label, report, _ in shown],
            alpha=0.85,
        )
    ax_hist.set_xlim(0, 100)
    ax_hist.set_xlabel("per-example score (%)")
    ax_hist.set_ylabel("fraction of examples")
    ax_hist.set_title("per-example scores")
    ax_hist.legend(fontsize=8)
    ax_hist.grid(alpha=0.3)

    ns = sorted({r.n for r in values})
    fig.suptitle(title or f"{', '.join(metrics)} on n={'/'.join(map(str, ns))} examples")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
