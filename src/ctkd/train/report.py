"""What a finished run writes for people: the training log, plots, and a model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CURVE_KEYS = ("loss", "ce", "kd", "had", "sl", "sd", "uld", "mined", "dskd")


def write_train_log(out: Path, log_history: list[dict[str, Any]]) -> Path:
    path = out / "train_log.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in log_history))
    tmp.replace(path)
    return path


def plot_training_curves(out: Path, log_history: list[dict[str, Any]]) -> Path | None:
    """One panel per logged loss component against the optimiser step (PNG)."""
    rows = [r for r in log_history if "loss" in r and "step" in r]
    keys = [k for k in CURVE_KEYS if any(k in r for r in rows)]
    if not rows or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def model_card(config, summary, loss_config: dict[str, Any], kd_weight: float) -> str:
    rows = []
    for stage, value in (("before", summary.before), ("after", summary.after)):
        if value is not None:
            rows.append(f"| {stage} distillation | {value:.2f} |")
    metric = summary.metric or "metric"
    params = ", ".join(f"{k}={v}" for k, v in loss_config.items())
    return "\n".join([
        f"# {Path(summary.output_dir).name}: {summary.student} distilled from {summary.teacher}",
        "",
        "Produced by [ctkd](https://pypi.org/project/ctkd/) cross-tokenizer knowledge distillation.",
        "",
        "| | |",
        "|---|---|",
        f"| student | `{config.student.name}` ({config.student.dtype}) |",
        f"| teacher | `{config.teacher.name or config.teacher.cache}` ({config.teacher.dtype}) |",
        f"| method | `{config.loss.method}` ({params}) |",
        f"| loss | {config.loss.ce_weight} x CE + {kd_weight} x KD |",
        f"| data | {config.data.task} ({summary.train_examples} training examples"
        f"{', generated targets' if config.data.targets else ''}) |",
        f"| optimisation | lr {config.optim.learning_rate}, {summary.steps} steps, batch {config.optim.batch_size} x "
        f"{config.optim.grad_accum} accumulation, weight decay {config.optim.weight_decay} |",
        "",
        f"## Evaluation ({summary.task} {config.data.eval_split}, {summary.eval_examples} examples, greedy, "
        f"at most {config.eval.max_new_tokens} new tokens{', cut at the first newline' if config.eval.stop_at_newline else ''})",
        "",
        f"| | {metric} (%) |",
        "|---|---|",
        *rows,
        "",
        "Weights are in `student/` (safetensors) with the student's tokenizer; the resolved configuration is "
        "`config.yaml`, the per-step log `train_log.jsonl`.",
        "",
    ])


def write_reports(out: Path, config, summary, log_history, evals: dict, *, loss_config: dict[str, Any],
                  kd_weight: float) -> None:
    write_train_log(out, log_history)
    plot_training_curves(out, log_history)
    reports = {k: v for k, v in evals.items() if v is not None}
    if reports:
        from ctkd.eval import plot_scores

        plot_scores(reports, out / "eval" / "scores.png", title=f"{summary.student}: {summary.task}")
    card = out / "README.md"
    card.write_text(model_card(config, summary, loss_config, kd_weight))
