"""Scoring a list of predictions into a typed report, and reading a finished evaluation back.

Corpus score = ``100 * mean_i metric(prediction_i, references_i)``, the paper's percentages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import METRICS, TASK_METRIC, resolve_metric

PREDICTIONS_FILE = "predictions.jsonl"
"""Per-example results of a finished evaluation, one JSON object a line, in the input order."""
REPORT_FILE = "report.json"
"""Summary of a finished evaluation; written last, so its presence means the folder is complete."""


@dataclass
class EvalReport:
    """Result of scoring predictions with one metric.

    Attributes:
        metric: metric name, a key of :data:`ctkd.eval.metrics.METRICS`.
        score: corpus score in percent (0-100): the mean of ``per_example``.
        n: number of examples.
        per_example: each example's score in percent (0-100), in input order.
        ids: the example ids, in input order.
        task: the task name when one was given instead of a metric name, else ``None``.
    """

    metric: str
    score: float
    n: int
    per_example: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    task: str | None = None

    def summary(self) -> dict:
        """The JSON-ready headline numbers: metric, task, score (%), n."""
        return {"metric": self.metric, "task": self.task, "score": self.score, "n": self.n}


def check_references(references: Sequence[Sequence[str]], n: int | None = None) -> list[list[str]]:
    """Validate per-example reference lists and return them as lists of str.

    Raises:
        ValueError / TypeError: naming the first bad example (a bare string instead of a list, an empty
            list, a non-string reference, or a count that differs from ``n``).
    """
    if isinstance(references, str):
        raise TypeError("references must be one list of reference strings per example, got one string")
    if n is not None and len(references) != n:
        raise ValueError(f"got {len(references)} reference lists for {n} examples; give one list per example")
    checked = []
    for index, refs in enumerate(references):
        if isinstance(refs, str):
            raise TypeError(
                f"references[{index}] is the string {refs[:60]!r}, not a list; give each example a list "
                "of references, e.g. [[answer] for answer in answers]"
            )
        refs = list(refs)
        if not refs:
            raise ValueError(f"references[{index}] is empty; every example needs at least one reference")
        if not all(isinstance(r, str) for r in refs):
            raise TypeError(f"references[{index}] holds non-string values: {refs!r}")
        checked.append(refs)
    return checked


def evaluate_predictions(
    task_or_metric: str,
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    ids: Sequence[str] | None = None,
) -> EvalReport:
    """Score predictions against references with a task's metric or a named metric.

    Args:
        task_or_metric: a task of :data:`~ctkd.eval.metrics.TASK_METRIC` (``"qed"``, ``"dialogsum"``,
            ``"fairytaleqa"``, ``"jsonl"``) or a metric of :data:`~ctkd.eval.metrics.METRICS`.
        predictions: one generated text per example.
        references: one list of reference texts per example.
        ids: example ids (default ``"0", "1", ...``).

    Returns:
        An :class:`EvalReport` with ``score = 100 * mean(metric(prediction_i, references_i))``.
    """
    metric = resolve_metric(task_or_metric)
    n = len(predictions)
    if n == 0:
        raise ValueError("no predictions to evaluate")
    references = check_references(references, n)
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for {n} predictions")
    fn = METRICS[metric]
    per_example = [100.0 * fn(pred, refs) for pred, refs in zip(predictions, references)]
    return EvalReport(
        metric=metric,
        score=sum(per_example) / n,
        n=n,
        per_example=per_example,
        ids=ids,
        task=task_or_metric if task_or_metric in TASK_METRIC else None,
    )


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a JSON-lines file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_report(out_dir: str | Path) -> EvalReport:
    """Read a finished :func:`~ctkd.eval.evaluate.run_evaluation` folder back into an :class:`EvalReport`.

    Raises:
        FileNotFoundError: when ``report.json`` is missing (the evaluation never finished).
        ValueError: when the report is not marked complete or disagrees with ``predictions.jsonl``.
    """
    out_dir = Path(out_dir)
    report_path = out_dir / REPORT_FILE
    if not report_path.is_file():
        raise FileNotFoundError(
            f"{report_path} not found: the evaluation in {out_dir} has not finished; run it again to resume"
        )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if report.get("complete") is not True:
        raise ValueError(f"{report_path} is not marked complete")
    rows = read_jsonl(out_dir / PREDICTIONS_FILE)
    if len(rows) != report["n"]:
        raise ValueError(f"{report_path} says n={report['n']} but {PREDICTIONS_FILE} has {len(rows)} rows")
    return EvalReport(
        metric=report["metric"],
        score=float(report["score"]),
        n=int(report["n"]),
        per_example=[float(row["score"]) for row in rows],
        ids=[str(row["id"]) for row in rows],
        task=report.get("task"),
    )
