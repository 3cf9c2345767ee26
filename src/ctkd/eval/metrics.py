"""Per-example metrics of the paper's evaluation: SQuAD token F1, exact match and ROUGE-Lsum.

Every metric has the signature ``metric(prediction: str, references: Sequence[str]) -> float`` and
returns a value in ``[0, 1]``: the best score over the references (QED has several acceptable
answers, DialogSum three summaries, FairytaleQA two answers). Corpus-level scores are the mean over
examples times 100 (see :func:`ctkd.eval.report.evaluate_predictions`).

Token F1 and exact match follow the official SQuAD v2.0 evaluation script:

* normalisation: lower-case, delete ASCII punctuation (``string.punctuation``; deleted, not replaced
  by a space, so ``"U.S.A."`` becomes ``"usa"``), replace the articles *a*, *an*, *the* by a space,
  collapse whitespace;
* with ``P = c / |pred|`` and ``R = c / |ref|``, where ``c`` is the size of the multiset intersection
  of the two normalised token lists, ``F1 = 2 P R / (P + R)`` (0 when ``c = 0``);
* when either side normalises to no tokens, F1 is 1 if both do and 0 otherwise.

ROUGE-Lsum is the summary-level LCS F-measure of Lin (2004), section 3.2, computed by Google's
``rouge-score`` package with Porter stemming on. It treats each newline-separated line as a sentence
and, for every reference sentence, counts the union of its LCS with each candidate sentence. The
package can find sentences itself only with nltk's punkt model, which cannot be downloaded here, so
this module splits sentences with :func:`split_sentences` (a small rule-based splitter, documented
there) and joins them with newlines before scoring. Texts that are one sentence score the same as
plain ROUGE-L.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

MetricFn = Callable[[str, Sequence[str]], float]
"""A per-example metric: ``(prediction, references) -> score in [0, 1]`` (best over references)."""

# ---------------------------------------------------------------------------------------------------
# SQuAD-style normalisation, token F1, exact match
# ---------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Normalise an answer as the SQuAD script does.

    Lower-case, delete ASCII punctuation, replace the whole words ``a``/``an``/``the`` by a space and
    collapse runs of whitespace to single spaces (leading and trailing whitespace removed).

    >>> normalize_answer("The  Eiffel-Tower, in Paris!")
    'eiffeltower in paris'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _check_references(references: Sequence[str]) -> None:
    if isinstance(references, str):
        raise TypeError(
            f"references must be a list of strings, got the string {references[:60]!r}; "
            "wrap a single reference in a list: [reference]"
        )
    if len(references) == 0:
        raise ValueError("references is empty: every example needs at least one reference answer")


def _f1_single(prediction: str, reference: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        # SQuAD v2.0: a no-answer matches only a no-answer.
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(ref_tokens)
    return 2.0 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 in ``[0, 1]``, the maximum over ``references``.

    Args:
        prediction: the generated answer.
        references: one or more acceptable answers (a list, even when there is one).

    Returns:
        ``max_r F1(prediction, r)`` with ``F1 = 2PR / (P + R)`` over normalised token multisets.
    """
    _check_references(references)
    return max(_f1_single(prediction, ref) for ref in references)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals some normalised reference, else 0.0."""
    _check_references(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


# ---------------------------------------------------------------------------------------------------
# Sentence splitting and ROUGE-Lsum
# ---------------------------------------------------------------------------------------------------

ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "mr", "mrs", "ms", "mx", "dr", "prof", "st", "jr", "sr", "mt", "vs", "etc", "e.g", "i.e",
        "a.m", "p.m", "u.s", "u.k", "inc", "ltd", "co", "corp", "dept", "approx", "fig", "jan", "feb",
        "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    }
)  # fmt: skip
"""Lower-cased words (without their final period) after which a period does not end a sentence."""

NUMBER_ABBREVIATIONS: frozenset[str] = frozenset({"no", "nos", "vol", "p", "pp", "ch"})
"""Words that are abbreviations only before a number: ``"No. 16"`` but ``"No. I don't."``."""

# Sentence-final punctuation, closing quotes/brackets after it, then the whitespace we split at.
_BOUNDARY_RE = re.compile(r"([.!?]+)[\"'\u2019\u201d)\]]*(\s+)")
_LAST_WORD_RE = re.compile(r"\S+$")
_LEADING_QUOTES = "\"'(\u2018\u201c["


def split_sentences(text: str) -> list[str]:
    """Split English text into sentences with a few documented rules (no model, no downloads).

    Rules, in order:

    1. every newline ends a sentence;
    2. otherwise a sentence ends at a run of ``.``, ``!`` or ``?`` (optionally followed by closing
       quotes or brackets) followed by whitespace,
    3. except after a period that closes a known abbreviation (:data:`ABBREVIATIONS`, e.g. ``Mr.``,
       ``Dr.``, ``p.m.``), a single capital letter (an initial, ``J. K. Rowling``), or a word of
       :data:`NUMBER_ABBREVIATIONS` that precedes a digit (``No. 16``).

    Sentences are stripped; empty ones are dropped. Decimal numbers (``3.5``) never split because no
    whitespace follows their period. This approximates nltk's punkt splitter on the project's data
    (DialogSum summaries: titles such as ``Mr.`` are the only frequent non-final periods); it is used
    only to mark sentence boundaries for ROUGE-Lsum.

    >>> split_sentences("Mr. Smith meets Ms. Lee at 5 p.m. today. They talk!  Then No. 5 leaves.")
    ['Mr. Smith meets Ms. Lee at 5 p.m. today.', 'They talk!', 'Then No. 5 leaves.']
    """
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _BOUNDARY_RE.finditer(line):
            if match.group(1) == "." and _is_abbreviation(line, match.start(1), match.end(2)):
                continue
            sentences.append(line[start : match.start(2)])
            start = match.end(2)
        sentences.append(line[start:])
    return [s.strip() for s in sentences if s.strip()]


def _is_abbreviation(line: str, period: int, next_start: int) -> bool:
    """Whether the single period at ``line[period]`` closes an abbreviation rather than a sentence.

    ``next_start`` is where the text after the boundary's whitespace begins.
    """
    last_word = _LAST_WORD_RE.search(line, 0, period)
    word = last_word.group(0).lstrip(_LEADING_QUOTES) if last_word else ""
    if not word:
        return False
    lowered = word.lower()
    if lowered in ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isupper():
        return True
    if lowered in NUMBER_ABBREVIATIONS:
        return next_start < len(line) and line[next_start].isdigit()
    return False


@lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    # Imported lazily: rouge-score pulls nltk and absl, which the training path never needs.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=use_stemmer)


def sentences_to_lines(text: str) -> str:
    """The newline-per-sentence form ROUGE-Lsum expects: :func:`split_sentences` joined by ``\\n``."""
    return "\n".join(split_sentences(text))


def rouge_lsum(prediction: str, references: Sequence[str], *, use_stemmer: bool = True) -> float:
    """ROUGE-Lsum F-measure in ``[0, 1]``, the maximum over ``references``.

    Both sides are split into sentences with :func:`split_sentences`; then for reference sentences
    ``r_1..r_u`` (``m`` tokens in all) and candidate sentences ``c_1..c_v`` (``n`` tokens),
    ``hits = sum_i |union_j LCS(r_i, c_j)|`` (each token counted at most as often as it occurs on both
    sides), ``R = hits / m``, ``P = hits / n``, ``F = 2PR / (P + R)``. Tokens are those of
    ``rouge-score``: lower-cased alphanumeric runs, Porter-stemmed when longer than 3 characters.
    An empty prediction or reference scores 0.

    Args:
        prediction: the generated text.
        references: one or more reference texts (a list, even when there is one).
        use_stemmer: Porter stemming as in the paper's protocol (``rouge-score``'s ``use_stemmer``).
    """
    _check_references(references)
    scorer = _rouge_scorer(use_stemmer)
    candidate = sentences_to_lines(prediction)
    return max(scorer.score(sentences_to_lines(ref), candidate)["rougeLsum"].fmeasure for ref in references)


METRICS: dict[str, MetricFn] = {
    "token_f1": token_f1,
    "rouge_lsum": rouge_lsum,
    "exact_match": exact_match,
}
"""Metric name -> per-example metric function (score in [0, 1], best over references)."""

TASK_METRIC: dict[str, str] = {
    "qed": "token_f1",
    "dialogsum": "rouge_lsum",
    "fairytaleqa": "rouge_lsum",
    "jsonl": "rouge_lsum",
}
"""Task name -> the metric the paper reports for it (a user's own ``jsonl`` data: ROUGE-Lsum)."""


def resolve_metric(task_or_metric: str) -> str:
    """The metric name for a task name (``"qed"``) or a metric name (``"token_f1"``).

    Raises:
        KeyError: naming the known tasks and metrics when ``task_or_metric`` is neither.
    """
    if task_or_metric in METRICS:
        return task_or_metric
    if task_or_metric in TASK_METRIC:
        return TASK_METRIC[task_or_metric]
    raise KeyError(
        f"unknown task or metric {task_or_metric!r}: tasks are {sorted(TASK_METRIC)}, "
        f"metrics are {sorted(METRICS)}"
    )
