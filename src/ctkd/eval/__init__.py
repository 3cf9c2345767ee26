"""Generation-based evaluation as in the paper: greedy answers, SQuAD token F1 and ROUGE-Lsum.

Protocol: greedy decoding, at most 150 new tokens, output cut at the first newline; token F1 for QED,
ROUGE-Lsum (stemmed) for DialogSum and FairytaleQA, in percent.

Public API::

    generate_answers(model, tokenizer, prompts, batch_size=8, max_new_tokens=150, ...) -> list[str]
    evaluate_predictions(task_or_metric, predictions, references, ids) -> EvalReport
    run_evaluation(model, tokenizer, prompts, references, ids, metric=..., out_dir=...) -> EvalReport
    load_report(out_dir) -> EvalReport
    plot_scores({"before": report_a, "after": report_b}, "scores.png")
"""

from .evaluate import atomic_write_text, read_partial_rows, run_evaluation
from .generation import (
    DEFAULT_MAX_NEW_TOKENS,
    END_OF_TURN_TOKENS,
    GeneratedBatch,
    NewlineStoppingCriteria,
    encode_prompts,
    generate_answers,
    iter_generate,
    special_prefix_ids,
    stop_token_ids,
)
from .metrics import (
    METRICS,
    TASK_METRIC,
    exact_match,
    normalize_answer,
    resolve_metric,
    rouge_lsum,
    split_sentences,
    token_f1,
)
from .plot import plot_scores
from .report import EvalReport, evaluate_predictions, load_report

__all__ = [
    "DEFAULT_MAX_NEW_TOKENS",
    "END_OF_TURN_TOKENS",
    "METRICS",
    "TASK_METRIC",
    "EvalReport",
    "GeneratedBatch",
    "NewlineStoppingCriteria",
    "atomic_write_text",
    "encode_prompts",
    "evaluate_predictions",
    "exact_match",
    "generate_answers",
    "iter_generate",
    "load_report",
    "normalize_answer",
    "plot_scores",
    "read_partial_rows",
    "resolve_metric",
    "rouge_lsum",
    "run_evaluation",
    "special_prefix_ids",
    "split_sentences",
    "stop_token_ids",
    "token_f1",
]
